"""A small training program under a real file-size limit: ``python _write_error_program.py DIR EPOCHS LIMIT WHEN``.

``LIMIT`` bytes (0: none) becomes ``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored, so
a write past it fails with ``EFBIG`` ("File too large"), as on a full quota.
``WHEN`` is ``start`` (before training) or ``train_end`` (after the last
checkpoint, before ``model.keras``). The run's user-facing error is one line,
as launch.train prints it.
"""

from __future__ import annotations

import os
import resource
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import strategies  # noqa: E402


def limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


class _LimitAtTrainEnd(keras.callbacks.Callback):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def on_train_end(self, logs=None):
        limit_file_size(self._limit)


def model_fn() -> keras.Model:
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def main(model_dir: str, epochs: int, limit: int, when: str) -> None:
    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensor_slices(
        (rng.normal(size=(32, 32)).astype(np.float32), rng.integers(0, 10, 32))).batch(8).repeat()
    callbacks = []
    if limit and when == "start":
        limit_file_size(limit)
    elif limit:
        callbacks.append(_LimitAtTrainEnd(limit))
    history = strategies.fit(model_fn, data, strategy=tf.distribute.OneDeviceStrategy("CPU:0"),
                             epochs=epochs, steps_per_epoch=2, model_dir=model_dir, verbose=2,
                             callbacks=callbacks)
    print(f"steps {int(history.model.optimizer.iterations.numpy())}")


if __name__ == "__main__":
    try:
        main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    except strategies.CheckpointWriteError as e:
        print(f"_write_error_program: error: {e}", file=sys.stderr)
        sys.exit(2)
