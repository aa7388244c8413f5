"""Worker-aware checkpoints: save every epoch (or every N steps), resume where a run stopped.

Keras 3's ``BackupAndRestore`` knows nothing of workers: under
MultiWorkerMirroredStrategy every worker would write the same files. This
follows TensorFlow's multi-worker rule instead: *every* worker saves (saving
can involve collectives, so a chief saving alone can hang), the chief into
``model_dir/checkpoints`` and the others into a private temporary directory
that is deleted straight after; every worker restores from the chief's
directory, so ``model_dir`` must be shared storage across machines (a local
disk, NFS or a GCS bucket). Under parameter servers only the coordinator runs
this code.

What is saved: the model's variables, the optimizer's state (its step counter
included), where training stood (the next epoch, the step within it, and the
total number of steps trained), a signature of the model and optimizer, and
what `strategies.training._resume` adds so that a resumed run is the same run (every
model variable, random state included, the metrics' state and the history).

Safety (each proven by tests/strategies/test_checkpoint_safety.py, which
SIGKILLs writers for real):

* A checkpoint becomes visible only when ``tf.train.CheckpointManager``
  rewrites the ``checkpoint`` state file, atomically (temp file + rename),
  after the data files are complete; a run killed while saving leaves the
  previous checkpoint as the newest one.
* ``model.keras`` is written to a temporary file in the same directory and
  renamed over the old one, so it is always the previous or the new model.
* Restoring first compares the checkpoint's signature (model and optimizer,
  every variable's shape, in Keras' positional order) with the model being
  trained, and refuses a mismatch in one sentence naming both sides. Keras
  would restore optimizer variables by position and only warn ("Skipping
  variable loading for optimizer..."), or fail half-way with a shape error.
* A write that fails (a full disk, a file-size limit, a lost bucket) raises
  `CheckpointWriteError`, one line naming the path and the error, after
  removing what it left half-written (``ckpt-N_temp/``, the temporary
  ``model.keras``); the previous checkpoint stays the newest, so a restart
  resumes from it (tests/strategies/test_checkpoint_write_errors.py).
* `load_model` reads ``.keras`` files with ``safe_mode=True``: no code stored
  in a file (a ``Lambda``'s bytecode) runs.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import keras
import tensorflow as tf

from strategies.compat import _keras_compat
from strategies.training import _resume, _roles
from strategies.training._plan import RunPosition, TrainingState
from strategies.training._preemption import Preempted, PreemptionWatcher

CHECKPOINT_SUBDIR = "checkpoints"
_TEMP_SUBDIR = ".worker_checkpoints"
_SIGNATURE_KEY = "signature/.ATTRIBUTES/VARIABLE_VALUE"


class CheckpointMismatchError(ValueError):
    """A checkpoint in ``model_dir`` does not fit the model and optimizer being trained."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint, ``model.keras`` or ``summary.json`` failed; nothing half-written is left.

    ``filename`` is the path that could not be written; ``str()`` is one line
    naming it, the error, and what is still there to resume from.
    """

    def __init__(self, path: str, error: BaseException, kept: str | None = None) -> None:
        detail = _error_text(error)
        errno = getattr(error, "errno", None)
        super().__init__(errno, detail, path)
        kept_text = ("" if not kept else "; the previous file is unchanged" if kept == path
                     else f"; the previous one, {kept}, is intact")
        self.message = f"could not write {path}: {detail}{kept_text}."

    def __str__(self) -> str:
        return self.message


# What a failed write raises: an OSError from Python, an OpError from tf.io/SaveV2.
WRITE_ERRORS = (OSError, tf.errors.OpError)


class Checkpointer:
    """Saves and restores one run's training state, the way multi-worker TF requires.

    Args:
        model: a compiled model whose variables (and optimizer's) already exist.
        strategy: the strategy the model was built under.
        model_dir: the run's directory; checkpoints go to ``model_dir/checkpoints``.
        max_to_keep: how many recent checkpoints the chief keeps.
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy,
                 model_dir: str | os.PathLike[str], max_to_keep: int = 3) -> None:
        self.chief = _roles.is_chief(strategy)
        self.directory = os.path.join(os.fspath(model_dir), CHECKPOINT_SUBDIR)
        found = _roles.task(strategy)
        self._write_dir = self.directory if self.chief else os.path.join(
            os.fspath(model_dir), _TEMP_SUBDIR, "_".join(map(str, found or ("local", 0))))
        # Plain (not mirrored) scalars: each process keeps its own copy.
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self._step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        self._global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self._signature = signature(model)
        self._signature_variable = tf.Variable(json.dumps(self._signature), trainable=False,
                                               name="signature")
        parts = dict(model=model, optimizer=model.optimizer, epoch=self._epoch,
                     step_in_epoch=self._step_in_epoch, global_step=self._global_step,
                     signature=self._signature_variable)
        # Random state, non-trainable variables, metrics and history: see _resume.
        # Saved with the rest, restored apart and leniently: checkpoints written
        # before it existed, or without a tf.random generator, still restore.
        self.resume_state = _resume.ResumeState(model)
        self._checkpoint = tf.train.Checkpoint(**parts, resume=self.resume_state)
        self._restorable = tf.train.Checkpoint(**parts)
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, self._write_dir, max_to_keep=max_to_keep if self.chief else 1,
            checkpoint_name="ckpt")
        self._model = model

    def latest(self) -> str | None:
        """The chief's newest checkpoint prefix, or None."""
        return tf.train.latest_checkpoint(self.directory)

    def restore(self) -> TrainingState | None:
        """Loads the newest checkpoint into the model and optimizer, if there is one.

        Raises:
            CheckpointMismatchError: when it was written for another model or optimizer.
        """
        path = self.latest()
        if path is None:
            return None
        self._check_signature(path)
        try:
            status = self._restorable.restore(path)
            status.assert_existing_objects_matched()
            # Every object of this part matched. The checkpoint's other values
            # (``resume.*``: the generator, history, metrics) are read by the next
            # line; without this, TF would log each of them as "could not be found
            # in the restored object" although nothing is dropped (_resume.ResumeState.restore).
            status.expect_partial()
            self.resume_state.restore(path)
        except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
            # A checkpoint without a signature (or one Keras still cannot load).
            raise self._mismatch(path, _first_line(error)) from None
        return TrainingState(int(self._epoch.numpy()), int(self._step_in_epoch.numpy()),
                             int(self._global_step.numpy()))

    def _check_signature(self, path: str) -> None:
        reader = _keras_compat.checkpoint_reader(path)  # ram:// too (see there).
        if not reader.has_tensor(_SIGNATURE_KEY):
            return
        saved = json.loads(reader.get_tensor(_SIGNATURE_KEY))
        difference = _first_difference(saved, self._signature)
        if difference is not None:
            raise self._mismatch(path, f"it holds {_describe(saved)}, this run builds "
                                       f"{_describe(self._signature)}; {difference}")

    def _mismatch(self, path: str, detail: str) -> CheckpointMismatchError:
        return CheckpointMismatchError(
            f"The checkpoint {path} does not match this model and optimizer: {detail}. "
            "Use a fresh model_dir, or the model and optimizer that wrote it. "
            f"Received: model_dir={os.path.dirname(self.directory)!r}."
        )

    def save(self, state: TrainingState) -> str | None:
        """Saves on this worker; returns the chief's checkpoint path (None elsewhere)."""
        self._epoch.assign(state.epoch)
        self._step_in_epoch.assign(state.step_in_epoch)
        self._global_step.assign(state.global_step)
        try:
            path = self._manager.save(checkpoint_number=state.global_step)
        except WRITE_ERRORS as error:
            # SaveV2 writes into ``<prefix>_temp/`` and renames it at the end:
            # a failure leaves that directory; the ``checkpoint`` file still
            # names the previous checkpoint.
            for partial in tf.io.gfile.glob(os.path.join(self._write_dir, "*_temp")):
                tf.io.gfile.rmtree(partial)
            prefix = os.path.join(self._write_dir, f"ckpt-{state.global_step}")
            raise CheckpointWriteError(prefix, error, kept=self.latest() if self.chief else None) from None
        if not self.chief:
            _remove_private_dir(self._write_dir)
            return None
        return path


