"""Each optimizer's trajectory matches its NumPy reference (references.py).

20 steps of seeded random gradients on two variables, through both the fast
path (``fused="auto"``: TensorFlow's fused kernels, PyTorch's in-place ops)
and the keras.ops path: 1e-12 relative in float64, 1e-5 in float32.
In float64 the reference takes the learning rate as Keras gives it to every
optimizer, its own included: a constant rate lives in a floatx (float32)
variable, and a schedule computes in the dtype Keras gives a Python float
(``keras_learning_rate``): float32, but float64 on JAX with ``jax_enable_x64``.
Every other scalar must be float64, on every backend: a float32 constant
leaking into the float64 math shows as 1e-10 to 1e-7 relative and fails here
(tfopt's Adagrad accumulator start did, through keras.initializers.Constant;
on JAX and PyTorch, ``keras.backend.result_type`` and PyTorch's
``ops.maximum`` did, see tfopt/_dtypes.py).
The gradients shrink over the steps, so that AMSGrad's running maximum and
the accumulators' history matter.

Runs under every Keras backend (nox's ``backend-jax`` and ``backend-torch``);
on JAX ``"auto"`` is the keras.ops path (XLA fuses it), so only that runs.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import tfopt
from tests.tfopt import references

STEPS = 20
SHAPES = [(3,), (2, 2)]


def _inverse_time(t):  # Matches InverseTimeDecay(0.1, decay_steps=1, decay_rate=0.5).
    return 0.1 / (1 + 0.5 * t)


def _inverse_time_in(dtype):
    """The same schedule, in ``dtype``, step by step as Keras computes it."""
    f = np.dtype(dtype).type

    def rate(t):
        return float(f(0.1) / (f(1) + f(0.5) * (f(t) / f(1))))

    return rate


def keras_learning_rate(optimizer, reference_kwargs):
    """``reference_kwargs`` with the learning rate Keras passes to ``optimizer``'s steps.

    A constant rate is Keras' float32 variable. A schedule computes in the
    dtype of ``ops.convert_to_tensor(initial_learning_rate)``: floatx
    (float32), except on JAX with ``jax_enable_x64``, where a Python float
    becomes float64.
    """
    rate = reference_kwargs.get("learning_rate")
    if callable(rate):
        assert rate is _inverse_time, "a new schedule needs its twin here"
        dtype = keras.backend.standardize_dtype(ops.convert_to_tensor(0.1).dtype)
        return {**reference_kwargs, "learning_rate": _inverse_time_in(dtype)}
    return {**reference_kwargs, "learning_rate": float(optimizer.learning_rate)}


def _schedule():
    return keras.optimizers.schedules.InverseTimeDecay(0.1, decay_steps=1, decay_rate=0.5)


# id -> (registered name, constructor kwargs, reference kwargs); a schedule in
# the constructor is a callable of the step in the reference.
CASES = {
    "gradient_descent": ("gradient_descent", {"learning_rate": 0.1}, None),
    "gradient_descent_schedule": (
        "gradient_descent", {"learning_rate": _schedule}, {"learning_rate": _inverse_time},
    ),
    "sgd": ("sgd", {"learning_rate": 0.1}, None),
    "sgd_momentum": ("sgd", {"learning_rate": 0.05, "momentum": 0.9}, None),
    "sgd_nesterov": ("sgd", {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}, None),
    "sgd_momentum_schedule": (
        "sgd", {"learning_rate": _schedule, "momentum": 0.5},
        {"learning_rate": _inverse_time, "momentum": 0.5},
    ),
    "dynamic_gradient_descent": (
        "dynamic_gradient_descent", {"learning_rate": 0.01, "learning_rate_decay": 0.9}, None,
    ),
    "dynamic_gradient_descent_defaults": ("dynamic_gradient_descent", {}, None),
    "dynamic_gradient_descent_schedule": (
        "dynamic_gradient_descent", {"learning_rate": _schedule, "learning_rate_decay": 0.8},
        {"learning_rate": _inverse_time, "learning_rate_decay": 0.8},
    ),
    "adagrad": ("adagrad", {"learning_rate": 0.1}, None),
    "adagrad_no_initial_accumulator": (
        "adagrad", {"learning_rate": 0.1, "initial_accumulator_value": 0.0, "epsilon": 1e-3},
        None,
    ),
    "adam": ("adam", {"learning_rate": 0.01}, None),
    "adam_betas": ("adam", {"learning_rate": 0.02, "beta_1": 0.5, "beta_2": 0.9, "epsilon": 1e-3}, None),
    "adam_schedule": ("adam", {"learning_rate": _schedule}, {"learning_rate": _inverse_time}),
    "amsgrad": ("adam", {"learning_rate": 0.01, "amsgrad": True}, None),
}  # fmt: skip


def _build(name, kwargs, fused):
    kwargs = {k: (v() if k == "learning_rate" and callable(v) else v) for k, v in kwargs.items()}
    return tfopt.get(name, fused=fused, **kwargs)


def _data(dtype):
    rng = np.random.default_rng(0)
    params = [rng.uniform(1.0, 2.0, size=s).astype(dtype) for s in SHAPES]
    grads = [
        [(2.0 * 0.8**step * rng.normal(size=s)).astype(dtype) for s in SHAPES]
        for step in range(STEPS)
    ]
    return params, grads


_FUSED = pytest.param(
    "auto",
    id="fused",
    marks=pytest.mark.skipif(
        keras.backend.backend() == "jax",
        reason="on JAX fused='auto' is the keras.ops path, run as keras_ops",
    ),
)


# float64 to 1e-12 on every backend: every float32 scalar left in the path
# (Keras' learning rate) is fed to the reference too. The worst case measured
# is 1.4e-15 (sgd_nesterov) on TensorFlow, JAX and PyTorch alike (2026-12-02,
# Keras 3.15.1). Before tfopt/_dtypes.py, JAX and PyTorch were 1e-10 to 2e-7
# away (dynamic gradient descent, Adam, AMSGrad), and JAX's schedule rows
# 5e-9 to 9e-9 against a float32 schedule twin.
_FLOAT64_RTOL = 1e-12


@pytest.mark.parametrize("fused", [_FUSED, pytest.param(False, id="keras_ops")])
@pytest.mark.parametrize("dtype, rtol", [("float64", _FLOAT64_RTOL), ("float32", 1e-5)])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, dtype, rtol, fused):
    name, kwargs, reference_kwargs = CASES[case]
    params, grads = _data(dtype)
    optimizer = _build(name, kwargs, fused)
    reference_kwargs = reference_kwargs or kwargs
    if dtype == "float64":
        reference_kwargs = keras_learning_rate(optimizer, reference_kwargs)
    expected = references.REFERENCES[name](params, grads, **reference_kwargs)

    variables = [keras.Variable(p) for p in params]
    for step in range(STEPS):
        optimizer.apply([ops.convert_to_tensor(g) for g in grads[step]], variables)
        for variable, want in zip(variables, expected[step], strict=True):
            assert variable.dtype == dtype
            np.testing.assert_allclose(
                ops.convert_to_numpy(variable), want, rtol=rtol, atol=rtol, err_msg=f"step {step}"
            )


def test_references_are_not_trivial():
    """Distinct rules give distinct trajectories (a reference cannot be a copy)."""
    params, grads = _data("float64")
    finals = {
        case: references.REFERENCES[name](params, grads, **(ref or kwargs))[-1][0]
        for case, (name, kwargs, ref) in CASES.items()
        if not callable(kwargs.get("learning_rate"))
    }
    cases = list(finals)
    for i, a in enumerate(cases):
        for b in cases[i + 1 :]:
            if {a, b} == {"gradient_descent", "sgd"}:
                continue  # Same rule, same hyperparameters.
            assert not np.allclose(finals[a], finals[b]), (a, b)
