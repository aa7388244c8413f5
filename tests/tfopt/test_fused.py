"""The fused kernels: used where they apply, equal to the keras.ops spec.

TensorFlow's training kernels, and tfopt's native LARS/LAMB kernels (which
must build here: with ``TFOPT_NATIVE=0`` their rows fail, on purpose).

fused="auto" and fused=False must agree to 1e-6: dense and sparse gradients,
float32 and float64, with Keras' inherited options, and per replica under
MirroredStrategy(["CPU:0", "CPU:1"]).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tests.tfopt import mirrored
from tfopt import _fused

pytestmark = pytest.mark.tensorflow_only("the fused training kernels are TensorFlow's")

# id -> (registered name, kwargs, the kernel "auto" must use for dense gradients)
CASES = {
    "gradient_descent": ("gradient_descent", {"learning_rate": 0.1}, "ResourceApplyGradientDescent"),
    "sgd": ("sgd", {"learning_rate": 0.1}, "ResourceApplyGradientDescent"),
    "sgd_momentum": ("sgd", {"learning_rate": 0.05, "momentum": 0.9}, "ResourceApplyKerasMomentum"),
    "sgd_nesterov": (
        "sgd", {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True},
        "ResourceApplyKerasMomentum",
    ),
    "dynamic_gradient_descent": (
        "dynamic_gradient_descent", {"learning_rate": 0.01, "learning_rate_decay": 0.9},
        "ResourceApplyMomentum",
    ),
    "adagrad": ("adagrad", {"learning_rate": 0.1}, "ResourceApplyAdagradV2"),
    "adam": ("adam", {"learning_rate": 0.01}, "ResourceApplyAdam"),
    "amsgrad": ("adam", {"learning_rate": 0.01, "amsgrad": True}, "ResourceApplyAdamWithAmsgrad"),
    # LARS and LAMB: tfopt's native kernels (tfopt/_native.py, tests/tfopt/test_native.py).
    "lars": ("lars", {"learning_rate": 1.0, "weight_decay": 0.01}, "TfoptLarsUpdate"),
    "lars_nesterov": (
        "lars", {"learning_rate": 0.5, "weight_decay": 0.01, "nesterov": True, "eps": 1e-3},
        "TfoptLarsUpdate",
    ),
    "lamb": ("lamb", {"learning_rate": 0.01, "weight_decay": 0.01}, "TfoptLambUpdate"),
    "lazy_adam": ("lazy_adam", {"learning_rate": 0.01}, "ResourceApplyAdam"),
    "radam": ("radam", {"learning_rate": 0.01}, "ResourceApplyAdam"),
}  # fmt: skip

_FUSED_OPS = {kernel for _, _, kernel in CASES.values()} | {
    "ResourceSparseApplyAdagradV2",
    "ResourceScatterSub",
}
SHAPES = [(6, 3), (4,)]


def _make(case, fused, **overrides):
    name, kwargs, _ = CASES[case]
    return tfopt.get(name, fused=fused, **{**kwargs, **overrides})


def _variables(dtype="float32"):
    rng = np.random.default_rng(0)
    return [keras.Variable(rng.uniform(1.0, 2.0, size=s).astype(dtype)) for s in SHAPES]


def _grads(step, dtype="float32", sparse=False):
    rng = np.random.default_rng(10 + step)
    dense = [tf.constant(rng.normal(size=s), dtype) for s in SHAPES]
    if not sparse:
        return dense
    # Rows 0, 2 and 0 again (a repeated index) of the first variable; 1, 4, 5 untouched.
    rows = tf.constant([0, 2, 0])
    values = tf.constant(rng.normal(size=(3, 3)), dtype)
    return [tf.IndexedSlices(values, rows, tf.constant(SHAPES[0])), dense[1]]


def _run(optimizer, steps=8, dtype="float32", sparse=False):
    variables = _variables(dtype)
    for step in range(steps):
        optimizer.apply(_grads(step, dtype, sparse), variables)
    return [v.numpy() for v in variables]


def _op_types(optimizer, dtype="float32", sparse=False):
    """Op types in the traced update step, library functions (tf.cond branches) included."""
    variables = _variables(dtype)
    optimizer.build(variables)
    grads = _grads(0, dtype, sparse)
    graph_def = (
        tf.function(lambda: optimizer.apply(grads, variables)).get_concrete_function().graph
    ).as_graph_def()
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return {node.op for node in nodes}


def _assert_equal(actual, expected, tolerance=1e-6):
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=tolerance, atol=tolerance)


# --- The kernels are used, and only where they apply -------------------------


@pytest.mark.parametrize("case", CASES)
def test_auto_uses_the_fused_kernel(case):
    kernel = CASES[case][2]
    assert kernel in _op_types(_make(case, "auto"))
    assert not _op_types(_make(case, False)) & _FUSED_OPS


@pytest.mark.parametrize(
    "case, kernel",
    [
        ("adagrad", "ResourceSparseApplyAdagradV2"),  # Exact on the rows present.
        ("gradient_descent", "ResourceScatterSub"),  # Linear: a scatter is exact.
        ("sgd_momentum", "ResourceApplyKerasMomentum"),  # Densified: every velocity decays.
        ("adam", "ResourceApplyAdam"),  # Densified: every moment decays.
    ],
)
def test_sparse_gradients_use_the_exact_kernel(case, kernel):
    assert kernel in _op_types(_make(case, "auto"), sparse=True)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_adam_falls_back_for_half_precision(dtype):
    """The Adam kernels compute 1 - beta_2 in the variable's dtype (bfloat16: 1 - 1 = 0)."""
    assert not _op_types(_make("adam", "auto"), dtype) & _FUSED_OPS
    with pytest.raises(ValueError, match=rf"its dtype is {dtype}.*Received: fused=True"):
        _op_types(_make("adam", True), dtype)