class CheckpointCallback(keras.callbacks.Callback):
    """Saves a `Checkpointer` at every epoch end and, optionally, every ``every_steps`` steps.

    A step checkpoint that falls on an epoch's last step is the epoch-end
    checkpoint: it is taken once, at the epoch's end, after validation, so that
    it holds the epoch's logs, and it records the next epoch's first step
    (`TrainingState.normalized`). A preemption signalled at that step saves
    there too, then stops.

    Args:
        checkpointer: where and how to save.
        position: the run's position (a callback that must run before this one).
        every_steps: also save whenever the global step passes a multiple of this.
        preemption: on its signal, save at the step it names and raise `Preempted`.
    """

    def __init__(self, checkpointer: Checkpointer, position: RunPosition,
                 every_steps: int | None = None,
                 preemption: PreemptionWatcher | None = None) -> None:
        super().__init__()
        self.checkpointer = checkpointer
        self._position = position
        self._every = every_steps
        self._preemption = preemption
        self._last_global = position.start.global_step
        self._stop_at_epoch_end = False
        self.saved: list[str] = []

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        state = self._position.position
        before, self._last_global = self._last_global, state.global_step
        due = bool(self._every) and state.global_step // self._every > before // self._every
        stop = self._preemption is not None and self._preemption.should_stop(state.global_step)
        if self._position.at_epoch_end:
            # on_epoch_end saves this very position, once the epoch's logs exist.
            self._stop_at_epoch_end = stop
            return
        saved = self._save(state) if due else None
        if stop:
            # Every worker gets here at the same step (see _preemption) and saves together.
            raise Preempted(state.global_step, saved or self._save(state))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        path = self._save(TrainingState(epoch + 1, 0, self._position.position.global_step))
        if self._stop_at_epoch_end:
            raise Preempted(self._position.position.global_step, path)

    def _save(self, state: TrainingState) -> str | None:
        path = self.checkpointer.save(state)
        if path:
            self.saved.append(path)
        return path


