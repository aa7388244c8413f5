r"""Trains an image classifier on any strategy: ``python -m launch.train [flags]``.

With no flags it trains a small CNN on the UCI digits, offline, and writes
``model.keras``, ``summary.json``, ``curves.png`` and TensorBoard logs to
``--model_dir``. The same command scales out by flags alone::

    python -m launch.train --strategy=mirrored --virtual_cpus=2 --optimizer=sgd --momentum=0.9
    python -m launch.local_cluster --workers=2 -- python -m launch.train --strategy=multi_worker_mirrored
    python -m launch.train --strategy=tpu --tpu=local --dataset=cifar10 --model=resnet_small

A task whose role is ``evaluator`` (``TF_CONFIG``, Vertex's ``CLUSTER_SPEC``,
JobSet, or ``--task_type=evaluator``) trains nothing: it evaluates each new
checkpoint in ``--model_dir`` once (``eval.jsonl``, ``logs/eval``) and exits
after the run's last one (`strategies.evaluate_checkpoints`).

A user error (a bad flag value or combination, missing data) prints one line,
``launch.train: error: ...``, to stderr and exits with status 2. A SIGTERM
(a preemption notice) saves a checkpoint at a step every worker agrees on,
prints ``launch.train: preempted ...`` and exits with status 143; the same
command then resumes from that step.
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf
from absl import flags, logging

import strategies
from launch import _console, _data, _flags, _job, _models, _optimizers, _outputs, _paths, _schedules
from strategies import cluster as strategies_cluster
from strategies import flags as strategy_flags

_D = _job.Job()  # The flags' defaults are the default job's.

_MODEL = flags.DEFINE_enum("model", _D.model, _models.available(), "Model to train.")
_DATASET = flags.DEFINE_string(
    "dataset", _D.dataset, "TFDS image-classification dataset, e.g. digits (offline), mnist, cifar10."
)
_DATA_DIR = _flags.DATA_DIR  # Shared with launch.device_check (launch/_flags.py).
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", _D.batch_size, "Global batch size (all replicas together).", lower_bound=1
)
_OPTIMIZER = flags.DEFINE_string(
    "optimizer", _D.optimizer, f"A tfopt or Keras optimizer: {', '.join(_optimizers.available())}."
)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", _D.learning_rate, "Peak learning rate.", lower_bound=0.0)
_MOMENTUM = flags.DEFINE_float("momentum", None, "Momentum (sgd and kin). Unset: the optimizer's default.")
_BETA_1 = flags.DEFINE_float("beta_1", None, "Adam-style beta_1. Unset: the optimizer's default.")
_BETA_2 = flags.DEFINE_float("beta_2", None, "Adam-style beta_2. Unset: the optimizer's default.")
_EPSILON = flags.DEFINE_float("epsilon", None, "Numerical epsilon. Unset: the optimizer's default.")
_WEIGHT_DECAY = flags.DEFINE_float(
    "weight_decay", None, "Weight decay. Unset: the optimizer's default.", lower_bound=0.0
)
_GLOBAL_CLIPNORM = flags.DEFINE_float("global_clipnorm", None, "Clip gradients to this global norm (> 0).")
# Keras accepts a negative norm or decay silently; they are typos, not choices.
flags.register_validator(
    "global_clipnorm", lambda v: v is None or v > 0, "--global_clipnorm must be > 0 when set"
)
_LR_SCHEDULE = flags.DEFINE_enum(
    "lr_schedule", _D.lr_schedule, list(_schedules.SCHEDULES), "Learning-rate schedule over the whole run."
)
_WARMUP_STEPS = flags.DEFINE_integer(
    "warmup_steps", _D.warmup_steps, "Linear warm-up steps (lr_schedule=warmup_cosine only).", lower_bound=0
)
# --epochs and --steps_per_epoch are shared with launch.bench.fit, --data_dir with
# launch.device_check (launch/_flags.py).
_flags.declare_key_flags(__name__, _flags.EPOCHS, _flags.STEPS_PER_EPOCH, _flags.DATA_DIR)
flags.adopt_module_key_flags(strategy_flags)
_STEPS_PER_EXECUTION = flags.DEFINE_integer(
    "steps_per_execution", _D.steps_per_execution, "Steps per tf.function call (raise it on TPUs).", lower_bound=1
)
_CHECKPOINT_EVERY_STEPS = flags.DEFINE_integer(
    "checkpoint_every_steps", None,
    "Also checkpoint every N steps, mid-epoch, so that a killed run loses at most N steps. "
    "Unset: at epoch ends only.", lower_bound=1,
)  # fmt: skip
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Output and checkpoint directory; a run restarted with the same one resumes. "
    "Default: a new runs/<dataset>-<model>-<time> (one per cluster: -cluster-<hash>).",
)  # fmt: skip
_SEED = flags.DEFINE_integer(
    "seed", _D.seed, "Seeds weights, shuffling and dropout.", lower_bound=0, upper_bound=_job.MAX_SEED
)

_DETERMINISTIC = flags.DEFINE_boolean(
    "deterministic", False, "tf.config.experimental.enable_op_determinism(): the same run, op for op, "
    "on GPUs too (CPU kernels here are deterministic already). Costs speed; see docs/reliability.md.",
)

_EVALUATOR_TIMEOUT = flags.DEFINE_float(
    "evaluator_timeout", 3600.0, "Evaluator task only: seconds to wait for a new checkpoint in "
    "--model_dir before giving up (the run's last checkpoint ends it sooner).", lower_bound=1.0,
)  # fmt: skip

strategy_flags.register_number_validators(sys.modules[__name__])
strategy_flags.register_number_validators(_flags)

PROG = "launch.train"


def job_from_flags() -> _job.Job:
    """The `Job` the parsed flags describe."""
    values = {f.name: flags.FLAGS[f.name].value for f in dataclasses.fields(_job.Job)}
    values["epochs"] = _flags.value_or(_flags.EPOCHS, _D.epochs)  # Shared flag: unset is None.
    return _job.Job(**values)


def _check_model_dir(model_dir: str) -> None:
    """--model_dir must be, or be creatable as, a writable directory (local paths only)."""
    reason = _paths.unwritable_reason(model_dir)
    if reason is not None:
        raise _console.UsageError(
            f"--model_dir must be a writable directory; {reason}. Received: model_dir={model_dir!r}."
        )


def _check_model_dir_is_shared(model_dir: str | None, strategy: tf.distribute.Strategy) -> None:
    """On a multi-host TPU slice, --model_dir (and its local default) must be shared storage."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        reason = _paths.local_model_dir_on_slice_reason(model_dir, strategy.extended.num_hosts)
        if reason is not None:
            raise _console.UsageError(f"--model_dir must be shared storage on a multi-host TPU slice: {reason}")


