"""tfopt.Lookahead against a NumPy reference written from optax.lookahead.

optax (optax/_src/lookahead.py, ``reset_state=False``): the fast optimizer
steps every time; when ``steps_since_sync == sync_period - 1`` the slow
weights move ``slow += slow_step_size * (fast - slow)`` and the fast weights
are set to them. The inner optimizer's state carries on across syncs.
"""

from __future__ import annotations

import contextlib
import re

import keras
import numpy as np
import pytest
from keras import ops

import tfopt


def sgd_momentum_step(learning_rate=0.1, momentum=0.9):
    def step(t, theta, g, state):
        state["u"] = momentum * state.get("u", np.zeros_like(theta)) - learning_rate * g
        return theta + state["u"]

    return step


def adam_step(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    def step(t, theta, g, state):
        state["m"] = beta_1 * state.get("m", np.zeros_like(theta)) + (1 - beta_1) * g
        state["v"] = beta_2 * state.get("v", np.zeros_like(theta)) + (1 - beta_2) * g**2
        alpha = learning_rate * np.sqrt(1 - beta_2 ** (t + 1)) / (1 - beta_1 ** (t + 1))
        return theta - alpha * state["m"] / (np.sqrt(state["v"]) + epsilon)

    return step


def lookahead(params, grads, inner_step, *, sync_period=6, slow_step_size=0.5):
    """Trajectory of (fast, slow) weights; ``inner_step(t, theta, g, state)``."""
    fast = [np.array(p, np.float64) for p in params]
    slow = [f.copy() for f in fast]
    states = [{} for _ in fast]
    out = []
    for t, step_grads in enumerate(grads):
        for i, g in enumerate(step_grads):
            fast[i] = inner_step(t, fast[i], np.asarray(g, np.float64), states[i])
            if (t + 1) % sync_period == 0:
                slow[i] = slow[i] + slow_step_size * (fast[i] - slow[i])
                fast[i] = slow[i].copy()
        out.append(([f.copy() for f in fast], [s.copy() for s in slow]))
    return out


RNG = np.random.default_rng(4)
PARAMS = [RNG.normal(size=(3, 2)), RNG.normal(size=2)]
GRADS = [[RNG.normal(size=(3, 2)), RNG.normal(size=2)] for _ in range(7)]

INNERS = {
    "keras-sgd": (lambda: keras.optimizers.SGD(0.1, momentum=0.9), sgd_momentum_step(0.1, 0.9)),
    "tfopt-adam": (lambda: tfopt.Adam(0.01), adam_step(0.01)),
}


def _slow_weights(opt, variables):
    by_name = {v.path: v for v in opt.variables}
    return [by_name[f"{opt.name}/{v.path.replace('/', '_')}_slow"].numpy() for v in variables]


@pytest.mark.parametrize("inner", INNERS.values(), ids=INNERS.keys())
def test_matches_optax_reference(inner):
    make_inner, inner_step = inner
    opt = tfopt.Lookahead(make_inner(), sync_period=3, slow_step_size=0.5)
    variables = [keras.Variable(p, dtype="float32") for p in PARAMS]
    expected = lookahead(PARAMS, GRADS, inner_step, sync_period=3, slow_step_size=0.5)
    for t, (step_grads, (fast, slow)) in enumerate(zip(GRADS, expected, strict=True)):
        opt.apply([ops.convert_to_tensor(np.asarray(g, "float32")) for g in step_grads], variables)
        for got, want in zip(
            [v.numpy() for v in variables] + _slow_weights(opt, variables), fast + slow, strict=True
        ):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6, err_msg=f"step {t}")
    assert int(opt.iterations) == int(opt.inner_optimizer.iterations) == len(GRADS)