def save_model(model: keras.Model, strategy: tf.distribute.Strategy,
               model_dir: str | os.PathLike[str], filename: str = "model.keras") -> str | None:
    """Writes ``model_dir/model.keras`` on the chief; other workers save to a temp dir and delete it.

    Returns the chief's path, or None on other workers.
    """
    if _roles.is_chief(strategy):
        path = os.path.join(os.fspath(model_dir), filename)
        # Keras writes the zip in place: a run killed mid-write would leave a
        # torn file where the previous model was. Write beside it, then rename
        # (atomic on a local or NFS file system; a copy on GCS).
        temp = os.path.join(os.fspath(model_dir), f".{os.getpid()}.tmp.{filename}")
        tf.io.gfile.makedirs(os.fspath(model_dir))
        try:
            model.save(temp)
            if "://" in path:
                tf.io.gfile.rename(temp, path, overwrite=True)
            else:
                os.replace(temp, path)
        except WRITE_ERRORS as error:
            if tf.io.gfile.exists(temp):
                tf.io.gfile.remove(temp)
            kept = path if tf.io.gfile.exists(path) else None
            raise CheckpointWriteError(path, error, kept=kept) from None
        return path
    temp_dir = os.path.join(os.fspath(model_dir), _TEMP_SUBDIR,
                            "_".join(map(str, _roles.task(strategy) or ("local", 0))))
    tf.io.gfile.makedirs(temp_dir)
    model.save(os.path.join(temp_dir, filename))
    _remove_private_dir(temp_dir)
    return None


def load_model(path: str | os.PathLike[str]) -> keras.Model:
    """Loads a ``.keras`` file with ``safe_mode=True``: no code stored in it runs.

    Raises:
        ValueError: the file holds code (e.g. a ``Lambda`` layer's bytecode);
            Keras' message says how to allow it for a file you trust.
    """
    return keras.saving.load_model(path, safe_mode=True)


def signature(model: keras.Model) -> dict[str, Any]:
    """What a checkpoint must match: the model and optimizer, and their variables' shapes.

    Shapes are listed in Keras' order, which is how optimizer variables are
    restored (by position): the same shapes in the same order restore right.
    """
    optimizer = model.optimizer
    return {
        "model": f"{type(model).__name__} {model.name!r}",
        "weights": [list(v.shape) for v in model.weights],
        "optimizer": _optimizer_name(optimizer),
        "optimizer_variables": [[v.name, list(v.shape)] for v in optimizer.variables],
    }


def _optimizer_name(optimizer: Any) -> str:
    inner = getattr(optimizer, "inner_optimizer", None)
    name = type(optimizer).__name__
    return name if inner is None else f"{name}({_optimizer_name(inner)})"


def _describe(sig: dict[str, Any]) -> str:
    return (f"{sig['model']} ({len(sig['weights'])} weights) with {sig['optimizer']} "
            f"({len(sig['optimizer_variables'])} variables)")


def _first_difference(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first way ``saved`` and ``current`` differ, in words; None if they match."""
    for i, (a, b) in enumerate(zip(saved["weights"], current["weights"], strict=False)):
        if a != b:
            return f"model weight {i} is {tuple(a)} there and {tuple(b)} here"
    if len(saved["weights"]) != len(current["weights"]):
        return f"{len(saved['weights'])} model weights there, {len(current['weights'])} here"
    if saved["optimizer"] != current["optimizer"]:
        return f"optimizer {saved['optimizer']} there, {current['optimizer']} here"
    for i, (a, b) in enumerate(zip(saved["optimizer_variables"], current["optimizer_variables"], strict=False)):
        if a[1] != b[1]:
            return (f"optimizer variable {i} is {a[0]!r} {tuple(a[1])} there and "
                    f"{b[0]!r} {tuple(b[1])} here")
    if len(saved["optimizer_variables"]) != len(current["optimizer_variables"]):
        return (f"{len(saved['optimizer_variables'])} optimizer variables there, "
                f"{len(current['optimizer_variables'])} here")
    return None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _error_text(error: BaseException) -> str:
    """"File too large", not the temporary path TF or Python prefixes it with."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    line = _first_line(getattr(error, "message", None) or error)
    # tf.io: "<temporary path>; File too large"; eager ops add " [Op:SaveV2]".
    line = re.sub(r"\s*\[Op:\w+\]$", "", line)
    head, sep, tail = line.partition("; ")
    return tail if sep and tail and ("/" in head or "\\" in head) else line


def _remove_private_dir(path: str) -> None:
    """Deletes a worker's temporary directory, and its parent once no worker uses it."""
    tf.io.gfile.rmtree(path)
    try:
        os.rmdir(os.path.dirname(path))  # Fails while another worker's directory is there.
    except OSError:
        pass
