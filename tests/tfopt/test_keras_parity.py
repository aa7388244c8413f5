"""tfopt matches Keras' built-in optimizers with the same hyperparameters (1e-5).

Also pins the identity stated in DynamicGradientDescent's docstring: it is
Keras' SGD with momentum = learning_rate_decay under
ExponentialDecay(learning_rate, 1, learning_rate_decay).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import tfopt

STEPS = 20
SHAPES = [(4,), (3, 2)]

# id -> (tfopt factory, Keras factory)
CASES = {
    "gradient_descent": (
        lambda **k: tfopt.GradientDescent(0.1, **k),
        lambda: keras.optimizers.SGD(0.1),
    ),
    "sgd": (lambda **k: tfopt.SGD(0.1, **k), lambda: keras.optimizers.SGD(0.1)),
    "sgd_momentum": (
        lambda **k: tfopt.SGD(0.05, momentum=0.9, **k),
        lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    ),
    "sgd_nesterov": (
        lambda **k: tfopt.SGD(0.05, momentum=0.9, nesterov=True, **k),
        lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
    ),
    "adagrad": (
        lambda **k: tfopt.Adagrad(0.1, **k),
        lambda: keras.optimizers.Adagrad(0.1),
    ),
    "adagrad_no_initial_accumulator": (
        lambda **k: tfopt.Adagrad(0.1, initial_accumulator_value=0.0, epsilon=1e-4, **k),
        lambda: keras.optimizers.Adagrad(0.1, initial_accumulator_value=0.0, epsilon=1e-4),
    ),
    "adam": (lambda **k: tfopt.Adam(0.01, **k), lambda: keras.optimizers.Adam(0.01)),
    "amsgrad": (
        lambda **k: tfopt.Adam(0.01, amsgrad=True, **k),
        lambda: keras.optimizers.Adam(0.01, amsgrad=True),
    ),
    "dynamic_gradient_descent_is_decayed_momentum": (
        lambda **k: tfopt.DynamicGradientDescent(0.01, learning_rate_decay=0.9, **k),
        lambda: keras.optimizers.SGD(
            keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=1, decay_rate=0.9),
            momentum=0.9,
        ),
    ),
}


def _tensor(x, dtype="float32"):
    """A backend tensor (any KERAS_BACKEND) of ``x``."""
    return ops.convert_to_tensor(np.asarray(x, dtype))


def _trajectory(optimizer):
    rng = np.random.default_rng(3)
    variables = [keras.Variable(rng.uniform(1.0, 2.0, size=s).astype("float32")) for s in SHAPES]
    out = []
    for step in range(STEPS):
        # Shrinking gradients, so that AMSGrad's running maximum matters.
        grads = [_tensor(2.0 * 0.8**step * rng.normal(size=s)) for s in SHAPES]
        optimizer.apply(grads, variables)
        out.append([v.numpy() for v in variables])
    return out


# On JAX fused="auto" is the keras.ops path (XLA fuses it): "keras_ops" runs it.
_FUSED = pytest.param("auto", id="fused", marks=pytest.mark.skipif(
    keras.backend.backend() == "jax", reason="on JAX fused='auto' is the keras.ops path"))


@pytest.mark.parametrize("fused", [_FUSED, pytest.param(False, id="keras_ops")])
@pytest.mark.parametrize("case", CASES)
def test_matches_keras(case, fused):
    make_tfopt, make_keras = CASES[case]
    ours, theirs = _trajectory(make_tfopt(fused=fused)), _trajectory(make_keras())
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=f"step {step}")


@pytest.mark.parametrize("name", ["sgd_momentum", "adam", "adagrad"])
def test_matches_keras_in_model_fit(name):
    """The same, through compile/fit (the path most users take)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 5)).astype("float32")
    y = rng.normal(size=(32, 1)).astype("float32")
    weights = []
    for make in CASES[name]:
        keras.utils.set_random_seed(4)
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3), keras.layers.Dense(1)])
        model.compile(optimizer=make(), loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