def _fit(strategy=None, jit_compile=False, steps=8):
    """Keras fit with Lookahead(SGD), sync_period=4; returns the model."""
    x = np.random.default_rng(5).normal(size=(32, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    keras.utils.set_random_seed(0)
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        opt = tfopt.Lookahead(keras.optimizers.SGD(0.05, momentum=0.5), sync_period=4)
        model.compile(optimizer=opt, loss="mse", jit_compile=jit_compile)
    model.fit(x[: 4 * steps], y[: 4 * steps], batch_size=4, epochs=1, shuffle=False, verbose=0)
    return model


@pytest.mark.parametrize(
    "jit_compile",
    [
        False,
        pytest.param(True, marks=pytest.mark.skipif(
            keras.backend.backend() == "torch",
            reason="jit_compile=True is torch.compile on PyTorch, not under test here",
        )),
    ],
    ids=["graph", "xla"],
)
def test_fit_ends_synchronized_after_a_multiple_of_sync_period(jit_compile):
    # Without a strategy Keras builds the optimizer while tracing the first
    # step; under XLA that needs the slow weights created eagerly.
    model = _fit(jit_compile=jit_compile)
    assert int(model.optimizer.iterations) == 8
    fast = [v.numpy() for v in model.trainable_variables]
    for f, s in zip(fast, _slow_weights(model.optimizer, model.trainable_variables), strict=True):
        np.testing.assert_array_equal(f, s)


@pytest.mark.tensorflow_only("tf.distribute.MirroredStrategy is TensorFlow's")
def test_mirrored_fit_matches_one_device():
    import tensorflow as tf

    from tests.tfopt import mirrored

    # The sync runs as Lookahead's update_step, which Keras places on each
    # replica's copy; 6 steps = one sync and two fast steps after it.
    on_two = _fit(mirrored.two_cpus(), steps=6)
    single = _fit(tf.distribute.OneDeviceStrategy("CPU:0"), steps=6)
    for a, b in zip(on_two.get_weights(), single.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    slow_m = _slow_weights(on_two.optimizer, on_two.trainable_variables)
    slow_s = _slow_weights(single.optimizer, single.trainable_variables)
    for a, b in zip(slow_m, slow_s, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert not np.allclose(slow_m[0], on_two.get_weights()[0])  # 2 fast steps since the sync


def test_config_round_trip_nests_the_inner_optimizer():
    inner = tfopt.LAMB(2e-3, weight_decay=0.01, exclude_from_layer_adaptation=["bias"])
    opt = tfopt.Lookahead(inner, sync_period=5, slow_step_size=0.8)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(clone) is tfopt.Lookahead and type(clone.inner_optimizer) is tfopt.LAMB
    assert clone.get_config() == opt.get_config()
    assert clone.inner_optimizer.exclude_from_layer_adaptation == ["bias"]


@pytest.mark.tensorflow_only(
    "tf.train.Checkpoint is TensorFlow's (test_backends.py round-trips .keras files on every backend)"
)
def test_checkpoint_restores_slow_weights_and_inner_state(tmp_path):
    import tensorflow as tf

    variables = [keras.Variable(p, dtype="float32") for p in PARAMS]
    opt = tfopt.Lookahead(keras.optimizers.Adam(0.01), sync_period=2)
    for step_grads in GRADS[:3]:
        opt.apply([tf.constant(g, tf.float32) for g in step_grads], variables)
    path = tf.train.Checkpoint(optimizer=opt, variables=variables).save(str(tmp_path / "ckpt"))
    saved = [v.numpy() for v in opt.variables]

    restored_vars = [keras.Variable(np.zeros_like(p), dtype="float32") for p in PARAMS]
    restored = tfopt.Lookahead(keras.optimizers.Adam(0.01), sync_period=2)
    restored.build(restored_vars)
    tf.train.Checkpoint(optimizer=restored, variables=restored_vars).restore(path).assert_consumed()
    # Own iteration, learning rate, 2 slow weights; then Adam's 2 scalars, 2 m, 2 v.
    assert len(restored.variables) == len(saved) == (2 + 2) + (2 + 2 * 2)
    for got, want in zip(restored.variables, saved, strict=True):
        np.testing.assert_array_equal(got.numpy(), want)


def test_learning_rate_and_loss_scale_are_the_inner_optimizers():
    inner = keras.optimizers.SGD(0.1, loss_scale_factor=8.0)
    opt = tfopt.Lookahead(inner)
    opt.learning_rate = 0.25
    assert float(inner.learning_rate) == float(opt.learning_rate) == 0.25
    assert opt.loss_scale_factor == 8.0 and float(opt.scale_loss(1.0)) == 8.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: tfopt.Lookahead("adam"), "optimizer='adam'"),
        (lambda: tfopt.Lookahead(keras.optimizers.SGD(), sync_period=0), "sync_period=0"),
        (lambda: tfopt.Lookahead(keras.optimizers.SGD(), sync_period=2.0), "sync_period=2.0"),
        (lambda: tfopt.Lookahead(keras.optimizers.SGD(), slow_step_size=0.0), "slow_step_size=0.0"),
        (lambda: tfopt.Lookahead(keras.optimizers.SGD(), slow_step_size=1.5), "slow_step_size=1.5"),
        (lambda: tfopt.Lookahead(keras.optimizers.SGD(), clipnorm=1.0), "clipnorm=1.0"),
        (
            lambda: tfopt.Lookahead(keras.optimizers.SGD(gradient_accumulation_steps=2)),
            "gradient_accumulation_steps=2",
        ),
    ],
    ids=[
        "not-an-optimizer",
        "sync_period",
        "float-sync_period",
        "zero-step",
        "big-step",
        "clipnorm",
        "accumulation",
    ],
)
def test_invalid_arguments_name_the_received_value(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()