def train() -> dict[str, Any]:
    """Runs the job the flags describe; returns its summary ({} on a server task)."""
    config = strategy_flags.config_from_flags()
    if strategies.task_role(config) == "evaluator":
        # A side-car evaluator: follows --model_dir's checkpoints, joins no cluster.
        records = _job.evaluate(job_from_flags(), timeout=_EVALUATOR_TIMEOUT.value)
        last = records[-1] if records else None
        print(f"{PROG}: evaluator done: {len(records)} checkpoint(s) evaluated"
              + (f", the last at step {last['step']}: {last['metrics']}" if last else "") + ".")
        return {}
    if strategies.is_server_task(config):
        # A parameter-server worker/ps runs no Python training code of its own.
        strategies.serve_forever(config)
        return {}
    job = job_from_flags()
    try:
        _optimizers.check_name(job.optimizer)
    except ValueError as e:
        raise _console.UsageError(str(e)) from None
    if job.model_dir:
        _check_model_dir(job.model_dir)
    # Files only: fails fast, before any cluster wait, for data that is
    # neither local nor downloadable.
    _data.check_available(job.dataset, job.data_dir)
    if _DETERMINISTIC.value:
        tf.config.experimental.enable_op_determinism()
    strategy = strategies.build(config)  # First TF call: it may split the CPU.
    _check_model_dir_is_shared(job.model_dir, strategy)
    summary = _job.run(job, strategy)
    if strategy.extended.should_checkpoint:
        model_dir = summary["model_dir"]
        accuracy = summary["eval"].get("accuracy")
        print(
            f"{PROG}: eval accuracy {accuracy if accuracy is None else round(accuracy, 4)} after "
            f"{summary['train_seconds']:.1f} s of training. Wrote {model_dir}/: summary.json, "
            f"{_outputs.PLOT_FILE}, model.keras, TensorBoard logs (tensorboard --logdir {model_dir}/logs)."
        )
    return summary


