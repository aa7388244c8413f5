"""`evaluate_checkpoints`: a side-car evaluator that follows a run's checkpoints from outside its cluster.

Keras 3 has no side-car evaluator; tf-keras had ``SidecarEvaluator``, which the
TensorFlow parameter-server tutorial uses. This is its counterpart for the run
directory `strategies.fit` writes: one process, under TensorFlow's default
strategy, that never starts a server and never joins a collective, so that it
can sit beside a multi-worker or parameter-server job (the ``evaluator`` task
of ``TF_CONFIG``, Vertex AI's fourth worker pool, a JobSet's ``evaluator``
replicated job) and fail or lag without slowing it down.

It waits for checkpoints with ``tf.train.checkpoints_iterator``, as
``SidecarEvaluator`` did. Each new checkpoint is restored into the model
(weights only: the optimizer is not needed) and evaluated once. Unlike
``SidecarEvaluator``, which took only the newest, it evaluates every checkpoint
the run still keeps (``CheckpointManager``'s ``max_to_keep``, 3 for
`strategies.fit`) that it has not evaluated, oldest first: several that land
between two polls, and, after a restart, those written while it was down.
For each it writes:

* TensorBoard scalars ``evaluation_<metric>_vs_iterations`` at the
  checkpoint's global step, under ``model_dir/logs/eval`` (the same names
  ``SidecarEvaluator`` used, beside ``fit``'s own ``logs/train`` and
  ``logs/validation``);
* one JSON line in ``model_dir/eval.jsonl``: ``{"checkpoint": ..., "step": ...,
  "epoch": ..., "metrics": {...}, "time": ...}``. The file is rewritten whole
  and atomically, so a reader sees every line or none of the new one, on
  ``gs://`` too.

A restarted evaluator skips the checkpoints listed in ``eval.jsonl`` and
those at or before the last step recorded there. What it skips otherwise,
exactly: the checkpoints the manager deleted before it got to them (more than
``max_to_keep`` written while it was down or busy). The final checkpoint is
never deleted, so it is always evaluated.

It stops after the final checkpoint: the one at ``final_step`` when given (the
plan's total steps), or the one whose step reaches ``steps`` in the
``summary.json`` that `strategies.fit` writes when the run ends (after its
last checkpoint), whichever comes first; the summary covers a plan the
evaluator computed differently. (A ``summary.json`` left in ``model_dir`` by an
earlier, shorter run ends it at the first checkpoint past that run's last
step: that is a known limit.) When no new checkpoint appears
for ``timeout`` seconds and the run has not finished, it raises `TimeoutError`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from strategies.compat import _keras_compat
from strategies.training import _checkpointing, _data, _run_directory

EVAL_FILE = "eval.jsonl"
EVAL_LOGS_SUBDIR = "eval"
_GLOBAL_STEP_KEY = "global_step/.ATTRIBUTES/VARIABLE_VALUE"
_EPOCH_KEY = "epoch/.ATTRIBUTES/VARIABLE_VALUE"


def evaluate_checkpoints(
    model_fn: Callable[[], keras.Model],
    data: _data.Data,
    model_dir: str | os.PathLike[str],
    *,
    steps: int | None = None,
    final_step: int | None = None,
    timeout: float = 3600.0,
    poll_interval: float = 1.0,
) -> list[dict[str, Any]]:
    """Evaluates each new checkpoint in ``model_dir`` once, until the run's final one.

    Args:
        model_fn: returns a ``keras.Model`` compiled with the loss and metrics
            to report: the same function given to `strategies.fit`.
        data: the evaluation data: a ``tf.data.Dataset`` of batches, or a
            ``dataset_fn(input_context)`` (called once, as one input pipeline).
        model_dir: the run directory `strategies.fit` writes (``checkpoints/``).
        steps: batches per evaluation; None means all of ``data``.
        final_step: the run's last global step (epochs x steps per epoch):
            stop after evaluating the checkpoint at or past it. Either way,
            stop after the checkpoint that ``summary.json`` names as the last.
        timeout: seconds to wait for a new checkpoint before giving up.
        poll_interval: seconds between looks at ``model_dir``.

    Returns:
        The records written to ``eval.jsonl`` by this call, oldest first.

    Raises:
        TimeoutError: no new checkpoint for ``timeout`` seconds and the run
            has not finished.
        ValueError: a bad argument, or a model that is not compiled.

    Example:

    ```python
    if strategies.task_role(config) == "evaluator":
        strategies.evaluate_checkpoints(model_fn, eval_dataset, "/shared/run", final_step=epochs * steps)
    ```
    """
    _check_arguments(model_fn, data, model_dir, steps, final_step, timeout, poll_interval)
    model_dir = os.fspath(model_dir)
    strategy = tf.distribute.get_strategy()  # The default one: no server, no collective.
    dataset = _data.local_dataset(data, strategy)
    model = model_fn()
    if not isinstance(model, keras.Model) or not model.compiled:
        raise ValueError("`model_fn()` must return a compiled keras.Model (its loss and metrics are "
                         f"what is evaluated). Received: {type(model).__name__}.")
    _keras_compat.build_from_spec(model, dataset.element_spec)
    checkpoint = tf.train.Checkpoint(model=model)
    log_path = os.path.join(model_dir, EVAL_FILE)
    records = _read_records(log_path)
    done = {r["checkpoint"] for r in records}
    writer = tf.summary.create_file_writer(os.path.join(model_dir, _run_directory.LOGS_SUBDIR, EVAL_LOGS_SUBDIR))
    new: list[dict[str, Any]] = []
    last_step = max((r["step"] for r in records), default=-1)
    if _finished(model_dir, last_step, final_step):
        return new
    waiting_since = time.monotonic()

    def stop_waiting() -> bool:
        if _finished(model_dir, last_step, final_step):
            return True
        if time.monotonic() - waiting_since >= timeout:
            raise TimeoutError(
                f"No new checkpoint in {os.path.join(model_dir, _checkpointing.CHECKPOINT_SUBDIR)} for "
                f"{timeout:g} s and the run has not finished; check that training is running and "
                f"writes to this model_dir. Received: timeout={timeout:g}."
            )
        return False

    directory = os.path.join(model_dir, _checkpointing.CHECKPOINT_SUBDIR)

    def evaluate(path: str) -> bool:
        """Evaluates and records one checkpoint; returns whether the run's last was reached."""
        nonlocal last_step
        try:
            checkpoint.restore(path).expect_partial()
            step, epoch = _position(path)
        except (tf.errors.NotFoundError, ValueError) as error:
            # CheckpointManager deletes old checkpoints; a slow evaluation can lose one.
            logging.warning("evaluator: skipping %s, which could not be read (%s)", path, error)
            return False
        metrics = {k: float(v) for k, v in model.evaluate(dataset, steps=steps, verbose=0,
                                                          return_dict=True).items()}
        with writer.as_default():
            for name, value in metrics.items():
                tf.summary.scalar(f"evaluation_{name}_vs_iterations", value, step=step)
        writer.flush()
        record = {"checkpoint": path, "step": step, "epoch": epoch, "metrics": metrics, "time": time.time()}
        records.append(record)
        new.append(record)
        done.add(path)
        last_step = max(last_step, step)
        _run_directory.write_atomically(log_path, "".join(json.dumps(r) + "\n" for r in records).encode())
        logging.info("evaluator: step %d (%s): %s", step, os.path.basename(path),
                     ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return _finished(model_dir, last_step, final_step)

    for newest in tf.train.checkpoints_iterator(directory, timeout=poll_interval, timeout_fn=stop_waiting):
        waiting_since = time.monotonic()
        # Every kept one not evaluated yet, oldest first (the newest is among them, unless the
        # state file changed in between).
        pending = _kept_after(directory, last_step, done) or ([newest] if newest not in done else [])
        if any(evaluate(path) for path in pending):  # Stops at the run's last checkpoint.
            break
    writer.close()
    return new


def _kept_after(directory: str, last_step: int, done: set[str]) -> list[str]:
    """The checkpoints the run still keeps, oldest first, past ``last_step`` and not in ``done``."""
    state = tf.train.get_checkpoint_state(directory)
    paths = list(state.all_model_checkpoint_paths) if state is not None else []
    kept = []
    for path in paths:
        if not os.path.isabs(path) and "://" not in path:
            path = os.path.join(directory, path)
        number = path.rpartition("-")[2]  # CheckpointManager numbers them by global step.
        if path not in done and (not number.isdigit() or int(number) > last_step):
            kept.append(path)
    return kept


def _finished(model_dir: str, last_step: int, final_step: int | None) -> bool:
    """Whether the checkpoint at ``last_step`` is the run's last: the plan's, or the summary's."""
    if final_step is not None and last_step >= final_step:
        return True
    path = os.path.join(model_dir, _run_directory.SUMMARY_FILE)
    if last_step < 0 or not tf.io.gfile.exists(path):
        return False
    try:
        with tf.io.gfile.GFile(path) as f:
            return int(json.load(f)["steps"]) <= last_step
    except (ValueError, KeyError, TypeError, tf.errors.OpError):
        return False  # Being replaced, or not ours: wait for the checkpoint to decide.


def _position(path: str) -> tuple[int, int]:
    """``(global step, epoch)`` a checkpoint records."""
    reader = _keras_compat.checkpoint_reader(path)
    epoch = int(reader.get_tensor(_EPOCH_KEY)) if reader.has_tensor(_EPOCH_KEY) else -1
    if reader.has_tensor(_GLOBAL_STEP_KEY):
        return int(reader.get_tensor(_GLOBAL_STEP_KEY)), epoch
    return int(path.rpartition("-")[2]), epoch  # CheckpointManager numbers them by global step.


def _read_records(path: str) -> list[dict[str, Any]]:
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return [json.loads(line) for line in f.read().splitlines() if line.strip()]


def _check_arguments(model_fn: Any, data: Any, model_dir: Any, steps: Any, final_step: Any,
                     timeout: Any, poll_interval: Any) -> None:
    if not callable(model_fn):
        raise ValueError(f"`model_fn` must be a function returning a compiled keras.Model. "
                         f"Received: model_fn={model_fn!r}.")
    _data.check(data, "data")
    if not model_dir or not isinstance(model_dir, (str, os.PathLike)):
        raise ValueError("`model_dir` must be the run directory whose checkpoints to evaluate. "
                         f"Received: model_dir={model_dir!r}.")
    for name, value in (("steps", steps), ("final_step", final_step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"`{name}` must be an integer >= 1 or None. Received: {name}={value!r}.")
    for name, value in (("timeout", timeout), ("poll_interval", poll_interval)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ValueError(f"`{name}` must be a positive number of seconds. Received: {name}={value!r}.")
