"""The conformance suite every optimizer in ``tfopt.available()`` must pass.

Parameterized over the registry, so a newly registered optimizer is covered
with no edit here. Per-optimizer settings (hyperparameters, steps,
tolerances, factories, expected failures) live in ``cases.py``.
"""

from __future__ import annotations

import copy
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tests.tfopt import cases

# --- Convergence problems -------------------------------------------------

_H = np.array([1.0, 10.0])
_C = np.array([1.0, -2.0])
# The founding documents' linear regression (no bias term); θ* = (0, 1) fits exactly.
_X = np.array([[1, 2], [2, 3], [3, 4], [4, 5]], dtype=np.float64)
_Y = np.array([2, 3, 4, 5], dtype=np.float64)


def _quadratic(theta):
    h, c = tf.constant(_H, theta.dtype), tf.constant(_C, theta.dtype)
    return 0.5 * tf.reduce_sum(h * tf.square(theta - c))


def _rosenbrock(theta):
    x, y = theta[0], theta[1]
    return tf.square(1 - x) + 100 * tf.square(y - tf.square(x))


def _mse(theta):
    x, y = tf.constant(_X, theta.dtype), tf.constant(_Y, theta.dtype)
    return tf.reduce_mean(tf.square(tf.linalg.matvec(x, theta) - y))


# problem -> (loss, θ₀, scale). Each minimum is 0; the check is
# loss(θ_T) / scale < tolerance: relative suboptimality, or the raw MSE.
_PROBLEMS = {
    "quadratic": (_quadratic, [0.0, 0.0], 20.5),
    "rosenbrock": (_rosenbrock, [0.0, 0.0], 1.0),
    "linear_regression": (_mse, [0.0, 0.0], 1.0),
}


def _minimize(optimizer, loss_fn, theta0, steps, dtype="float32"):
    """Runs ``steps`` steps inside one tf.function; returns (θ, loss(θ))."""
    theta = keras.Variable(np.asarray(theta0), dtype=dtype, name="theta")
    optimizer.build([theta])

    @tf.function
    def run(n):
        for _ in tf.range(n):
            with tf.GradientTape() as tape:
                loss = loss_fn(theta.value)
            optimizer.apply(tape.gradient(loss, [theta.value]), [theta])
        return loss_fn(theta.value)

    loss = float(run(tf.constant(steps)))
    return theta, loss


def _convergence_params():
    return [
        pytest.param(p.values[0], problem, id=f"{problem}-{p.id}", marks=p.marks)
        for problem in _PROBLEMS
        for p in cases.params(problem)
    ]


@pytest.mark.parametrize("name, problem", _convergence_params())
def test_converges(name, problem):
    loss_fn, theta0, scale = _PROBLEMS[problem]
    steps = cases.steps(name, problem)
    theta, loss = _minimize(cases.make(name, problem), loss_fn, theta0, steps)
    assert np.isfinite(theta.numpy()).all(), f"{name} diverged on {problem}: θ={theta.numpy()}"
    assert loss / scale < cases.tolerance(name, problem), (
        f"{name} on {problem}: loss/scale={loss / scale:.3g} after {steps} steps, θ={theta.numpy()}"
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
    steps = cases.steps(name, "quadratic")
    theta, loss = _minimize(cases.make(name, "quadratic"), _quadratic, [0.0, 0.0], steps, dtype)
    assert theta.dtype == dtype
    tolerance = max(cases.tolerance(name, "quadratic"), _DTYPE_FLOOR[dtype])
    assert loss / 20.5 < tolerance, f"{name} in {dtype}: θ={theta.numpy()}"


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
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _train(model, steps, batch_size=8):
    """What Keras' TF train_step does, run eagerly: tracing would cost more than
    these few steps of a 21-parameter model."""
    x, y = _regression_data()
    for step in range(steps):
        batch = slice(step * batch_size % len(x), (step + 1) * batch_size % len(x) or None)
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x=x[batch], y=y[batch], y_pred=model(x[batch]))
            loss = model.optimizer.scale_loss(loss)
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply(grads, model.trainable_variables)


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
        np.testing.assert_array_equal(restored.numpy(), saved.numpy(), err_msg=saved.path)
    for m in (model, loaded):
        _train(m, steps=3)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


# --- Precision --------------------------------------------------------------


@pytest.mark.parametrize("name", cases.params("mixed_float16"))
def test_mixed_float16(name):
    """Under mixed_float16, Keras wraps the optimizer in a LossScaleOptimizer,
    and the float32 weights follow the float32 run closely."""
    float32_model = _tiny_model(cases.make(name))
    initial = float32_model.get_weights()
    _train(float32_model, steps=4)
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = _tiny_model(cases.make(name))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert type(model.optimizer.inner_optimizer) is type(float32_model.optimizer)
    _train(model, steps=4)

    for w0, w32, w16 in zip(initial, float32_model.get_weights(), model.get_weights(), strict=True):
        assert w16.dtype == np.float32
        moved = np.abs(w32 - w0).max()
        assert moved > 0
        # float16 activations: agreement to a small fraction of the distance moved.
        np.testing.assert_allclose(w16, w32, atol=0.05 * moved + 1e-6)


# --- Sparse gradients -------------------------------------------------------


@pytest.mark.parametrize("name", cases.params("sparse"))
def test_embedding_indexed_slices_match_dense(name):
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
    optimizer = cases.make(name)
    theta = keras.Variable(np.ones(3, "float32"))
    optimizer.build([theta])

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(theta.value * x))
        optimizer.apply(tape.gradient(loss, [theta.value]), [theta])

    step(tf.constant([1.0, 2.0, 3.0]))
    traces = step.experimental_get_tracing_count()
    before = theta.numpy()
    for x in ([0.5, -1.0, 2.0], [3.0, 0.1, -0.2]):
        step(tf.constant(x))
    assert step.experimental_get_tracing_count() == traces
    assert not np.array_equal(theta.numpy(), before), "the traced step did not update"


# --- Keras' inherited options -----------------------------------------------

_SHAPES = [(3,), (2, 2)]


def _grads(step):
    rng = np.random.default_rng(100 + step)
    return [tf.constant(3.0 * rng.normal(size=s), tf.float32) for s in _SHAPES]


def _run(optimizer, steps=3, transform=lambda grads, variables: grads, before_step=None):
    """Applies seeded gradients; returns the variables and their value after each step."""
    rng = np.random.default_rng(7)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in _SHAPES]
    trajectory = []
    for step in range(steps):
        if before_step is not None:
            before_step(optimizer, variables)
        optimizer.apply(transform(_grads(step), variables), variables)
        trajectory.append([v.numpy() for v in variables])
    return variables, trajectory


def _assert_same(actual, expected):
    for a_step, e_step in zip(actual, expected, strict=True):
        for a, e in zip(a_step, e_step, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", cases.params("clipnorm"))
def test_clipnorm(name):
    def clip_each(grads, variables):
        return [g * min(1.0, 0.5 / float(tf.norm(g))) for g in grads]

    _, clipped = _run(cases.make(name, clipnorm=0.5))
    _, expected = _run(cases.make(name), transform=clip_each)
    _, unclipped = _run(cases.make(name))
    _assert_same(clipped, expected)
    assert not np.allclose(clipped[-1][0], unclipped[-1][0])


@pytest.mark.parametrize("name", cases.params("global_clipnorm"))
def test_global_clipnorm(name):
    def clip_global(grads, variables):
        norm = float(tf.linalg.global_norm(grads))
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
    _assert_same([[v.numpy() for v in variables]], [average])