def test_other_kernels_take_float16_but_not_bfloat16():
    """bfloat16 kernels are not registered on every device."""
    assert "ResourceApplyAdagradV2" in _op_types(_make("adagrad", "auto"), "float16")
    assert not _op_types(_make("adagrad", "auto"), "bfloat16") & _FUSED_OPS


def test_auto_falls_back_off_the_tensorflow_backend(monkeypatch):
    expected = _run(_make("adam", False))
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    optimizer = _make("adam", "auto")
    assert not _op_types(optimizer) & _FUSED_OPS
    _assert_equal(_run(_make("adam", "auto")), expected)
    with pytest.raises(ValueError, match=r"needs the TensorFlow backend.*Received: fused=True"):
        _make("adam", True)


def _xla_run(optimizer, steps, sparse):
    variables = _variables()
    step = tf.function(lambda grads: optimizer.apply(grads, variables), jit_compile=True)
    for i in range(steps):
        step(_grads(i, sparse=sparse))
    return [v.numpy() for v in variables]


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("case", ["amsgrad", "adagrad"])
def test_xla_compiles_the_keras_ops_path(case, sparse):
    """XLA fuses keras.ops itself and has no lowering for these two kernels."""
    expected = _run(_make(case, False), steps=4, sparse=sparse)
    _assert_equal(_xla_run(_make(case, "auto"), 4, sparse), expected)
    with pytest.raises(ValueError, match="compiled with XLA.*Received: fused=True"):
        _xla_run(_make(case, True), 1, sparse)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_rejects_bad_fused_values(value):
    with pytest.raises(ValueError, match=rf"Received: fused={value!r}"):
        tfopt.Adam(fused=value)


def test_a_mirrored_variable_has_no_handle_outside_an_update():
    with mirrored.two_cpus().scope():
        variable = tf.Variable([1.0, 2.0])
        assert "no resource handle" in _fused.unsupported_reason(variable)


# --- Fused == keras.ops -----------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES)
def test_fused_equals_keras_ops(case, dtype, sparse):
    fused = _run(_make(case, True), dtype=dtype, sparse=sparse)
    _assert_equal(fused, _run(_make(case, False), dtype=dtype, sparse=sparse))


_OPTIONS = {
    "weight_decay": {"weight_decay": 0.05},
    "clipnorm": {"clipnorm": 0.5},
    "global_clipnorm": {"global_clipnorm": 0.5},
    "use_ema": {"use_ema": True, "ema_overwrite_frequency": 3},
    "gradient_accumulation_steps": {"gradient_accumulation_steps": 2},
    "loss_scale_factor": {"loss_scale_factor": 128.0},
}


@pytest.mark.parametrize("option", _OPTIONS)
@pytest.mark.parametrize(
    "case", ["sgd_momentum", "dynamic_gradient_descent", "adagrad", "adam", "lars", "lamb"]
)
def test_fused_equals_keras_ops_with_keras_options(case, option):
    fused = _make(case, True, **_OPTIONS[option])
    unfused = _make(case, False, **_OPTIONS[option])
    _assert_equal(_run(fused), _run(unfused))
    assert int(fused.iterations) == int(unfused.iterations)


@pytest.mark.parametrize("case", ["sgd_momentum", "adam"])
def test_fused_under_loss_scale_optimizer(case):
    """mixed_float16's dynamic loss scaling: unscale, skip non-finite steps, then the kernel."""
    results = []
    for fused in (True, False):
        optimizer = keras.optimizers.LossScaleOptimizer(_make(case, fused), initial_scale=2.0**10)
        variables = _variables()
        optimizer.build(variables)
        for step in range(6):
            grads = [g * float(optimizer.dynamic_scale) for g in _grads(step)]
            if step == 2:  # An overflowing step must be skipped by both.
                grads[1] = grads[1] * np.inf
            optimizer.apply(grads, variables)
        results.append([v.numpy() for v in variables])
        assert int(optimizer.iterations) == 5  # The overflowing step was skipped.
    _assert_equal(*results)


# --- Per replica, under MirroredStrategy ------------------------------------


def _mirrored_run(case, fused, strategy, steps=3):
    with strategy.scope():
        variables = _variables()
        optimizer = _make(case, fused)
        optimizer.build(variables)

    def replica_grads(context):
        # Different gradients per replica: Keras all-reduces (sums) them.
        return _grads(context.replica_id_in_sync_group)

    @tf.function
    def step(per_replica):
        strategy.run(lambda grads: optimizer.apply(grads, variables), args=(per_replica,))

    for _ in range(steps):
        step(strategy.experimental_distribute_values_from_function(replica_grads))
    copies = [[c.numpy() for c in v.value.values] for v in variables]
    for per_device in copies:  # Every replica holds the same values.
        np.testing.assert_array_equal(per_device[0], per_device[1])
    return [per_device[0] for per_device in copies]


@pytest.mark.parametrize("case", CASES)
def test_fused_equals_keras_ops_under_mirrored(case):
    fused = _mirrored_run(case, True, mirrored.two_cpus())
    _assert_equal(fused, _mirrored_run(case, False, mirrored.two_cpus()))

    # And both equal one device applying the summed gradients.
    optimizer, variables = _make(case, False), _variables()
    summed = [a + b for a, b in zip(_grads(0), _grads(1), strict=True)]
    for _ in range(3):
        optimizer.apply(summed, variables)
    _assert_equal(fused, [v.numpy() for v in variables], tolerance=1e-5)
