"""The conformance suite every optimizer in ``tfopt.available()`` must pass.

Parameterized over the registry, so a newly registered optimizer is covered
with no edit here. Per-optimizer settings (hyperparameters, steps,
tolerances, factories, expected failures) live in ``cases.py``.

Written with ``keras.ops``, so it runs under every Keras backend (nox's
``backend-jax`` and ``backend-torch`` sessions): the problems' gradients are
in closed form, and steps.py compiles the loop the backend's way. Only
``tf.IndexedSlices`` gradients are TensorFlow's alone.
"""

from __future__ import annotations

import copy
import json

import keras
import numpy as np
import pytest
from keras import ops

import tfopt
from tests.tfopt import cases, steps

# --- Convergence problems -------------------------------------------------

_H = np.array([1.0, 10.0])
_C = np.array([1.0, -2.0])
# The founding documents' linear regression (no bias term); θ* = (0, 1) fits exactly.
_X = np.array([[1, 2], [2, 3], [3, 4], [4, 5]], dtype=np.float64)
_Y = np.array([2, 3, 4, 5], dtype=np.float64)


def _quadratic(theta):
    return 0.5 * np.sum(_H * np.square(theta - _C))


def _quadratic_grad(theta):
    return _H * (theta - _C)


def _rosenbrock(theta):
    x, y = theta[0], theta[1]
    return np.square(1 - x) + 100 * np.square(y - np.square(x))


def _rosenbrock_grad(theta):
    x, y = theta[0], theta[1]
    return [-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)]


def _mse(theta):
    return np.mean(np.square(_X @ theta - _Y))


def _mse_grad(theta):
    return 2 / len(_X) * (_X.T @ (_X @ theta - _Y))


# problem -> (loss, gradient, θ₀, scale). Each minimum is 0; the check is
# loss(θ_T) / scale < tolerance: relative suboptimality, or the raw MSE.
# A loss takes a NumPy θ (float64); its gradient takes a backend tensor θ.
_PROBLEMS = {
    "quadratic": (_quadratic, _quadratic_grad, [0.0, 0.0], 20.5),
    "rosenbrock": (_rosenbrock, _rosenbrock_grad, [0.0, 0.0], 1.0),
    "linear_regression": (_mse, _mse_grad, [0.0, 0.0], 1.0),
}


def _backend_grad(grad):
    """``grad`` (written for NumPy) on backend tensors: the constants cast to θ's dtype."""

    def grad_fn(values):
        (theta,) = values
        if grad is _quadratic_grad:
            h, c = ops.cast(_H, theta.dtype), ops.cast(_C, theta.dtype)
            return [h * (theta - c)]
        if grad is _rosenbrock_grad:
            return [ops.stack([ops.cast(g, theta.dtype) for g in _rosenbrock_grad(theta)])]
        x, y = ops.cast(_X, theta.dtype), ops.cast(_Y, theta.dtype)
        residual = ops.matmul(x, theta) - y
        return [ops.cast(2 / len(_X), theta.dtype) * ops.matmul(ops.transpose(x), residual)]

    return grad_fn


def _minimize(optimizer, problem, theta0, n_steps, dtype="float32"):
    """Runs ``n_steps`` steps, compiled the backend's way; returns (θ, loss(θ))."""
    loss_fn, grad, _, _ = _PROBLEMS[problem]
    theta = keras.Variable(np.asarray(theta0), dtype=dtype, name="theta")
    steps.run(optimizer, _backend_grad(grad), [theta], n_steps)
    value = _numpy(theta)
    return value, float(loss_fn(value.astype(np.float64)))


def _numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_gradients_match_finite_differences():
    """The closed-form gradients above are those of the losses."""
    theta = np.array([0.3, -0.7])
    for problem, (loss_fn, grad, _, _) in _PROBLEMS.items():
        numeric = [(loss_fn(theta + e) - loss_fn(theta - e)) / 2e-6 for e in 1e-6 * np.eye(2)]
        np.testing.assert_allclose(np.asarray(grad(theta), float), numeric, rtol=1e-6, err_msg=problem)
        on_backend = _numpy(_backend_grad(grad)([ops.convert_to_tensor(theta)])[0])
        np.testing.assert_allclose(on_backend, numeric, rtol=1e-6, err_msg=problem)


