"""Everything `strategies.fit` reads from and writes to ``model_dir``, in one place.

`open_run_directory` returns a `RunDirectory` for a ``model_dir`` and a
`NoRunDirectory` for None, with one interface, so that ``fit`` asks no
question about ``model_dir``:

* `start`: where training starts: the newest checkpoint's position
  (normalized, checked against the plan), or the beginning;
* `leading_callbacks` and `trailing_callbacks`: around the user's callbacks,
  the metric restore of a resumed epoch first; TensorBoard logs, the history
  recorder and the checkpoints last, so that an epoch-end checkpoint holds that
  epoch's logs;
* `watching_preemption`: a SIGTERM checkpoints and raises `Preempted`;
* `finish`: the history of the epochs before a restart, ``model.keras`` and
  ``summary.json``.

Paths go through ``os.path.join`` and ``tf.io.gfile``, so a ``gs://`` or
``ram://`` ``model_dir`` stays one. Under several workers only the chief
writes logs, the model and the summary; every worker takes part in saving
checkpoints (`strategies.training._checkpointing`).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from strategies.compat import _keras_compat
from strategies.training import _checkpointing, _plan, _preemption, _resume, _roles

SUMMARY_FILE = "summary.json"
LOGS_SUBDIR = "logs"


class NoRunDirectory:
    """``model_dir=None``: nothing is read or written, and SIGTERM keeps its default."""

    start = _plan.TrainingState()

    def leading_callbacks(self) -> list[keras.callbacks.Callback]:
        return []

    def trailing_callbacks(self, position: _plan.RunPosition) -> list[keras.callbacks.Callback]:
        return []

    def watching_preemption(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def finish(self, history: keras.callbacks.History, train_seconds: float) -> None:
        _resume.prepend_saved_history(history, None, self.start.epoch)


class RunDirectory(NoRunDirectory):
    """One run's ``model_dir``: restores from it on creation, writes to it while and after training.

    Args:
        model_dir: local, or a ``scheme://`` path ``tf.io.gfile`` knows.
        model: compiled, in ``strategy``'s scope.
        strategy: the run's strategy.
        spec: one batch's ``element_spec``: restoring needs every variable built.
        resume: continue from the newest checkpoint, if any.
        epochs, per_epoch: the plan, for the start's normalization and check.
        every_steps: also checkpoint whenever this many more steps are done.
        verbose: print the "Resuming from" line too (it is always logged).
    """

    def __init__(self, model_dir: str | os.PathLike[str], model: keras.Model,
                 strategy: tf.distribute.Strategy, spec: Any, *, resume: bool, epochs: int,
                 per_epoch: int | None, every_steps: int | None, verbose: int) -> None:
        self.path = os.fspath(model_dir)
        self.model, self.strategy, self.every_steps = model, strategy, every_steps
        tf.io.gfile.makedirs(self.path)
        _build_variables(model, spec)
        self.checkpointer = _checkpointing.Checkpointer(model, strategy, self.path)
        restored = self.checkpointer.restore() if resume else None
        self.resumed = restored is not None
        self.start = restored.normalized(per_epoch) if restored else _plan.TrainingState()
        _plan.check_start(self.start, epochs, per_epoch)
        if self.resumed:
            # Epochs count from 1 here, as in Keras' "Epoch 2/3".
            message = (f"Resuming from {self.checkpointer.latest()} at epoch {self.start.epoch + 1}, "
                       f"step {self.start.step_in_epoch}.")
            logging.info(message)
            if verbose:
                print(message, flush=True)
        self.recorder: _resume.HistoryRecorder | None = None  # Made with the callbacks.
        self.preemption = _preemption.PreemptionWatcher(strategy)

    def leading_callbacks(self) -> list[keras.callbacks.Callback]:
        if not (self.resumed and self.start.step_in_epoch):
            return []
        # The resumed epoch's metrics, put back after Keras resets them (strategies.training._resume).
        return [_resume.RestoreEpochMetrics(self.checkpointer.resume_state, self.checkpointer.latest(),
                                            self.start.epoch)]

    def trailing_callbacks(self, position: _plan.RunPosition) -> list[keras.callbacks.Callback]:
        logs = []
        if _roles.is_chief(self.strategy):
            logs.append(keras.callbacks.TensorBoard(os.path.join(self.path, LOGS_SUBDIR),
                                                    write_graph=False, profile_batch=0))
        self.recorder = _resume.HistoryRecorder(self.checkpointer.resume_state)
        checkpoints = _checkpointing.CheckpointCallback(
            self.checkpointer, position, every_steps=self.every_steps, preemption=self.preemption)
        return [*logs, self.recorder, checkpoints]

    def watching_preemption(self) -> contextlib.AbstractContextManager[Any]:
        return self.preemption

    def finish(self, history: keras.callbacks.History, train_seconds: float) -> None:
        _resume.prepend_saved_history(history, self.recorder, self.start.epoch)
        _checkpointing.save_model(self.model, self.strategy, self.path)
        if _roles.is_chief(self.strategy):
            write_summary(self.path, self.model, self.strategy, history, train_seconds)


def open_run_directory(model_dir: str | os.PathLike[str] | None, model: keras.Model,
                       strategy: tf.distribute.Strategy, spec: Any, **options: Any) -> NoRunDirectory:
    """A `RunDirectory` for ``model_dir`` (see its arguments), or a `NoRunDirectory` for None."""
    if model_dir is None:
        return NoRunDirectory()
    return RunDirectory(model_dir, model, strategy, spec, **options)


def _build_variables(model: keras.Model, spec: Any) -> None:
    # The compiled metrics too: their state is checkpointed (strategies.training._resume).
    if not model.built or not _resume.metrics_built(model):
        _keras_compat.build_from_spec(model, spec)
    elif not model.optimizer.built:
        with model.distribute_strategy.scope():
            model.optimizer.build(model.trainable_variables)


def write_summary(model_dir: str, model: keras.Model, strategy: tf.distribute.Strategy,
                  history: keras.callbacks.History, train_seconds: float) -> None:
    """``summary.json``: what ran and its last epoch's metrics (launch.train adds more)."""
    last = {k: v[-1] for k, v in history.history.items() if v}
    optimizer = model.optimizer
    summary = {
        "strategy": type(strategy).__name__,
        "num_replicas": strategy.num_replicas_in_sync,
        "optimizer": {"name": type(optimizer).__name__,
                      "config": json.loads(json.dumps(optimizer.get_config(), default=str))},
        "epochs": len(history.epoch) and history.epoch[-1] + 1,
        "epochs_run": len(history.epoch) - getattr(history, "epochs_before_restart", 0),
        "steps": int(keras.ops.convert_to_numpy(optimizer.iterations)),
        "train_seconds": train_seconds,
        "examples_per_second": last.pop("examples_per_second", None),
        "steps_per_second": last.pop("steps_per_second", None),
        "train": {k: float(v) for k, v in last.items() if not k.startswith("val_")},
        "validation": {k[4:]: float(v) for k, v in last.items() if k.startswith("val_")},
    }
    write_atomically(os.path.join(model_dir, SUMMARY_FILE), json.dumps(summary, indent=2).encode())


def write_atomically(path: str, data: bytes) -> None:
    """Writes ``data`` beside ``path``, then renames it over ``path``: the old file or the new one.

    Raises:
        CheckpointWriteError: the write failed; the temporary file is removed
            and ``path`` is as it was.
    """
    temp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with tf.io.gfile.GFile(temp, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(temp, path, overwrite=True)
    except _checkpointing.WRITE_ERRORS as error:
        kept = path if tf.io.gfile.exists(path) else None
        raise _checkpointing.CheckpointWriteError(path, error, kept=kept) from None
    finally:
        if tf.io.gfile.exists(temp):
            tf.io.gfile.remove(temp)
