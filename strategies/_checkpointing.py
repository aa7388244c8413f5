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
included), and where training stood: the next epoch, the step within it, and
the total number of steps trained.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import keras
import tensorflow as tf

from strategies import _roles

CHECKPOINT_SUBDIR = "checkpoints"
_TEMP_SUBDIR = ".worker_checkpoints"


@dataclasses.dataclass(frozen=True)
class TrainingState:
    """Where a run stands: resume at ``step_in_epoch`` of ``epoch`` (both 0-based)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


class CheckpointMismatchError(ValueError):
    """A checkpoint in ``model_dir`` does not fit the model and optimizer being trained."""


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
        self._checkpoint = tf.train.Checkpoint(
            model=model, optimizer=model.optimizer, epoch=self._epoch,
            step_in_epoch=self._step_in_epoch, global_step=self._global_step)
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
        status = self._checkpoint.restore(path)
        try:
            status.assert_existing_objects_matched()
        except AssertionError as error:
            raise CheckpointMismatchError(
                f"The checkpoint {path} does not match this model and optimizer "
                f"({type(self._model).__name__} {self._model.name!r} with "
                f"{type(self._model.optimizer).__name__}): {str(error).splitlines()[0]} "
                "Use a fresh model_dir or the model_fn that wrote it. "
                f"Received: model_dir={os.path.dirname(self.directory)!r}."
            ) from None
        return TrainingState(int(self._epoch.numpy()), int(self._step_in_epoch.numpy()),
                             int(self._global_step.numpy()))

    def save(self, state: TrainingState) -> str | None:
        """Saves on this worker; returns the chief's checkpoint path (None elsewhere)."""
        self._epoch.assign(state.epoch)
        self._step_in_epoch.assign(state.step_in_epoch)
        self._global_step.assign(state.global_step)
        path = self._manager.save(checkpoint_number=state.global_step)
        if not self.chief:
            _remove_private_dir(self._write_dir)
            return None
        return path


class CheckpointCallback(keras.callbacks.Callback):
    """Saves a `Checkpointer` at every epoch end and, optionally, every ``every_steps`` steps.

    Args:
        checkpointer: where and how to save.
        start: the state training starts (or resumes) from.
        every_steps: also save whenever the global step passes a multiple of this.
    """

    def __init__(self, checkpointer: Checkpointer, start: TrainingState = TrainingState(),
                 every_steps: int | None = None) -> None:
        super().__init__()
        self.checkpointer = checkpointer
        self._every = every_steps
        self._epoch = start.epoch
        self._offset = start.step_in_epoch  # Steps of the resumed epoch already done.
        self._global = start.global_step
        self._epoch_step = start.step_in_epoch
        self.saved: list[str] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch != self._epoch:
            self._offset = 0
        self._epoch = epoch
        self._epoch_step = self._offset

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # `batch` is the last step of this execution, counted in this fit call;
        # Keras does not clamp it to the epoch's length (a partial last execution).
        total = self.params.get("steps") if self.params else None
        step_in_epoch = self._offset + (min(batch + 1, total) if total else batch + 1)
        before = self._global
        self._global += step_in_epoch - self._epoch_step
        self._epoch_step = step_in_epoch
        if self._every and self._global // self._every > before // self._every:
            self._save(TrainingState(self._epoch, step_in_epoch, self._global))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._save(TrainingState(epoch + 1, 0, self._global))

    def _save(self, state: TrainingState) -> None:
        path = self.checkpointer.save(state)
        if path:
            self.saved.append(path)


def save_model(model: keras.Model, strategy: tf.distribute.Strategy,
               model_dir: str | os.PathLike[str], filename: str = "model.keras") -> str | None:
    """Writes ``model_dir/model.keras`` on the chief; other workers save to a temp dir and delete it.

    Returns the chief's path, or None on other workers.
    """
    if _roles.is_chief(strategy):
        path = os.path.join(os.fspath(model_dir), filename)
        model.save(path)
        return path
    temp_dir = os.path.join(os.fspath(model_dir), _TEMP_SUBDIR,
                            "_".join(map(str, _roles.task(strategy) or ("local", 0))))
    tf.io.gfile.makedirs(temp_dir)
    model.save(os.path.join(temp_dir, filename))
    _remove_private_dir(temp_dir)
    return None


def _remove_private_dir(path: str) -> None:
    """Deletes a worker's temporary directory, and its parent once no worker uses it."""
    tf.io.gfile.rmtree(path)
    try:
        os.rmdir(os.path.dirname(path))  # Fails while another worker's directory is there.
    except OSError:
        pass
