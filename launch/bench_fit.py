r"""What `strategies.fit` costs over plain ``model.fit``: ``python -m launch.bench_fit``.

Each comparison trains the same model on the same data twice in one process,
once through a baseline and once through a candidate, alternating the two for
``--repeats`` rounds so that both see the same machine load. Throughput is
steps/s over the epochs after the first (the first traces the step function),
measured by the same callback on both sides; the reported figure is the median
over rounds, and ``ratio`` is candidate/baseline (1.0 = no cost; the target
for `strategies.fit` is >= 0.97).

Built-in comparisons (the model of the default job: a 64-128-10 MLP, Adam
1e-3, batches of 32, data in memory):

* ``one_device``: ``model.fit`` vs ``strategies.fit`` under OneDeviceStrategy;
* ``mirrored_1_replica``: the same under a one-replica MirroredStrategy.

More comparisons plug in with `register` (``launch.train`` adds its default
digits job against a plain Keras loop this way, see `register`'s example)::

    python -m launch.bench_fit --repeats=5 --output=runs/bench_fit.json
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import strategies  # noqa: E402
from strategies import _keras_compat  # noqa: E402

Trainer = Callable[[keras.callbacks.Callback], None]
"""Trains once, calling the given timing callback's epoch hooks."""

_COMPARISONS: dict[str, Callable[[int, int], tuple[Trainer, Trainer]]] = {}


def register(name: str) -> Callable[[Callable[[int, int], tuple[Trainer, Trainer]]],
                                    Callable[[int, int], tuple[Trainer, Trainer]]]:
    """Adds a comparison: ``make(steps, epochs) -> (baseline, candidate)`` trainers.

    Example (what launch.train's digits comparison looks like):

    ```python
    @bench_fit.register("digits_default")
    def digits(steps, epochs):
        def plain_keras(timer):   # the plain script of the issue: arrays, model.fit
            model = build_mlp(); model.fit(x, y, batch_size=32, epochs=epochs,
                                           callbacks=[timer], verbose=0)
        def ours(timer):          # the default launch.train job, same model and data
            run_default_job(epochs=epochs, callbacks=[timer])
        return plain_keras, ours
    ```
    """
    def decorator(make: Callable[[int, int], tuple[Trainer, Trainer]]):
        if name in _COMPARISONS:
            raise ValueError(f"A comparison named {name!r} is already registered.")
        _COMPARISONS[name] = make
        return make

    return decorator


class EpochTimer(keras.callbacks.Callback):
    """Steps/s of every epoch, the train steps only (validation excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps_per_second: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._start, self._end, self._steps = time.perf_counter(), None, 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._steps, self._end = batch + 1, time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if self._end is not None:
            self.steps_per_second.append(self._steps / (self._end - self._start))


def mlp(optimizer: str = "adam") -> keras.Model:
    """The default job's model: 64 inputs, 128 hidden ReLU units, 10 classes."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3) if optimizer == "adam" else optimizer,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def mlp_data(steps: int, batch_size: int = 32) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch_size, 64)).astype(np.float32)
    y = rng.integers(0, 10, size=(steps * batch_size,)).astype(np.int64)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache()


def _fit_pair(make_strategy: Callable[[], tf.distribute.Strategy]):
    def make(steps: int, epochs: int) -> tuple[Trainer, Trainer]:
        data = mlp_data(steps)

        def plain(timer: keras.callbacks.Callback) -> None:
            with make_strategy().scope():
                model = mlp()
            model.fit(data, epochs=epochs, callbacks=[timer], verbose=0)

        def ours(timer: keras.callbacks.Callback) -> None:
            strategies.fit(mlp, data, strategy=make_strategy(), epochs=epochs,
                           callbacks=[timer], verbose=0)

        return plain, ours

    return make


register("one_device")(_fit_pair(lambda: tf.distribute.OneDeviceStrategy("CPU:0")))
register("mirrored_1_replica")(_fit_pair(
    lambda: _keras_compat.mirrored_strategy(["CPU:0"])))


def measure(name: str, *, steps: int, epochs: int, repeats: int) -> dict[str, Any]:
    """Runs one comparison; returns medians, every round's figures and the ratio."""
    baseline, candidate = _COMPARISONS[name](steps, epochs)
    rounds: dict[str, list[float]] = {"baseline": [], "candidate": []}
    for round_index in range(repeats):
        # Alternate who goes first, so neither always gets the warmer machine.
        order = [("baseline", baseline), ("candidate", candidate)]
        for side, train in order if round_index % 2 == 0 else order[::-1]:
            timer = EpochTimer()
            train(timer)
            rounds[side].append(statistics.median(timer.steps_per_second[1:]
                                                  or timer.steps_per_second))
    base, cand = statistics.median(rounds["baseline"]), statistics.median(rounds["candidate"])
    return {"baseline_steps_per_second": base, "candidate_steps_per_second": cand,
            "ratio": cand / base, "rounds": rounds}


_NAMES = flags.DEFINE_list("comparisons", None,
                           "Comparisons to run (default: all registered).")
_STEPS = flags.DEFINE_integer("steps", 200, "Steps per epoch.")
_EPOCHS = flags.DEFINE_integer("epochs", 4, "Epochs per run; the first is not timed.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Alternating baseline/candidate rounds.")
_OUTPUT = flags.DEFINE_string("output", "runs/bench_fit.json", "Where the JSON goes.")


def main(argv: Sequence[str]) -> None:
    del argv
    names = _NAMES.value or list(_COMPARISONS)
    unknown = sorted(set(names) - set(_COMPARISONS))
    if unknown:
        raise app.UsageError(f"--comparisons must name registered comparisons "
                             f"{sorted(_COMPARISONS)}. Received: {unknown}.")
    results = {}
    for name in names:
        results[name] = measure(name, steps=_STEPS.value, epochs=_EPOCHS.value,
                                repeats=_REPEATS.value)
        r = results[name]
        print(f"{name:>22}: baseline {r['baseline_steps_per_second']:7.1f} steps/s, "
              f"strategies.fit {r['candidate_steps_per_second']:7.1f} steps/s, "
              f"ratio {r['ratio']:.3f}", flush=True)
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "gpus": len(tf.config.list_physical_devices("GPU"))},
              "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
              "settings": {"steps": _STEPS.value, "epochs": _EPOCHS.value,
                           "repeats": _REPEATS.value},
              "results": results}
    os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
    with open(_OUTPUT.value, "w") as f:
        json.dump(report, f, indent=2)
    print(f"Wrote {_OUTPUT.value}")


if __name__ == "__main__":
    app.run(main)
