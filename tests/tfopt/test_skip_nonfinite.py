"""tfopt.SkipNonFinite: a NaN on one replica skips the step on all, atomically."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

import tfopt

INNER = {
    "tfopt_sgd_momentum": lambda: tfopt.SGD(0.1, momentum=0.9),
    "tfopt_adam": lambda: tfopt.Adam(0.05),
    "keras_sgd_momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "keras_adam": lambda: keras.optimizers.Adam(0.05),
}

RNG = np.random.default_rng(0)
GOOD_1 = RNG.normal(size=(2, 4, 3)).astype("float32")  # [replica, example, feature]
GOOD_2 = RNG.normal(size=(2, 4, 3)).astype("float32")
BAD = RNG.normal(size=(2, 4, 3)).astype("float32")
BAD[1, 2, 0] = np.nan  # Replica 1 only: replica 0's gradients stay finite.
TARGET_W = np.array([[1.0], [-2.0], [0.5]], "float32")


# The tests under MirroredStrategy are TensorFlow's; the rest run on every backend.
_MIRRORED_ONLY = pytest.mark.tensorflow_only("tf.distribute.MirroredStrategy is TensorFlow's")


def _mirrored():
    # The default (collective) all-reduce, as users get it; see tests/tfopt/mirrored.py.
    from tests.tfopt import mirrored

    return mirrored.two_cpus()


def _per_replica_values(variable) -> list[np.ndarray]:
    """Every replica's copy (a MirroredVariable has one per device)."""
    v = variable.value if isinstance(variable, keras.Variable) else variable
    return [np.array(c.numpy()) for c in getattr(v, "values", [v])]


def _snapshot(model, optimizer) -> list[list[np.ndarray]]:
    """Every weight, slot and counter, on every replica, except the skip counter."""
    state = model.weights + [v for v in optimizer.variables if v is not optimizer.skipped_steps]
    assert len(state) == len(model.weights) + len(optimizer.variables) - 1
    return [_per_replica_values(v) for v in state]


class _Run:
    """A linear model trained step by step under a strategy, as Keras' trainer does."""

    def __init__(self, strategy, make_inner, wrap=True):
        import tensorflow as tf

        self.strategy = strategy
        with strategy.scope():
            keras.utils.set_random_seed(1)
            self.model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
            inner = make_inner()
            self.optimizer = tfopt.SkipNonFinite(inner) if wrap else inner
            self.optimizer.build(self.model.trainable_variables)

        @tf.function
        def step(x):
            def replica_step(x):
                with tf.GradientTape() as tape:
                    y = tf.matmul(tf.where(tf.math.is_nan(x), 0.0, x), TARGET_W)
                    # The NaN reaches the loss (and the gradients) of its replica only.
                    err = self.model(x) - y
                    loss = tf.reduce_sum(err**2) / (4.0 * strategy.num_replicas_in_sync)
                variables = self.model.trainable_variables
                self.optimizer.apply(tape.gradient(loss, variables), variables)

            strategy.run(replica_step, args=(x,))

        self._step = step

    def step(self, batch: np.ndarray) -> None:
        import tensorflow as tf

        n = self.strategy.num_replicas_in_sync
        x = self.strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(batch[ctx.replica_id_in_sync_group % n])
        )
        self._step(x)


@_MIRRORED_ONLY
@pytest.mark.parametrize("inner", list(INNER), ids=list(INNER))
def test_nan_on_one_replica_skips_step_everywhere(inner):
    run = _Run(_mirrored(), INNER[inner])
    run.step(GOOD_1)  # Slots are non-zero from here, so "unchanged" means something.
    before = _snapshot(run.model, run.optimizer)

    run.step(BAD)

    after = _snapshot(run.model, run.optimizer)
    for old, new in zip(before, after, strict=True):
        for old_copy, new_copy in zip(old, new, strict=True):
            np.testing.assert_array_equal(new_copy, old_copy)
    assert _per_replica_values(run.optimizer.iterations) == [1, 1]
    assert _per_replica_values(run.optimizer.skipped_steps) == [1, 1]

    run.step(GOOD_2)  # A finite step updates again, as if BAD never came.
    assert _per_replica_values(run.optimizer.iterations) == [2, 2]
    assert int(run.optimizer.skipped_steps.numpy()) == 1

    reference = _Run(_mirrored(), INNER[inner], wrap=False)
    reference.step(GOOD_1)
    reference.step(GOOD_2)
    for actual, expected in zip(run.model.weights, reference.model.weights, strict=True):
        assert np.all(np.isfinite(actual.numpy()))
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)


