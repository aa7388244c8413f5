r"""Trains an image classifier on any strategy: ``python -m launch.train [flags]``.

With no flags it trains a small CNN on the UCI digits, offline, and writes
``model.keras``, ``summary.json``, ``curves.png`` and TensorBoard logs to
``--model_dir``. The same command scales out by flags alone::

    python -m launch.train --strategy=mirrored --virtual_cpus=2 --optimizer=sgd --momentum=0.9
    python -m launch.local_cluster --workers=2 -- python -m launch.train --strategy=multi_worker_mirrored
    python -m launch.train --strategy=tpu --tpu=local --dataset=cifar10 --model=resnet_small

A user error (a bad flag value or combination, missing data) prints one line,
``launch.train: error: ...``, to stderr and exits with status 2.
"""

from __future__ import annotations

import os

# Keep TF's C++ INFO/WARNING chatter out of the user's terminal unless asked.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hashlib  # noqa: E402
import json  # noqa: E402
import logging as std_logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from typing import Any, NoReturn  # noqa: E402

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import strategies  # noqa: E402
from launch import _data, _models, _optimizers, _outputs, _schedules  # noqa: E402
from strategies import flags as strategy_flags  # noqa: E402

_MODEL = flags.DEFINE_enum("model", "cnn", _models.available(), "Model to train.")
_DATASET = flags.DEFINE_string(
    "dataset", "digits", "TFDS image-classification dataset, e.g. digits (offline), mnist, cifar10."
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data directory. Default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Global batch size (all replicas together).", lower_bound=1)
_OPTIMIZER = flags.DEFINE_string(
    "optimizer", "adam", f"A tfopt or Keras optimizer: {', '.join(_optimizers.available())}."
)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 3e-3, "Peak learning rate.", lower_bound=0.0)
_MOMENTUM = flags.DEFINE_float("momentum", None, "Momentum (sgd and kin). Unset: the optimizer's default.")
_BETA_1 = flags.DEFINE_float("beta_1", None, "Adam-style beta_1. Unset: the optimizer's default.")
_BETA_2 = flags.DEFINE_float("beta_2", None, "Adam-style beta_2. Unset: the optimizer's default.")
_EPSILON = flags.DEFINE_float("epsilon", None, "Numerical epsilon. Unset: the optimizer's default.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", None, "Decoupled weight decay. Unset: none.")
_GLOBAL_CLIPNORM = flags.DEFINE_float("global_clipnorm", None, "Clip gradients to this global norm.")
_LR_SCHEDULE = flags.DEFINE_enum(
    "lr_schedule", "cosine", list(_schedules.SCHEDULES), "Learning-rate schedule over the whole run."
)
_WARMUP_STEPS = flags.DEFINE_integer(
    "warmup_steps", 0, "Linear warm-up steps (lr_schedule=warmup_cosine only).", lower_bound=0
)
_EPOCHS = flags.DEFINE_integer("epochs", 15, "Epochs to train.", lower_bound=1)
_STEPS_PER_EPOCH = flags.DEFINE_integer(
    "steps_per_epoch", None, "Steps per epoch. Unset: one pass over the train split.", lower_bound=1
)
_STEPS_PER_EXECUTION = flags.DEFINE_integer(
    "steps_per_execution", 1, "Steps per tf.function call (raise it on TPUs).", lower_bound=1
)
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Output and checkpoint directory; a run restarted with the same one resumes. "
    "Default: a new runs/<dataset>-<model>-<time> (one per cluster: -cluster-<hash>).",
)  # fmt: skip
_SEED = flags.DEFINE_integer("seed", 0, "Seeds weights, shuffling and dropout.")

PROG = "launch.train"
_METRICS = ("accuracy", "loss")


class UsageError(ValueError):
    """A flag value that cannot work, found after flag parsing."""


