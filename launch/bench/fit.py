r"""What `strategies.fit` costs over plain ``model.fit``: ``python -m launch.bench.fit``.

Each comparison trains the same model on the same data twice in one process,
once through a baseline and once through a candidate, alternating the two for
``--repeats`` rounds so that both see the same machine load. Throughput is
steps/s over the epochs after the first (the first traces the step function),
measured by the same callback on both sides. ``ratio`` is candidate/baseline
of the median timed epoch, ``best_ratio`` of the fastest one (the least
disturbed by other processes on a shared machine); 1.0 = no cost, and the
target for `strategies.fit` is >= 0.97. ``cpu_ratio`` compares the
process's CPU seconds per step the same way (baseline/candidate), the figure
to trust on a machine shared with other jobs.

Built-in comparisons (the model of the default job: a 64-128-10 MLP, Adam
1e-3, batches of 32, data in memory):

* ``one_device``: ``model.fit`` vs ``strategies.fit`` under OneDeviceStrategy;
* ``mirrored_1_replica``: the same under a one-replica MirroredStrategy;
* ``mirrored_2_replicas``: the same under MirroredStrategy over 2 logical
  CPUs (the CPU is split before TensorFlow starts), where stock ``model.fit``
  is also correct for this optimizer (Adam, no clipping, accumulation or EMA).
  Here `strategies.fit` takes its own update path (all-reduce first, then each
  optimizer's own rule replica-locally, see docs/equivalence.md), so this is
  the comparison that prices that path.

More comparisons plug in with `register` (``launch.train`` adds its default
digits job against a plain Keras loop this way, see `register`'s example)::

    python -m launch.bench.fit --repeats=5 --output=runs/bench_fit.json
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import flags

import strategies
from launch import _console, _flags, _paths, _provenance

PROG = "launch.bench.fit"

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
    """Steps/s of every epoch, the train steps only (validation excluded).

    Also the process's CPU seconds per step (every thread, this process only),
    which other processes on a shared machine disturb far less than wall time.
    """

    def __init__(self) -> None:
        super().__init__()
        self.steps_per_second: list[float] = []
        self.cpu_seconds_per_step: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._start, self._end, self._steps = time.perf_counter(), None, 0
        self._cpu_start = self._cpu_end = time.process_time()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._steps, self._end = batch + 1, time.perf_counter()
        self._cpu_end = time.process_time()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if self._end is not None:
            self.steps_per_second.append(self._steps / (self._end - self._start))
            self.cpu_seconds_per_step.append((self._cpu_end - self._cpu_start) / self._steps)


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
    lambda: strategies.mirrored_strategy(["CPU:0"])))
register("mirrored_2_replicas")(_fit_pair(
    lambda: strategies.mirrored_strategy(strategies.split_cpu(2))))


# ---------------------------------------------------------------------------
# launch.train's default job vs the plain Keras script (owned by the
# launch.train side). Both train the default job's model, optimizer, schedule,
# batch size and epochs on the same digits arrays; the plain side is
# `model.fit(x, y)` with nothing else. `digits_default` compares train-step
# throughput (epochs 2+); `digits_default_wall` compares wall time from model
# building to the end of training, where our side also reads the data through
# TFDS, evaluates every epoch, checkpoints, logs TensorBoard and writes its
# outputs. They ignore --steps and --epochs: they run the default job as is,
# under what `--strategy=auto` picks here (TF's default strategy on one
# device), or (`..._one_device`) pinned with OneDeviceStrategy, to show why
# auto does not pick that on one device.
def _digits_default_pair(end_to_end: bool, strategy_name: str = "auto"
                         ) -> Callable[[int, int], tuple[Trainer, Trainer]]:
    def make(steps: int, epochs: int) -> tuple[Trainer, Trainer]:
        import shutil
        import tempfile

        from launch import _data, _input, _job, _models, _optimizers, _schedules

        del steps, epochs
        job = _job.Job(data_dir=tempfile.mkdtemp(prefix="bench_digits_"))
        data = _data.prepare(job.dataset, job.data_dir)
        x, y = data.read_arrays("train")
        steps_per_epoch = _input.steps_per_epoch(data, "train", job.batch_size, drop_remainder=False)
        strategy = strategies.build(strategy_name)

        def timed(timer: keras.callbacks.Callback, train: Callable[[list], None]) -> None:
            if not end_to_end:
                train([timer])
                return
            timer.on_epoch_begin(0)  # One "epoch" spanning the whole run.
            train([])
            timer.on_train_batch_end(job.epochs * steps_per_epoch - 1)
            timer.on_epoch_end(0)

        def plain_keras(timer: keras.callbacks.Callback) -> None:
            def train(callbacks: list) -> None:
                keras.utils.set_random_seed(job.seed)
                model = _models.build_model(job.model, data.input_shape, data.num_classes)
                lr = _schedules.build_schedule(job.lr_schedule, job.learning_rate,
                                               job.epochs * steps_per_epoch)
                model.compile(optimizer=_optimizers.make(job.optimizer, job.hyperparameters(lr)),
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                              metrics=["accuracy"])
                model.fit(x, y, batch_size=job.batch_size, epochs=job.epochs,
                          callbacks=callbacks, verbose=0)

            timed(timer, train)

        def launch_train(timer: keras.callbacks.Callback) -> None:
            model_dir = tempfile.mkdtemp(prefix="bench_run_")
            try:
                timed(timer, lambda callbacks: _job.run(
                    dataclasses.replace(job, model_dir=model_dir), strategy,
                    callbacks=callbacks, verbose=0))
            finally:
                shutil.rmtree(model_dir, ignore_errors=True)

        return plain_keras, launch_train

    return make


register("digits_default")(_digits_default_pair(end_to_end=False))
register("digits_default_wall")(_digits_default_pair(end_to_end=True))
register("digits_default_wall_one_device")(_digits_default_pair(end_to_end=True, strategy_name="one_device"))


def measure(name: str, *, steps: int, epochs: int, repeats: int) -> dict[str, Any]:
    """Runs one comparison; returns medians, every round's figures and the ratio."""
    baseline, candidate = _COMPARISONS[name](steps, epochs)
    epochs_seen: dict[str, list[float]] = {"baseline": [], "candidate": []}
    cpu_seen: dict[str, list[float]] = {"baseline": [], "candidate": []}
    for round_index in range(repeats):
        # Alternate who goes first, so neither always gets the warmer machine.
        order = [("baseline", baseline), ("candidate", candidate)]
        for side, train in order if round_index % 2 == 0 else order[::-1]:
            timer = EpochTimer()
            train(timer)
            epochs_seen[side].extend(timer.steps_per_second[1:] or timer.steps_per_second)
            cpu_seen[side].extend(timer.cpu_seconds_per_step[1:] or timer.cpu_seconds_per_step)
    median = {side: statistics.median(v) for side, v in epochs_seen.items()}
    # On a shared machine other processes only ever slow an epoch down, so the
    # fastest epoch is the least disturbed estimate of each side's own speed.
    best = {side: max(v) for side, v in epochs_seen.items()}
    return {"baseline_steps_per_second": median["baseline"],
            "candidate_steps_per_second": median["candidate"],
            "ratio": median["candidate"] / median["baseline"],
            "best_ratio": best["candidate"] / best["baseline"],
            "best_steps_per_second": best, "epochs": epochs_seen,
            # CPU seconds per step, baseline over candidate: > 1 means the candidate does less work.
            "cpu_ratio": statistics.median(cpu_seen["baseline"])
            / statistics.median(cpu_seen["candidate"]),
            "cpu_seconds_per_step": cpu_seen}


