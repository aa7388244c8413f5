"""TensorFlow's global tf.random.Generator across a resume: restored, or refused, never dropped.

A resumed run once logged ``Value in checkpoint could not be found in the
restored object: (root).resume.tf_random_generator._state``. Nothing was
dropped: the checkpoint is restored in two parts, model and optimizer first
(``assert_existing_objects_matched``), then `_resume.ResumeState`, and TF
logged the second part's values when the first part's status was collected.
These tests pin that explanation: the resumed generator holds the saved
state, and no such warning is logged. The one real drop (the checkpoint holds
a generator, the resuming program made none) is refused in one sentence.
"""

from __future__ import annotations

import gc
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.ops import stateful_random_ops  # The global generator slot (tests only).

import strategies


def _model_fn() -> keras.Model:
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    return model


def _data() -> tf.data.Dataset:
    x = np.arange(32, dtype="float32").reshape(8, 4) / 32
    return tf.data.Dataset.from_tensor_slices((x, x[:, :2])).batch(4)


def _fit(model_dir, epochs: int) -> None:
    strategies.fit(_model_fn, _data(), strategy=tf.distribute.OneDeviceStrategy("/cpu:0"),
                   epochs=epochs, model_dir=str(model_dir), verbose=0)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def tf_warnings():
    handler = _Records()
    tf.get_logger().addHandler(handler)
    yield handler.messages
    tf.get_logger().removeHandler(handler)


@pytest.fixture
def global_generator():
    saved = stateful_random_ops.global_generator
    yield
    stateful_random_ops.global_generator = saved


def test_the_generator_is_restored_and_nothing_is_reported_missing(tmp_path, tf_warnings, global_generator):
    tf.random.set_global_generator(tf.random.Generator.from_seed(5))
    tf.random.get_global_generator().normal([3])  # Moves it away from its seeded state.
    _fit(tmp_path, epochs=1)
    saved_state = tf.random.get_global_generator().state.numpy().copy()

    tf.random.set_global_generator(tf.random.Generator.from_seed(5))  # A restarted program.
    assert not np.array_equal(tf.random.get_global_generator().state.numpy(), saved_state)
    _fit(tmp_path, epochs=2)
    gc.collect()  # TF logs unrestored values when a restore status is collected.
    np.testing.assert_array_equal(tf.random.get_global_generator().state.numpy(), saved_state)
    assert not [m for m in tf_warnings if "could not be found" in m], tf_warnings


def test_a_checkpoint_with_a_generator_is_refused_by_a_program_without_one(tmp_path, global_generator):
    tf.random.set_global_generator(tf.random.Generator.from_seed(5))
    _fit(tmp_path, epochs=1)
    stateful_random_ops.global_generator = None  # A program that makes no global generator.
    with pytest.raises(strategies.CheckpointMismatchError, match="tf.random.Generator") as raised:
        _fit(tmp_path, epochs=2)
    assert "set_global_generator" in str(raised.value) and "\n" not in str(raised.value)
