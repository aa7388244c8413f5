"""MirroredStrategy over two logical CPUs trains exactly as one device does.

For every optimizer in tfopt.available() (with its default fused path): the
same model, data and global batches, 3 epochs of model.fit, the same weights.
tests/conftest.py splits the CPU into two logical devices before TF starts.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.tfopt import cases, mirrored

pytestmark = pytest.mark.tensorflow_only("tf.distribute.MirroredStrategy is TensorFlow's")

EPOCHS = 3
GLOBAL_BATCH = 8


def _fit(strategy, name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2 * GLOBAL_BATCH, 3)).astype("float32")
    y = (np.tanh(x @ np.array([[1.0], [-2.0], [0.5]])) + 0.1).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
        )
        model.compile(optimizer=cases.make(name), loss="mse")
    initial = model.get_weights()
    model.fit(data, epochs=EPOCHS, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2 * EPOCHS
    return initial, model.get_weights()


@pytest.mark.parametrize("name", cases.params("mirrored"))
def test_mirrored_matches_one_device(name):
    initial, on_two = _fit(mirrored.two_cpus(), name)
    initial_one, on_one = _fit(tf.distribute.OneDeviceStrategy("CPU:0"), name)
    for w0, w0_one, w2, w1 in zip(initial, initial_one, on_two, on_one, strict=True):
        np.testing.assert_array_equal(w0, w0_one)
        assert not np.allclose(w1, w0), "training did not move the weights"
        np.testing.assert_allclose(w2, w1, rtol=1e-5, atol=1e-6)