_NAMES = flags.DEFINE_list("comparisons", None,
                           "Comparisons to run (default: all registered).")
# --epochs and --steps_per_epoch are shared with launch.train (launch/_flags.py).
_flags.declare_key_flags(__name__, _flags.EPOCHS, _flags.STEPS_PER_EPOCH)
_DEFAULT_STEPS_PER_EPOCH, _DEFAULT_EPOCHS = 200, 4
_REPEATS = flags.DEFINE_integer("repeats", 5, "Alternating baseline/candidate rounds.")
_OUTPUT = flags.DEFINE_string("output", "runs/bench_fit.json", "Where the JSON goes.")


def main(argv: Sequence[str]) -> None:
    _console.check_no_positional(PROG, argv)
    names = _NAMES.value or list(_COMPARISONS)
    unknown = sorted(set(names) - set(_COMPARISONS))
    if unknown:
        _console.fail(PROG, f"--comparisons must name registered comparisons "
                            f"{sorted(_COMPARISONS)}. Received: {unknown}.")
    strategies.split_cpu(2)  # Before TensorFlow starts; one-device comparisons use CPU:0 only.
    steps = _flags.value_or(_flags.STEPS_PER_EPOCH, _DEFAULT_STEPS_PER_EPOCH)
    epochs = _flags.value_or(_flags.EPOCHS, _DEFAULT_EPOCHS)
    results = {}
    for name in names:
        results[name] = measure(name, steps=steps, epochs=epochs,
                                repeats=_REPEATS.value)
        r = results[name]
        print(f"{name:>22}: median steps/s baseline {r['baseline_steps_per_second']:7.1f}, "
              f"strategies.fit {r['candidate_steps_per_second']:7.1f}, ratio {r['ratio']:.3f}; "
              f"best-epoch ratio {r['best_ratio']:.3f}; CPU-time ratio {r['cpu_ratio']:.3f}",
              flush=True)
    report = {"machine": _provenance.machine(gpus=len(tf.config.list_physical_devices("GPU"))),
              "settings": {"steps": steps, "epochs": epochs,
                           "repeats": _REPEATS.value},
              "results": results}
    # A gs:// (any scheme://) --output is written through tf.io.gfile, as given.
    print(f"Wrote {_paths.write_text(_OUTPUT.value, json.dumps(report, indent=2))}")


def run() -> None:
    """Entry point of ``python -m launch.bench.fit``."""
    _console.run(main, PROG, __name__)


if __name__ == "__main__":
    run()