_OUR_CODE = tuple(os.path.dirname(m.__file__) + os.sep for m in (strategies, _job))


def _project_info_only(record: std_logging.LogRecord) -> bool:
    # Warnings and errors from everywhere, INFO only from this project: TFDS
    # and TF's checkpointing log every file they touch at INFO.
    return record.levelno >= std_logging.WARNING or record.pathname.startswith(_OUR_CODE)


def main(argv: Sequence[str]) -> None:
    """absl entry point: runs :func:`train`, turning user errors into exit status 2."""
    logging.get_absl_handler().python_handler.addFilter(_project_info_only)
    tf.get_logger().addFilter(_project_info_only)  # TF's logger may print through its own handler.
    _console.check_no_positional(PROG, argv)
    try:
        train()
    except (strategies.StrategyError, _data.DataError, _console.UsageError, flags.Error,
            strategies.CheckpointMismatchError, strategies.CheckpointWriteError,
            strategies.KerasCompatError) as e:  # The last: a Keras/TF version no workaround was verified on.
        _console.fail(PROG, str(e))
    except strategies.Preempted as e:
        # Not an error: the checkpoint is saved; 143 tells a scheduler to restart the job.
        print(f"{PROG}: {e}", file=sys.stderr)
        sys.exit(_console.EXIT_PREEMPTED)
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError) as e:
        # A hung or dead peer, or leader (docs/reliability.md). Exit 1, not 2: a restart
        # (local_cluster --max_restarts) resumes from the newest checkpoint.
        lost = strategies_cluster.lost_tasks(e.message)
        if lost:
            what = f"{', '.join(lost)} of the cluster: no heartbeat for --heartbeat_timeout seconds"
        elif strategies_cluster.leader_unreachable(e.message):
            what = ("the cluster's leader (the chief, else worker 0: it runs the coordination service): "
                    "its heartbeat went unanswered for --heartbeat_timeout seconds")
        else:
            raise
        print(f"{PROG}: error: lost {what} (hung or dead); this step failed. Restart the job to resume "
              "from the newest checkpoint.", file=sys.stderr)
        sys.exit(_console.EXIT_FAILED)
    except tf.errors.DataLossError as e:  # A record file that streams in corrupt, mid-training.
        _console.fail(PROG,
            f"corrupt data in --data_dir={_DATA_DIR.value or _data.default_data_dir()} for "
            f"--dataset={_DATASET.value}: {e.message.splitlines()[0]}; delete and prepare it again."
        )
    except PermissionError as e:
        _console.fail(PROG, f"cannot write {e.filename!r}: {e.strerror}; choose another --model_dir.")
    except TimeoutError as e:  # The evaluator saw no new checkpoint for --evaluator_timeout.
        print(f"{PROG}: error: {_console.one_line(e)} (--evaluator_timeout={_EVALUATOR_TIMEOUT.value:g})",
              file=sys.stderr)
        sys.exit(_console.EXIT_FAILED)


def run(argv: list[str] | None = None, main_fn: Callable[[Sequence[str]], None] = main) -> None:
    """Console-script entry point (``tfopt-train``)."""
    _console.run(main_fn, PROG, __name__, argv)


if __name__ == "__main__":
    run()