@_MIRRORED_ONLY
@pytest.mark.parametrize(
    "unprotected",
    [INNER["tfopt_adam"],
     # Keras' LossScaleOptimizer checks replica 0's gradients only, before the
     # all-reduce (keras/src/optimizers/loss_scale_optimizer.py, Keras 3.15).
     lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1), initial_scale=1.0)],
    ids=["plain", "keras_loss_scale_optimizer"],
)
def test_unwrapped_optimizer_is_poisoned_by_one_replica(unprotected):
    # The failure the wrapper prevents: the all-reduce spreads replica 1's NaN.
    run = _Run(_mirrored(), unprotected, wrap=False)
    run.step(BAD)
    assert all(np.isnan(c).all() for c in _per_replica_values(run.model.weights[0]))


def test_inf_gradient_is_skipped_on_one_device():
    variable = keras.Variable([1.0, 2.0])
    optimizer = tfopt.SkipNonFinite(tfopt.Adam(0.1))
    optimizer.apply([ops.convert_to_tensor([np.inf, 1.0])], [variable])
    np.testing.assert_array_equal(variable.numpy(), [1.0, 2.0])
    assert (int(optimizer.iterations), int(optimizer.skipped_steps)) == (0, 1)
    optimizer.apply([ops.convert_to_tensor([1.0, 1.0])], [variable])
    assert (int(optimizer.iterations), int(optimizer.skipped_steps)) == (1, 1)
    assert np.all(variable.numpy() < [1.0, 2.0])


def _fit_model(optimizer):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    return model


def _xy(batches):
    x = np.concatenate([b.reshape(-1, 3) for b in batches])
    return x, np.nan_to_num(x) @ TARGET_W


@_MIRRORED_ONLY
def test_fit_logs_skipped_steps_under_mirrored():
    strategy = _mirrored()
    with strategy.scope():
        model = _fit_model(tfopt.get("sgd", learning_rate=0.1, momentum=0.9, skip_nonfinite=True))
    x, y = _xy([GOOD_1, BAD, GOOD_2])  # Global batches of 8: BAD's NaN is in replica 1's half.
    history = model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                        callbacks=[tfopt.SkippedSteps()])  # fmt: skip
    assert history.history["skipped_steps"] == [1, 2]
    assert int(model.optimizer.iterations.numpy()) == 4

    with strategy.scope():
        reference = _fit_model(keras.optimizers.SGD(0.1, momentum=0.9))
    x_good, y_good = _xy([GOOD_1, GOOD_2])
    reference.fit(x_good, y_good, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for actual, expected in zip(model.weights, reference.weights, strict=True):
        np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)


def test_keras_file_round_trip_keeps_state_and_count(tmp_path):
    model = _fit_model(tfopt.SkipNonFinite(tfopt.Adam(0.05)))
    x, y = _xy([GOOD_1, BAD])
    model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)

    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.optimizer, tfopt.SkipNonFinite)
    assert isinstance(loaded.optimizer.inner_optimizer, tfopt.Adam)
    assert (int(loaded.optimizer.iterations), int(loaded.optimizer.skipped_steps)) == (1, 1)
    for a, b in zip(loaded.optimizer.variables, model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x2, y2 = _xy([GOOD_2])
    model.fit(x2, y2, batch_size=8, verbose=0)
    loaded.fit(x2, y2, batch_size=8, verbose=0)
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_get_wraps_and_config_round_trips():
    optimizer = tfopt.get("adam", learning_rate=0.01, skip_nonfinite=True)
    assert isinstance(optimizer, tfopt.SkipNonFinite)
    assert isinstance(optimizer.inner_optimizer, tfopt.Adam)
    assert float(optimizer.learning_rate) == pytest.approx(0.01)
    assert isinstance(tfopt.get("adam", skip_nonfinite=False), tfopt.Adam)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, tfopt.SkipNonFinite)
    assert restored.inner_optimizer.get_config() == optimizer.inner_optimizer.get_config()
    # A wrapper, not an algorithm: the conformance suite over available() must not see it.
    assert "skip_nonfinite" not in tfopt.available()


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("adam",), {}, r"Received: optimizer='adam'"),
        ((tfopt.SGD(0.1),), {"clipnorm": 1.0}, r"takes no `clipnorm`.*Received: clipnorm=1.0"),
    ],
    ids=["not_an_optimizer", "option_for_inner"],
)
def test_bad_arguments_name_the_received_value(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tfopt.SkipNonFinite(*args, **kwargs)


def test_skipped_steps_callback_needs_the_wrapper():
    model = _fit_model(tfopt.Adam(0.01))
    x, y = _xy([GOOD_1])
    with pytest.raises(ValueError, match=r"Received: optimizer=Adam"):
        model.fit(x, y, verbose=0, callbacks=[tfopt.SkippedSteps()])
