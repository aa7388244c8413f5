"""One training job, without flags: `Job` holds its options, `run` trains it.

`launch.train` turns its flags into a `Job`; benchmarks and tests build one
directly. `run` composes the parts, each chosen by a field: a TFDS dataset
(`_data`) batched for the strategy (`_input`), a model (`_models`), an
optimizer (`_optimizers`) with a schedule (`_schedules`), `strategies.fit`
under the given strategy, then the outputs (`_outputs`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

import strategies
from launch import _console, _data, _input, _models, _optimizers, _outputs, _schedules

METRICS = ("accuracy", "loss")
# NumPy seeds its generator with an unsigned 32-bit integer (keras.utils.set_random_seed).
MAX_SEED = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class Job:
    """The options of one run; the defaults are the default job (``make train``).

    The default, a small CNN with Adam and a cosine schedule for 15 epochs,
    reaches 0.98-0.99 test accuracy on the digits in a few seconds of CPU.
    ``None`` hyperparameters keep the optimizer's own defaults. See
    ``python -m launch.train --helpfull`` for each field (same names).
    """

    model: str = "cnn"
    dataset: str = "digits"
    data_dir: str | None = None
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float = 3e-3
    momentum: float | None = None
    beta_1: float | None = None
    beta_2: float | None = None
    epsilon: float | None = None
    weight_decay: float | None = None
    global_clipnorm: float | None = None
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    epochs: int = 15
    steps_per_epoch: int | None = None
    steps_per_execution: int = 1
    checkpoint_every_steps: int | None = None
    model_dir: str | None = None
    seed: int = 0

    def hyperparameters(self, learning_rate: Any) -> dict[str, Any]:
        """The optimizer arguments, with ``learning_rate`` (a float or schedule)."""
        values = {k: getattr(self, k) for k in _optimizers.HYPERPARAMETERS}
        return {**values, "learning_rate": learning_rate}


class _Timer(keras.callbacks.Callback):
    """Training wall time, without the per-epoch evaluation."""

    seconds = 0.0

    def on_train_begin(self, logs: Any = None) -> None:
        self._start, self._eval_seconds = time.perf_counter(), 0.0

    def on_test_begin(self, logs: Any = None) -> None:
        self._test_start = time.perf_counter()

    def on_test_end(self, logs: Any = None) -> None:
        self._eval_seconds += time.perf_counter() - self._test_start

    def on_train_end(self, logs: Any = None) -> None:
        self.seconds = time.perf_counter() - self._start - self._eval_seconds


def default_model_dir(strategy: tf.distribute.Strategy, dataset: str, model: str) -> str:
    """``runs/<dataset>-<model>-<suffix>``: a new directory per run, one per cluster.

    A single process gets a timestamp. The processes of a cluster (workers, or
    the hosts of a TPU pod) each compute the default themselves, so they derive
    it from what they share, the cluster spec, instead of their clocks. Pass
    ``model_dir`` to resume a run.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if sum(len(tasks) for tasks in spec.values()) > 1:
        digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
        suffix = f"cluster-{digest}"
    else:
        suffix = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{dataset}-{model}-{suffix}")


def run(
    job: Job,
    strategy: tf.distribute.Strategy,
    *,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: int | str = "auto",
) -> dict[str, Any]:
    """Trains ``job`` under ``strategy``; the chief writes and returns the summary.

    Build ``strategy`` first (``strategies.build``): it may have to split the
    CPU before anything else initializes TensorFlow.

    Raises:
      UsageError: an option that cannot work with this data or strategy.
      _data.DataError: data that cannot be found, prepared or batched.
    """
    try:
        # Before any data is prepared, so that a bad value is one line, not one
        # line after a dataset's preparation output (the schedule comes later:
        # its checks need the number of steps).
        _optimizers.make(job.optimizer, job.hyperparameters(job.learning_rate))
    except ValueError as e:
        raise _console.UsageError(str(e)) from None
    data = _data.prepare(job.dataset, job.data_dir)
    model_dir = job.model_dir or default_model_dir(strategy, data.name, job.model)
    steps = job.steps_per_epoch or _input.steps_per_epoch(
        data, "train", job.batch_size, drop_remainder=_input.drops_remainder(strategy)
    )
    # First: tf.data's shuffle seeds combine with TF's global seed.
    keras.utils.set_random_seed(job.seed)
    inputs = dict(global_batch_size=job.batch_size, strategy=strategy, seed=job.seed)
    # Endless, each epoch's order a function of (seed, epoch): see _input.epoch_stream.
    train_input = _input.make_input(data, "train", training=True, **inputs)
    eval_input = _input.make_input(data, "test", training=False, **inputs)
    try:
        lr = _schedules.build_schedule(job.lr_schedule, job.learning_rate, steps * job.epochs, job.warmup_steps)
        _models.check_args(job.model, data.input_shape, data.num_classes)
        # Built once here so that a bad value is reported as a user error now,
        # not from inside the training loop; model_fn builds the real one.
        optimizer_config = _optimizers.make(job.optimizer, job.hyperparameters(lr)).get_config()
    except ValueError as e:
        raise _console.UsageError(str(e)) from None

    model_fn = _model_fn(job, data, lr)
    keras.utils.set_random_seed(job.seed)
    # Seeded too, and saved in checkpoints (strategies.training._resume), for code that draws from it.
    tf.random.set_global_generator(tf.random.Generator.from_seed(job.seed))
    timer = _Timer()
    history = strategies.fit(
        model_fn,
        train_input,
        strategy=strategy,
        epochs=job.epochs,
        steps_per_epoch=steps,
        validation_data=eval_input,
        callbacks=[timer, *callbacks],
        model_dir=model_dir,
        steps_per_execution=job.steps_per_execution,
        checkpoint_every_steps=job.checkpoint_every_steps,
        verbose=verbose,
    )
    summary = _summarize(job, strategy, data, history, optimizer_config, timer.seconds, steps, model_dir)
    if strategy.extended.should_checkpoint:  # Only the chief writes.
        _outputs.write_summary(model_dir, summary)
        title = f"{data.name} / {job.model} / {job.optimizer}"
        _outputs.plot_curves(model_dir, history.history, title)
    return summary