def _convergence_params():
    return [
        pytest.param(p.values[0], problem, id=f"{problem}-{p.id}", marks=p.marks)
        for problem in _PROBLEMS
        for p in cases.params(problem)
    ]


@pytest.mark.parametrize("name, problem", _convergence_params())
def test_converges(name, problem):
    _, _, theta0, scale = _PROBLEMS[problem]
    n_steps = cases.steps(name, problem)
    theta, loss = _minimize(cases.make(name, problem), problem, theta0, n_steps)
    assert np.isfinite(theta).all(), f"{name} diverged on {problem}: θ={theta}"
    assert loss / scale < cases.tolerance(name, problem), (
        f"{name} on {problem}: loss/scale={loss / scale:.3g} after {n_steps} steps, θ={theta}"
    )


_DTYPE_FLOOR = {"float64": 0.0, "float16": 1e-3, "bfloat16": 1e-2}


def _dtype_params():
    return [
        pytest.param(p.values[0], dtype, id=f"{dtype}-{p.id}", marks=p.marks)
        for dtype in _DTYPE_FLOOR
        for p in cases.params("dtype")
    ]


@pytest.mark.parametrize("name, dtype", _dtype_params())
def test_variable_dtypes(name, dtype):
    """The quadratic, solved in float64 / float16 / bfloat16 variables."""
    n_steps = cases.steps(name, "quadratic")
    theta, loss = _minimize(cases.make(name, "quadratic"), "quadratic", [0.0, 0.0], n_steps, dtype)
    assert theta.dtype == dtype
    tolerance = max(cases.tolerance(name, "quadratic"), _DTYPE_FLOOR[dtype])
    assert loss / 20.5 < tolerance, f"{name} in {dtype}: θ={theta}"


# --- Serialization ----------------------------------------------------------


@pytest.mark.parametrize("name", cases.params("config"))
def test_config_round_trip(name):
    optimizer = cases.make(name, "quadratic")  # Non-default hyperparameters.
    config = optimizer.get_config()
    # Copies: Keras' from_config/deserialize rewrite the dict they are given
    # (a schedule's config becomes the schedule, class_name is lowercased).
    assert type(optimizer).from_config(copy.deepcopy(config)).get_config() == config

    serialized = keras.optimizers.serialize(optimizer)
    json.dumps(serialized)  # A .keras file stores it as JSON.
    clones = (keras.optimizers.deserialize(copy.deepcopy(serialized)),
              tfopt.get(copy.deepcopy(serialized)))
    for clone in clones:
        assert type(clone) is type(optimizer)
        assert clone.get_config() == config


def _regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3).astype("float32")
    return x, y


def _tiny_model(optimizer):
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    )
    # Eager on TensorFlow: tracing costs more than these few steps of a
    # 21-parameter model there. JAX's eager dispatch is the slower (70 s against
    # 6 s jitted for the save/load check, measured here), so JAX compiles.
    model.compile(optimizer=optimizer, loss="mse",
                  run_eagerly=keras.backend.backend() != "jax")  # fmt: skip
    return model


def _train(model, steps, batch_size=8):
    """Keras' own train step (loss scaling included), one batch at a time.

    ``steps`` is a count, or the list of step numbers to take (their batches).
    """
    x, y = _regression_data()
    for step in range(steps) if isinstance(steps, int) else steps:
        batch = slice(step * batch_size % len(x), (step + 1) * batch_size % len(x) or None)
        model.train_on_batch(x[batch], y[batch])


