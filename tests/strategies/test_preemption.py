"""SIGTERM in one process: strategies.fit checkpoints at the next step end, raises Preempted, resumes.

The multi-worker agreement (every worker stops at the same step) is proven on
real processes in tests/launch/test_fault_tolerance.py.
"""

from __future__ import annotations

import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

import strategies
from strategies.training import _checkpointing
from strategies.training._preemption import Preempted

STEPS, EPOCHS = 6, 2


class _SigtermAt(keras.callbacks.Callback):
    """Sends this process a real SIGTERM at the end of one global step."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step, self.seen = step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def _model_fn() -> keras.Model:
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    return model


def _data() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4 * STEPS, 3)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, x @ [[1.0], [2.0], [-1.0]])).batch(4)


def _fit(model_dir, callbacks=()):
    return strategies.fit(_model_fn, _data(), strategy=tf.distribute.get_strategy(), epochs=EPOCHS,
                          model_dir=model_dir, callbacks=list(callbacks), verbose=0)  # fmt: skip


@pytest.mark.fault
def test_sigterm_checkpoints_at_the_next_step_and_resumes_there(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as caught:
        _fit(tmp_path, [_SigtermAt(STEPS + 2)])  # Mid-way through epoch 2.
    assert caught.value.step == STEPS + 2
    assert caught.value.checkpoint.endswith(f"ckpt-{STEPS + 2}")
    assert signal.getsignal(signal.SIGTERM) is not before  # Kept: the process is exiting.
    signal.signal(signal.SIGTERM, before)

    model = _model_fn()
    model.optimizer.build(model.trainable_variables)
    state = _checkpointing.Checkpointer(model, tf.distribute.get_strategy(), tmp_path).restore()
    assert (state.epoch, state.step_in_epoch, state.global_step) == (1, 2, STEPS + 2)

    history = _fit(tmp_path)  # Resumes at epoch 2, step 2, and finishes.
    assert int(history.model.optimizer.iterations.numpy()) == STEPS * EPOCHS
    uninterrupted = _fit(tmp_path / "again").model
    for got, want in zip(history.model.get_weights(), uninterrupted.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_without_preemption_sigterm_keeps_its_handler(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    _fit(tmp_path)
    assert signal.getsignal(signal.SIGTERM) is before