def _model_fn(job: Job, data: _data.ImageDataset, lr: Any) -> Callable[[], keras.Model]:
    """The job's one model function: `strategies.fit` and the evaluator build the same model."""

    def model_fn() -> keras.Model:
        model = _models.build_model(job.model, data.input_shape, data.num_classes)
        model.compile(
            optimizer=_optimizers.make(job.optimizer, job.hyperparameters(lr)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            steps_per_execution=job.steps_per_execution,
        )
        return model

    return model_fn


def evaluate(job: Job, *, timeout: float) -> list[dict[str, Any]]:
    """The side-car evaluator's share of ``job``: evaluates each checkpoint in ``job.model_dir`` once.

    Runs under TensorFlow's default strategy, on the test split with the
    job's batch size, and stops after the checkpoint at the job's last step
    (``epochs`` x steps per epoch, as the training tasks compute it), or when
    ``summary.json`` says the run is over (`strategies.evaluate_checkpoints`).

    Raises:
      UsageError: no ``model_dir``: the evaluator cannot guess the cluster's.
    """
    if not job.model_dir:
        raise _console.UsageError(
            "--model_dir is required for the evaluator task: it evaluates the checkpoints the training "
            "tasks write there; give them all the same --model_dir. Received: model_dir=None."
        )
    data = _data.prepare(job.dataset, job.data_dir)
    strategy = tf.distribute.get_strategy()
    steps = job.steps_per_epoch or _input.steps_per_epoch(
        data, "train", job.batch_size, drop_remainder=_input.drops_remainder(strategy))
    eval_input = _input.make_input(data, "test", training=False, global_batch_size=job.batch_size,
                                   strategy=strategy, seed=job.seed)
    lr = _schedules.build_schedule(job.lr_schedule, job.learning_rate, steps * job.epochs, job.warmup_steps)
    return strategies.evaluate_checkpoints(_model_fn(job, data, lr), eval_input, job.model_dir,
                                           final_step=steps * job.epochs, timeout=timeout)


def _summarize(
    job: Job,
    strategy: tf.distribute.Strategy,
    data: _data.ImageDataset,
    history: keras.callbacks.History,
    optimizer_config: dict[str, Any],
    seconds: float,
    steps_per_epoch: int,
    model_dir: str,
) -> dict[str, Any]:
    logs = history.history
    last = {k: v[-1] for k, v in logs.items() if v}
    # Throughput counts the epochs this process ran, not those before a restart.
    epochs_run = len(history.epoch) - getattr(history, "epochs_before_restart", 0)
    if job.steps_per_epoch is None and not _input.uses_input_fn(strategy):
        examples = epochs_run * data.num_examples["train"]  # Each epoch's last batch is partial.
    else:
        examples = epochs_run * steps_per_epoch * job.batch_size
    return {
        "strategy": strategies.describe(strategy),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "num_replicas": strategy.num_replicas_in_sync,
        "dataset": {
            "name": data.name,
            "data_dir": data.data_dir,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
            "num_examples": data.num_examples,
        },
        "model": {"name": job.model, "params": history.model.count_params()},
        "optimizer": {"name": job.optimizer, "config": optimizer_config},
        "lr_schedule": job.lr_schedule,
        "mixed_precision": keras.mixed_precision.global_policy().name,
        "batch_size": job.batch_size,
        "epochs": job.epochs,
        "steps_per_epoch": steps_per_epoch,
        "steps": int(history.model.optimizer.iterations.numpy()),
        "seed": job.seed,
        "train_seconds": seconds,
        "examples_per_second": examples / seconds if seconds > 0 else None,
        "train": {k: last[k] for k in METRICS if k in last},
        "eval": {k: last[f"val_{k}"] for k in METRICS if f"val_{k}" in last},
        "history": logs,
        "model_dir": model_dir,
    }