def _fail(message: str) -> NoReturn:
    # One line, whatever the exception's formatting: scripts grep for it.
    print(f"{PROG}: error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(2)


def _hyperparameters(learning_rate: Any) -> dict[str, Any]:
    return {
        "learning_rate": learning_rate,
        "momentum": _MOMENTUM.value,
        "beta_1": _BETA_1.value,
        "beta_2": _BETA_2.value,
        "epsilon": _EPSILON.value,
        "weight_decay": _WEIGHT_DECAY.value,
        "global_clipnorm": _GLOBAL_CLIPNORM.value,
    }


def _compile(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        steps_per_execution=_STEPS_PER_EXECUTION.value,
    )


class _Timer(keras.callbacks.Callback):
    """Training time without the per-epoch evaluation."""

    def on_train_begin(self, logs=None):
        self.start, self.eval_seconds, self.seconds = time.perf_counter(), 0.0, 0.0

    def on_test_begin(self, logs=None):
        self._test_start = time.perf_counter()

    def on_test_end(self, logs=None):
        self.eval_seconds += time.perf_counter() - self._test_start

    def on_train_end(self, logs=None):
        self.seconds = time.perf_counter() - self.start - self.eval_seconds


def default_model_dir(strategy: tf.distribute.Strategy, dataset: str, model: str) -> str:
    """``runs/<dataset>-<model>-<suffix>``: a new directory per run, one per cluster.

    A single process gets a timestamp. The processes of a cluster (workers, or
    the hosts of a TPU pod) each compute the default themselves, so they derive
    it from what they share, the cluster spec, instead of their clocks. Pass
    ``--model_dir`` to resume a run.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if sum(len(tasks) for tasks in spec.values()) > 1:
        digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
        suffix = f"cluster-{digest}"
    else:
        suffix = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{dataset}-{model}-{suffix}")


def train() -> dict[str, Any]:
    """Runs the job the flags describe; returns its summary ({} on a server task)."""
    config = strategy_flags.config_from_flags()
    if strategies.is_server_task(config):
        # A parameter-server worker/ps runs no Python training code of its own.
        strategies.serve_forever(config)
        return {}
    _optimizers.check_name(_OPTIMIZER.value)
    data_dir = _DATA_DIR.value or _data.default_data_dir()
    # Files only: fails fast, before any cluster wait, for data that is
    # neither local nor downloadable.
    _data.check_available(_DATASET.value, data_dir)

    strategy = strategies.build(config)  # First TF call: it may split the CPU.
    data = _data.prepare(_DATASET.value, data_dir)
    model_dir = _MODEL_DIR.value or default_model_dir(strategy, data.name, _MODEL.value)
    steps = _STEPS_PER_EPOCH.value or _data.steps_per_epoch(
        data, "train", _BATCH_SIZE.value, drop_remainder=_data.drops_remainder(strategy)
    )
    # Per-host pipelines repeat, so that every worker runs the same number of steps.
    repeat = _STEPS_PER_EPOCH.value is not None or _data.uses_input_fn(strategy)
    inputs = dict(global_batch_size=_BATCH_SIZE.value, strategy=strategy, seed=_SEED.value)
    train_input = _data.make_input(data, "train", training=True, repeat=repeat, **inputs)
    eval_input = _data.make_input(data, "test", training=False, **inputs)
    try:
        lr = _schedules.build_schedule(
            _LR_SCHEDULE.value, _LEARNING_RATE.value, steps * _EPOCHS.value, _WARMUP_STEPS.value
        )
        _models.check_args(_MODEL.value, data.input_shape, data.num_classes)
        # Built once here so that a bad value is reported as a user error now,
        # not from inside the training loop; model_fn builds the real one.
        optimizer_config = _optimizers.make(_OPTIMIZER.value, _hyperparameters(lr)).get_config()
    except ValueError as e:
        raise UsageError(str(e)) from None

    def model_fn() -> keras.Model:
        model = _models.build_model(_MODEL.value, data.input_shape, data.num_classes)
        _compile(model, _optimizers.make(_OPTIMIZER.value, _hyperparameters(lr)))
        return model

    keras.utils.set_random_seed(_SEED.value)
    timer = _Timer()
    history = strategies.fit(
        model_fn,
        train_input,
        strategy=strategy,
        epochs=_EPOCHS.value,
        # A finite dataset ends each epoch by itself, which also lets its cache
        # complete; stopping it one step short would discard the cache.
        steps_per_epoch=steps if repeat else None,
        validation_data=eval_input,
        callbacks=[timer],
        model_dir=model_dir,
        steps_per_execution=_STEPS_PER_EXECUTION.value,
    )
    summary = _summarize(strategy, data, history, optimizer_config, timer, steps, model_dir)
    if strategy.extended.should_checkpoint:  # Only the chief writes.
        paths = [
            _outputs.write_summary(model_dir, summary),
            _outputs.plot_curves(
                model_dir, history.history, f"{data.name} / {_MODEL.value} / {_OPTIMIZER.value}"
            ),
        ]
        accuracy = summary["eval"].get("accuracy")
        print(
            f"{PROG}: eval accuracy {accuracy if accuracy is None else round(accuracy, 4)} "
            f"after {summary['train_seconds']:.1f} s of training. Wrote {paths[0]}, {paths[1]}, "
            f"{os.path.join(model_dir, 'model.keras')} and TensorBoard logs "
            f"(tensorboard --logdir {os.path.join(model_dir, 'logs')})."
        )
    return summary


def _summarize(
    strategy: tf.distribute.Strategy,
    data: _data.ImageDataset,
    history: keras.callbacks.History,
    optimizer_config: dict[str, Any],
    timer: _Timer,
    steps_per_epoch: int,
    model_dir: str,
) -> dict[str, Any]:
    logs = history.history
    last = {k: v[-1] for k, v in logs.items() if v}
    epochs_run = len(history.epoch)
    if _STEPS_PER_EPOCH.value is None and not _data.uses_input_fn(strategy):
        examples = epochs_run * data.num_examples["train"]  # The last batch of each epoch is partial.
    else:
        examples = epochs_run * steps_per_epoch * _BATCH_SIZE.value
    seconds = timer.seconds
    return {
        "strategy": strategies.describe(strategy),
        "num_replicas": strategy.num_replicas_in_sync,
        "dataset": {
            "name": data.name,
            "data_dir": data.data_dir,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
            "num_examples": data.num_examples,
        },
        "model": {"name": _MODEL.value, "params": history.model.count_params()},
        "optimizer": {"name": _OPTIMIZER.value, "config": optimizer_config},
        "lr_schedule": _LR_SCHEDULE.value,
        "mixed_precision": keras.mixed_precision.global_policy().name,
        "batch_size": _BATCH_SIZE.value,
        "epochs": _EPOCHS.value,
        "steps_per_epoch": steps_per_epoch,
        "steps": int(history.model.optimizer.iterations.numpy()),
        "seed": _SEED.value,
        "train_seconds": seconds,
        "examples_per_second": examples / seconds if seconds > 0 else None,
        "train": {k: last[k] for k in _METRICS if k in last},
        "eval": {k: last[f"val_{k}"] for k in _METRICS if f"val_{k}" in last},
        "history": logs,
        "model_dir": model_dir,
    }


def _quiet_tfds(record: std_logging.LogRecord) -> bool:
    # TFDS logs every metadata file and reader it opens at INFO; keep its
    # warnings and errors, drop the rest from the launcher's output.
    return record.levelno >= std_logging.WARNING or "tensorflow_datasets" not in record.pathname


def main(argv: Sequence[str]) -> None:
    """absl entry point: runs :func:`train`, turning user errors into exit status 2."""
    logging.get_absl_logger().addFilter(_quiet_tfds)
    if len(argv) > 1:
        _fail(f"unexpected positional arguments {list(argv[1:])}; every option is a --flag.")
    try:
        train()
    except (strategies.StrategyError, _data.DataError, UsageError, flags.Error) as e:
        _fail(str(e))
    except tf.errors.DataLossError as e:  # A truncated or corrupt record file.
        _fail(f"corrupt data, delete it and prepare it again: {e.message.splitlines()[0]}")
    except PermissionError as e:
        _fail(f"cannot write {e.filename!r}: {e.strerror}; choose another --model_dir.")


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e))


def run(argv: list[str] | None = None, main_fn: Callable[[Sequence[str]], None] = main) -> None:
    """Console-script entry point (``tfopt-train``)."""
    app.run(main_fn, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