@pytest.mark.parametrize("name", cases.params("save_load"))
def test_keras_file_keeps_optimizer_state(name, tmp_path):
    model = _tiny_model(cases.make(name))
    _train(model, steps=2)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)

    assert type(loaded.optimizer) is type(model.optimizer)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 2
    for saved, restored in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(_numpy(restored), _numpy(saved), err_msg=saved.path)
    for m in (model, loaded):
        _train(m, steps=3)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


# --- Precision --------------------------------------------------------------


@pytest.mark.parametrize("name", cases.params("mixed_float16"))
def test_mixed_float16(name):
    """Under mixed_float16, Keras wraps the optimizer in a LossScaleOptimizer,
    and the float32 weights follow the float32 run closely.

    A step whose scaled float16 gradient overflows is skipped (and the scale
    halved): on JAX the first step at Keras' initial scale 2**15 does. The
    float32 run takes the steps the float16 run applied, on the same batches.
    """
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = _tiny_model(cases.make(name))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    applied = []
    for step in range(4):
        before = int(model.optimizer.inner_optimizer.iterations)
        _train(model, [step])
        if int(model.optimizer.inner_optimizer.iterations) > before:
            applied.append(step)
    assert len(applied) >= 3, f"only steps {applied} of 4 were applied"
    float32_model = _tiny_model(cases.make(name))
    assert type(model.optimizer.inner_optimizer) is type(float32_model.optimizer)
    initial = float32_model.get_weights()
    _train(float32_model, applied)

    for w0, w32, w16 in zip(initial, float32_model.get_weights(), model.get_weights(), strict=True):
        assert w16.dtype == np.float32
        moved = np.abs(w32 - w0).max()
        assert moved > 0
        # float16 activations: agreement to a small fraction of the distance moved.
        np.testing.assert_allclose(w16, w32, atol=0.05 * moved + 1e-6)


# --- Sparse gradients -------------------------------------------------------


@pytest.mark.tensorflow_only("tf.IndexedSlices gradients exist only on TensorFlow")
@pytest.mark.parametrize("name", cases.params("sparse"))
def test_embedding_indexed_slices_match_dense(name):
    import tensorflow as tf

    ids = tf.constant([[0, 2, 2, 5], [5, 1, 0, 0]])  # Repeated ids: duplicate indices.
    weights = tf.constant(np.random.default_rng(0).normal(size=(3,)), tf.float32)
    layers, optimizers = [], []
    for _ in range(2):
        keras.utils.set_random_seed(2)
        layer = keras.layers.Embedding(8, 3)
        layer.build()
        layers.append(layer)
        optimizers.append(cases.make(name))
    initial = layers[0].embeddings.numpy()
    for _ in range(3):
        grads = []
        for layer in layers:
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.tanh(layer(ids)) * weights)
            grads.append(tape.gradient(loss, layer.trainable_variables)[0])
        assert isinstance(grads[0], tf.IndexedSlices)
        optimizers[0].apply([grads[0]], layers[0].trainable_variables)
        optimizers[1].apply([tf.convert_to_tensor(grads[1])], layers[1].trainable_variables)
    sparse, dense = (layer.embeddings.numpy() for layer in layers)
    assert not np.allclose(sparse, initial)
    np.testing.assert_allclose(sparse, dense, rtol=1e-6, atol=1e-6)


# --- Tracing ----------------------------------------------------------------


@pytest.mark.parametrize("name", cases.params("retrace"))
def test_train_step_traces_once(name):
    """A compiled step traces once (tf.function on TensorFlow, jax.jit on JAX)."""
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        pytest.skip(f"the {backend} backend runs eagerly: there is no trace to count")
    optimizer = cases.make(name)
    theta = keras.Variable(np.ones(3, "float32"))
    optimizer.build([theta])
    traces = []

    def grads(values, x):
        return [2 * values[0] * x * x]

    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def step(x):
            traces.append(1)
            optimizer.apply(grads([theta.value], x), [theta])

    else:
        import jax

        @jax.jit
        def jitted(optimizer_values, values, x):
            traces.append(1)
            return optimizer.stateless_apply(optimizer_values, grads(values, x), values)

        def step(x):
            values, optimizer_values = jitted([v.value for v in optimizer.variables], [theta.value], x)
            theta.assign(values[0])
            for variable, value in zip(optimizer.variables, optimizer_values, strict=True):
                variable.assign(value)

    step(ops.convert_to_tensor([1.0, 2.0, 3.0]))
    count = len(traces)
    before = _numpy(theta)
    for x in ([0.5, -1.0, 2.0], [3.0, 0.1, -0.2]):
        step(ops.convert_to_tensor(x))
    assert len(traces) == count
    assert not np.array_equal(_numpy(theta), before), "the traced step did not update"


