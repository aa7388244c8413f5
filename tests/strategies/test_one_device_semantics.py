"""The optimizers an instance patch once broke keep their own rule under Mirrored.

Issue 10's table, one test per row (Nadam, LARS and LAMB with weight decay, a
LossScaleOptimizer with a non-finite gradient on replica 1 only), plus a
user's own Optimizer subclass: one that overrides ``update_step`` and
``_backend_update_step`` and calls ``super()`` trains like one device; one
that distributes by hand is refused before training. The same rows under a
2-process MultiWorkerMirrored cluster are cells of test_equivalence.py.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import strategies
import tfopt
from strategies.compat import _keras_compat

GLOBAL_BATCH = 16
BATCHES = 3
EPOCHS = 3


def _one_device():
    return tf.distribute.OneDeviceStrategy("CPU:0")


def _mirrored():
    return _keras_compat.mirrored_strategy(["CPU:0", "CPU:1"])


def _dataset(poison: bool = False) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * BATCHES, 4)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=(4, 2))).astype(np.float32)
    if poison:
        # Example 12 of the second global batch: replica 1's half of it (rows 8..15).
        x[GLOBAL_BATCH + 12, 0] = np.inf
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)


def _fit(strategy, optimizer_fn, poison: bool = False, **kwargs) -> keras.Model:
    def model_fn() -> keras.Model:
        keras.utils.set_random_seed(11)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                                  keras.layers.Dense(2)])
        model.compile(optimizer=optimizer_fn(), loss="mse")
        return model

    return strategies.fit(model_fn, _dataset(poison), strategy=strategy, epochs=EPOCHS,
                          verbose=0, **kwargs).model


def _assert_equal_to_one_device(optimizer_fn, poison: bool = False) -> tuple[keras.Model, ...]:
    reference = _fit(_one_device(), optimizer_fn, poison)
    mirrored = _fit(_mirrored(), optimizer_fn, poison)
    assert all(np.isfinite(w).all() for w in reference.get_weights())
    for expected, got in zip(reference.get_weights(), mirrored.get_weights(), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)
    # Slots, counters and the loss scale too, not only the weights.
    for expected, got in zip(reference.optimizer.variables, mirrored.optimizer.variables,
                             strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5,
                                   err_msg=expected.path)
    return reference, mirrored


TABLE = [
    pytest.param(lambda: keras.optimizers.Nadam(0.01), id="nadam"),
    pytest.param(lambda: tfopt.LARS(0.1, weight_decay=1e-2), id="lars-weight_decay"),
    pytest.param(lambda: tfopt.LAMB(0.01, weight_decay=0.1), id="lamb-weight_decay"),
]


@pytest.mark.parametrize("optimizer_fn", TABLE)
def test_own_rule_survives_mirrored(optimizer_fn):
    _assert_equal_to_one_device(optimizer_fn)


LOSS_SCALED = [
    pytest.param(lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(0.01)),
                 id="loss_scale"),
    pytest.param(lambda: tfopt.SkipNonFinite(keras.optimizers.Adam(0.01)), id="skip_nonfinite"),
    pytest.param(lambda: keras.optimizers.LossScaleOptimizer(
        tfopt.SkipNonFinite(keras.optimizers.Adam(0.01))), id="loss_scale-skip_nonfinite"),
    pytest.param(lambda: tfopt.SkipNonFinite(keras.optimizers.LossScaleOptimizer(
        keras.optimizers.Adam(0.01))), id="skip_nonfinite-loss_scale"),
]


@pytest.mark.parametrize("optimizer_fn", LOSS_SCALED)
def test_a_non_finite_gradient_on_one_replica_skips_the_step_everywhere(optimizer_fn):
    reference, mirrored = _assert_equal_to_one_device(optimizer_fn, poison=True)
    # One skipped step per epoch: the inner optimizer counts the others, as on one device.
    assert int(mirrored.optimizer.iterations.numpy()) == EPOCHS * (BATCHES - 1)
    if isinstance(mirrored.optimizer, keras.optimizers.LossScaleOptimizer):
        # Halved once per epoch, as on one device. (An outer SkipNonFinite
        # skips the step before the scale sees it, on one device too.)
        assert float(mirrored.optimizer.dynamic_scale.numpy()) == 2.0 ** (15 - EPOCHS)


class CountingSGD(keras.optimizers.Optimizer):
    """A user's optimizer: plain SGD that also counts its steps in `_backend_update_step`."""

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.updates = self.add_variable((), dtype="float32", name="updates")

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        self.assign_add(self.updates, 1.0)
        super()._backend_update_step(grads, trainable_variables, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        lr = keras.ops.cast(learning_rate, variable.dtype)
        self.assign_sub(variable, lr * keras.ops.cast(gradient, variable.dtype))


class HandDistributedSGD(CountingSGD):
    """A user's optimizer that copies TFOptimizer's own all-reduce and merge_call."""

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        variables = [v.value for v in trainable_variables]
        pairs = self._all_reduce_sum_gradients(list(zip(grads, variables, strict=True)))
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_tf_update_step, self._distribution_strategy, pairs, learning_rate)


def test_user_subclass_calling_super_trains_like_one_device():
    reference, mirrored = _assert_equal_to_one_device(
        lambda: CountingSGD(learning_rate=0.1, global_clipnorm=0.5))
    assert float(mirrored.optimizer.updates.numpy()) == EPOCHS * BATCHES


def test_user_subclass_that_distributes_by_hand_is_refused():
    with pytest.raises(_keras_compat.UnsupportedOptimizerError) as error:
        _fit(_mirrored(), lambda: HandDistributedSGD(learning_rate=0.1))
    message = str(error.value)
    assert "HandDistributedSGD._backend_update_step" in message
    assert "keras-team/keras#20582" in message
    assert message.count(". ") == 0  # One sentence.
    # Keras' own order stays available, and one device needs no synchronization.
    per_replica = _fit(_mirrored(), lambda: HandDistributedSGD(learning_rate=0.1),
                       clip_gradients="per_replica")
    reference = _fit(_one_device(), lambda: HandDistributedSGD(learning_rate=0.1))
    for expected, got in zip(reference.get_weights(), per_replica.get_weights(), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5)
