"""How the shared suites build each optimizer: per-optimizer test settings.

test_conformance.py and test_mirrored.py run every name in
``tfopt.available()``, so a newly registered optimizer is covered with no
edit here. They build optimizers only through :func:`make`, which by default
calls ``tfopt.get(name, **kwargs)``. Every table below is optional per name;
a missing entry means the default.

``HYPERPARAMETERS[name][problem]``
    kwargs for ``tfopt.get(name, ...)``. ``problem`` is one of
    :data:`PROBLEMS`; the ``"default"`` entry applies to every problem and a
    problem's own entry overrides it.
``FACTORIES[name]``
    ``factory(problem, **overrides) -> Optimizer``, for an optimizer that
    ``tfopt.get(name, **kwargs)`` cannot build alone (Lookahead wraps an inner
    optimizer) or whose Keras options (``clipnorm``, ``weight_decay``,
    ``use_ema``, ...) belong somewhere else. ``overrides`` are what a check
    needs, e.g. ``clipnorm=0.5``.
``STEPS[name][problem]``
    steps for a convergence problem (default :data:`DEFAULT_STEPS`).
``TOLERANCES[name][problem]``
    the problem's loss tolerance (default :data:`DEFAULT_TOLERANCES`).
``EXPECTED_FAILURES[name][check]``
    reason: the check fails because of a documented limitation of the rule
    itself; it runs as ``xfail(strict=True)``, so it fails if it passes.
``SKIPS[name][check]``
    reason: the check does not apply to this optimizer (an explicit skip).

Checks, by name: ``quadratic``, ``rosenbrock``, ``linear_regression``,
``config``, ``save_load``, ``dtype``, ``mixed_float16``, ``sparse``,
``retrace``, ``clipnorm``, ``global_clipnorm``, ``weight_decay``, ``use_ema``,
``mirrored``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import pytest

import tfopt

PROBLEMS = ("default", "quadratic", "rosenbrock", "linear_regression")

# Generous, so that most optimizers need no entry in STEPS: a step of these
# 2-parameter problems costs ~30 µs inside one tf.function.
DEFAULT_STEPS = {"quadratic": 1000, "rosenbrock": 8000, "linear_regression": 2000}

# quadratic, rosenbrock: (f(θ) − f*) / (f(θ₀) − f*); linear_regression: the
# founding documents' MSE, whose required bound is 1e-3.
DEFAULT_TOLERANCES = {"quadratic": 1e-4, "rosenbrock": 1e-4, "linear_regression": 1e-3}

_DGD_REASON = (
    "DynamicGradientDescent is momentum with beta = 1: only the decaying step damps it, "
    "so an oscillation shrinks like alpha_t**(1/4) until it freezes (see its docstring). "
    "On this problem (condition number 350) it reaches MSE < 1e-3 only at isolated "
    "(learning_rate, learning_rate_decay) values, under 2% wide; a test tuned to one would "
    "prove nothing."
)

HYPERPARAMETERS: dict[str, dict[str, dict[str, Any]]] = {
    "gradient_descent": {
        "quadratic": {"learning_rate": 0.1},
        "rosenbrock": {"learning_rate": 0.0019},  # Stable below 2 / 1001.6 near (1, 1).
        "linear_regression": {"learning_rate": 0.04},
    },
    "sgd": {
        "default": {"learning_rate": 0.002, "momentum": 0.9},
    },
    "dynamic_gradient_descent": {
        "quadratic": {"learning_rate": 0.01, "learning_rate_decay": 0.995},
        "rosenbrock": {"learning_rate": 0.00018, "learning_rate_decay": 0.99},
        "linear_regression": {"learning_rate": 0.01, "learning_rate_decay": 0.995},
    },
    "adagrad": {
        "quadratic": {"learning_rate": 0.5},
        "rosenbrock": {"learning_rate": 0.5},
        "linear_regression": {"learning_rate": 0.5},
    },
    "adam": {
        "quadratic": {"learning_rate": 0.05},
        "rosenbrock": {"learning_rate": 0.05},
        "linear_regression": {"learning_rate": 0.05},
    },
    # LARS and LAMB step by a fixed fraction of ||θ|| (the trust ratio): on
    # the curved problems they settle only as the rate decays.
    "lars": {
        # The tiny models start with zero biases, whose first LARS step is
        # learning_rate * g (trust ratio 1); 1.0 makes mixed_float16 skip steps.
        "default": {"learning_rate": 0.1},
        "quadratic": {"learning_rate": 1.0},
        "rosenbrock": {
            "learning_rate": keras.optimizers.schedules.ExponentialDecay(10.0, 100, 0.5)
        },
        "linear_regression": {
            "learning_rate": keras.optimizers.schedules.ExponentialDecay(10.0, 100, 0.5)
        },
    },
    "lamb": {
        "quadratic": {"learning_rate": 0.01},
        "rosenbrock": {
            "learning_rate": keras.optimizers.schedules.ExponentialDecay(0.05, 100, 0.5)
        },
        "linear_regression": {
            "learning_rate": keras.optimizers.schedules.ExponentialDecay(0.05, 100, 0.5)
        },
    },
    "radam": {
        "default": {"learning_rate": 0.05},
        # At a constant 0.05 RAdam ends Rosenbrock in a float32 cycle near (1, 1)
        # whose size is set by rounding: 2.3e-3 on TensorFlow, 8e-9 on JAX, with
        # the same closed-form gradient. At 0.01 both converge (3.6e-15, 4.9e-8).
        "rosenbrock": {"learning_rate": 0.01},
    },
    "lazy_adam": {"default": {"learning_rate": 0.05}},
    # Shampoo from the second step, roots every 2 steps, so the short checks
    # (save/load, clipping, sparse) exercise the preconditioned direction; on
    # the long problems roots every 10 steps keep them fast (~5 s each).
    "shampoo": {
        "default": {"learning_rate": 0.01, "start_preconditioning_step": 1,
                    "precondition_frequency": 2},
        "quadratic": {"precondition_frequency": 10},
        "rosenbrock": {"learning_rate": 0.001, "precondition_frequency": 10},
        "linear_regression": {"precondition_frequency": 10},
    },
    # weight_decay=0, so that the optimum stays where the problem puts it.
    # The 2-parameter problems are vectors: with precondition_1d SOAP runs
    # full-matrix Adam in their eigenbasis. On the tiny Dense(3->4->1) models,
    # max_precondition_dim=3 rotates only the kernels' 3-dimension, whose
    # statistic is full rank from step 1: the 4x4 (and 4x1 -> 4x4) statistics
    # are rank-deficient at step 1, where any basis of the null space is an
    # eigenbasis and rounding-level differences in the gradient (two replicas'
    # all-reduce, float16 activations) pick a different one; the trajectories
    # then part by ~1% (test_soap.py::test_replicas_agree_with_rank_deficient_statistics).
    "soap": {
        "default": {"learning_rate": 0.05, "weight_decay": 0.0, "max_precondition_dim": 3},
        "quadratic": {"precondition_1d": True, "precondition_frequency": 5},
        "rosenbrock": {
            "precondition_1d": True,
            "precondition_frequency": 5,
            "learning_rate": keras.optimizers.schedules.ExponentialDecay(0.05, 1000, 0.5),
        },
        "linear_regression": {"precondition_1d": True, "precondition_frequency": 5},
    },
}

FACTORIES: dict[str, Callable[..., keras.optimizers.Optimizer]] = {
    # Lookahead around tfopt.SGD with momentum; Keras' options (clipnorm, ...)
    # belong to the inner optimizer. (Around constant-rate Adam it stalls near
    # 1e-2 on Rosenbrock, where Adam alone keeps a small limit cycle.)
    "lookahead": lambda problem, **overrides: tfopt.Lookahead(make("sgd", problem, **overrides)),
}

STEPS: dict[str, dict[str, int]] = {
    # Long enough for the decayed step (0.995**t) to freeze the iterates.
    "dynamic_gradient_descent": {"quadratic": 3000},
}

TOLERANCES: dict[str, dict[str, float]] = {
    # Momentum with beta = 1 stops where the decayed step freezes it: within a
    # few percent of the optimum for these settings, robustly (docstring).
    "dynamic_gradient_descent": {"quadratic": 1e-2, "rosenbrock": 1e-2},
}

_SCALE_INVARIANT = (
    "Without weight decay, a LARS step is invariant to the scale of each variable's gradient "
    "(the trust ratio divides by ||g||), so clipping cannot change it."
)
_COUPLED_DECAY = (
    "weight_decay is this optimizer's own decay, inside the trust ratio, never Keras' "
    "decoupled one (checked in its own test module)."
)
EXPECTED_FAILURES: dict[str, dict[str, str]] = {
    "dynamic_gradient_descent": {"linear_regression": _DGD_REASON},
    "lars": {
        "clipnorm": _SCALE_INVARIANT,
        "global_clipnorm": _SCALE_INVARIANT,
    },
}

_DECAY_AFTER_STEP = (
    "weight_decay is SOAP's own, applied after the step as the authors' reference does, never "
    "Keras' decoupled decay before it (checked against the NumPy reference in test_soap.py)."
)
SKIPS: dict[str, dict[str, str]] = {
    "lars": {"weight_decay": _COUPLED_DECAY},
    "lamb": {"weight_decay": _COUPLED_DECAY},
    "soap": {"weight_decay": _DECAY_AFTER_STEP},
}


def make(name: str, problem: str = "default", **overrides: Any) -> keras.optimizers.Optimizer:
    """Builds the optimizer registered as ``name`` for ``problem``."""
    if problem not in PROBLEMS:
        raise ValueError(f"Unknown problem {problem!r}; expected one of {PROBLEMS}.")
    if name in FACTORIES:
        return FACTORIES[name](problem, **overrides)
    table = HYPERPARAMETERS.get(name, {})
    kwargs = {**table.get("default", {}), **table.get(problem, {}), **overrides}
    try:
        return tfopt.get(name, **kwargs)
    except TypeError as error:  # E.g. a required constructor argument.
        raise TypeError(
            f"tfopt.get({name!r}, **{kwargs}) failed ({error}); give {name!r} an entry in "
            "FACTORIES in tests/tfopt/cases.py."
        ) from error


def steps(name: str, problem: str) -> int:
    return STEPS.get(name, {}).get(problem, DEFAULT_STEPS[problem])


def tolerance(name: str, problem: str) -> float:
    return TOLERANCES.get(name, {}).get(problem, DEFAULT_TOLERANCES[problem])


def expected_failure(name: str, check: str) -> str | None:
    return EXPECTED_FAILURES.get(name, {}).get(check)


def skip_reason(name: str, check: str) -> str | None:
    return SKIPS.get(name, {}).get(check)


def params(check: str) -> list[Any]:
    """``pytest.param`` per name in ``tfopt.available()``, marked from the tables."""
    out = []
    for name in tfopt.available():
        marks = []
        if reason := expected_failure(name, check):
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        if reason := skip_reason(name, check):
            marks.append(pytest.mark.skip(reason=reason))
        out.append(pytest.param(name, id=name, marks=marks))
    return out