# --- Keras' inherited options -----------------------------------------------

_SHAPES = [(3,), (2, 2)]


def _grads(step):
    rng = np.random.default_rng(100 + step)
    return [ops.convert_to_tensor((3.0 * rng.normal(size=s)).astype("float32")) for s in _SHAPES]


def _run(optimizer, steps=3, transform=lambda grads, variables: grads, before_step=None):
    """Applies seeded gradients; returns the variables and their value after each step."""
    rng = np.random.default_rng(7)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in _SHAPES]
    trajectory = []
    for step in range(steps):
        if before_step is not None:
            before_step(optimizer, variables)
        optimizer.apply(transform(_grads(step), variables), variables)
        trajectory.append([_numpy(v) for v in variables])
    return variables, trajectory


def _assert_same(actual, expected):
    for a_step, e_step in zip(actual, expected, strict=True):
        for a, e in zip(a_step, e_step, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", cases.params("clipnorm"))
def test_clipnorm(name):
    def clip_each(grads, variables):
        return [g * min(1.0, 0.5 / float(np.linalg.norm(_numpy(g)))) for g in grads]

    _, clipped = _run(cases.make(name, clipnorm=0.5))
    _, expected = _run(cases.make(name), transform=clip_each)
    _, unclipped = _run(cases.make(name))
    _assert_same(clipped, expected)
    assert not np.allclose(clipped[-1][0], unclipped[-1][0])


@pytest.mark.parametrize("name", cases.params("global_clipnorm"))
def test_global_clipnorm(name):
    def clip_global(grads, variables):
        norm = float(np.sqrt(sum(np.sum(np.square(_numpy(g))) for g in grads)))
        return [g * min(1.0, 0.5 / norm) for g in grads]

    _, clipped = _run(cases.make(name, global_clipnorm=0.5))
    _, expected = _run(cases.make(name), transform=clip_global)
    _, unclipped = _run(cases.make(name))
    _assert_same(clipped, expected)
    assert not np.allclose(clipped[-1][0], unclipped[-1][0])


@pytest.mark.parametrize("name", cases.params("weight_decay"))
def test_weight_decay(name):
    """Keras' decoupled decay, θ ← θ − learning_rate · weight_decay · θ, before the step."""

    def decay(optimizer, variables):
        lr = float(optimizer.learning_rate)
        for v in variables:
            v.assign(v - v * 0.1 * lr)

    _, decayed = _run(cases.make(name, weight_decay=0.1))
    _, expected = _run(cases.make(name), before_step=decay)
    _, plain = _run(cases.make(name))
    _assert_same(decayed, expected)
    assert not np.allclose(decayed[-1][0], plain[-1][0])


@pytest.mark.parametrize("name", cases.params("use_ema"))
def test_use_ema(name):
    optimizer = cases.make(name, use_ema=True, ema_momentum=0.5)
    variables, trajectory = _run(optimizer)
    _, plain = _run(cases.make(name))
    _assert_same(trajectory, plain)  # The average does not disturb the steps.

    # Keras' rule: the average starts at the first step's value.
    average = trajectory[0]
    for values in trajectory[1:]:
        average = [0.5 * a + 0.5 * v for a, v in zip(average, values, strict=True)]
    optimizer.finalize_variable_values(variables)
    _assert_same([[_numpy(v) for v in variables]], [average])
