"""Trains every tfopt optimizer on one device and under ``keras.distribution.DataParallel``.

Run by test_data_parallel.py in a fresh process (the JAX backend, and the
host split into 2 devices, must be chosen before JAX starts)::

    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax \\
        python -m tests.tfopt.data_parallel_run OUT.npz [CELL ...]

A cell is ``optimizer/option``: every name in ``tfopt.available()`` and the
wrappers (``SkipNonFinite``, Keras' ``LossScaleOptimizer`` around a tfopt
optimizer), crossed with the options of the TensorFlow equivalence matrix
(tests/strategies/equivalence_cells.py) that change where a rule sits
relative to the reduction: clipping, weight decay, gradient accumulation,
EMA and ``steps_per_execution``. Each cell trains the same MLP from the same
weights on 3 epochs of 3 global batches of 8, once on one device and once
with ``DataParallel`` over the 2 devices (each device gets 4 examples of
each batch). The file holds ``{cell}/start|one|dp/{i}`` per weight, and
``{cell}/error`` (the exception text) where training raised.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

import tfopt

GLOBAL_BATCH = 8
BATCHES = 3
EPOCHS = 3
LEARNING_RATE = 0.05

# Option -> (optimizer kwargs, compile kwargs): equivalence_cells.OPTIONS, the
# same values, written here so that this process imports no TensorFlow.
OPTIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "plain": ({}, {}),
    "clipnorm": ({"clipnorm": 0.05}, {}),
    "clipvalue": ({"clipvalue": 0.01}, {}),
    "global_clipnorm": ({"global_clipnorm": 0.1}, {}),
    "weight_decay": ({"weight_decay": 0.1}, {}),
    "accumulate2": ({"gradient_accumulation_steps": 2}, {}),
    "ema": ({"use_ema": True, "ema_momentum": 0.5, "ema_overwrite_frequency": 2}, {}),
    "steps_per_execution3": ({}, {"steps_per_execution": 3}),
}

Factory = Callable[[dict[str, Any]], keras.optimizers.Optimizer]


def _tfopt(name: str) -> Factory:
    if name == "lookahead":  # Options go to the inner optimizer.
        return lambda kw: tfopt.Lookahead(tfopt.SGD(LEARNING_RATE, momentum=0.9, **kw))
    return lambda kw: tfopt.get(name, learning_rate=LEARNING_RATE, **kw)


def optimizers() -> dict[str, Factory]:
    """Every registered tfopt name, and the wrappers around tfopt's Adam."""
    found = {f"tfopt.{name}": _tfopt(name) for name in tfopt.available()}
    found["SkipNonFinite(tfopt.adam)"] = lambda kw: tfopt.SkipNonFinite(
        tfopt.Adam(LEARNING_RATE, **kw))
    found["LossScaleOptimizer(tfopt.adam)"] = lambda kw: keras.optimizers.LossScaleOptimizer(
        tfopt.Adam(LEARNING_RATE, **kw))
    return found


def cells() -> list[str]:
    return [f"{name}/{option}" for name in optimizers() for option in OPTIONS]


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCHES * GLOBAL_BATCH, 3)).astype("float32")
    y = np.stack([np.tanh(x @ rng.normal(size=3)), np.sin(x @ rng.normal(size=3))], 1)
    return x, y.astype("float32")


def _model(seed: int) -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(2)])  # fmt: skip
    rng = np.random.default_rng(seed)
    # Nonzero biases: a zero weight has a zero trust ratio norm in LARS/LAMB.
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])  # fmt: skip
    return model


def _train(cell: str, seed: int) -> list[np.ndarray]:
    name, option = cell.split("/")
    optimizer_kwargs, compile_kwargs = OPTIONS[option]
    model = _model(seed)
    model.compile(optimizer=optimizers()[name](dict(optimizer_kwargs)), loss="mse",
                  **compile_kwargs)  # fmt: skip
    x, y = _data()
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    if option == "ema":  # What a user saves at the end: the averaged weights.
        model.optimizer.finalize_variable_values(model.trainable_variables)
    return [np.asarray(w) for w in model.get_weights()]


def main(out: str, selected: list[str]) -> None:
    import jax

    devices = jax.devices()
    assert len(devices) == 2, f"need 2 host devices (XLA_FLAGS), found {devices}"
    data_parallel = keras.distribution.DataParallel(devices=devices)
    results: dict[str, np.ndarray] = {}
    for seed, cell in enumerate(cells()):
        if selected and cell not in selected:
            continue
        try:
            results.update({f"{cell}/start/{i}": w for i, w in enumerate(_model(seed).get_weights())})
            results.update({f"{cell}/one/{i}": w for i, w in enumerate(_train(cell, seed))})
            with data_parallel.scope():
                results.update({f"{cell}/dp/{i}": w for i, w in enumerate(_train(cell, seed))})
                # The batch really was split: the inputs' layout spans both devices.
                layout = data_parallel.get_data_layout((GLOBAL_BATCH, 3))
                results[f"{cell}/data_devices"] = np.array(len(layout.device_mesh.devices.flat))
        except Exception:  # Reported per cell, in the file.
            results[f"{cell}/error"] = np.array(traceback.format_exc(limit=-4))
        np.savez(out, **results)  # After every cell: a long run killed keeps what it measured.


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main(sys.argv[1], sys.argv[2:])
