"""Where a run stands, and the bound it never passes: ``epochs × steps_per_epoch`` steps.

A run's position is a `TrainingState`: the epoch, the step within it, and the
global step (steps trained since the run began, restarts included). One rule
defines it everywhere, so that a checkpoint, a restart and the training loops
agree: **the position after an epoch's last step is the next epoch's first
step** (`TrainingState.normalized`). A resumed epoch then always has at least one
step left, or the run is finished.

`RunPosition` is the callback that follows the position during training and
enforces the plan: each epoch handed to Keras has a positive, bounded number of
steps (`epoch_length`, `check_resumed_epoch`), and the global step never
exceeds the plan. A violation raises `PlanExceededError` naming the position,
where Keras would otherwise run an epoch without a step limit over endless
data (an epoch of ``steps_per_epoch=0`` is one).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from strategies.training import _data


class PlanExceededError(RuntimeError):
    """Training reached a position past the run's plan (a bug, or a changed plan)."""


@dataclasses.dataclass(frozen=True)
class TrainingState:
    """Where a run stands: resume at ``step_in_epoch`` of ``epoch`` (both 0-based)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0

    def normalized(self, steps_per_epoch: int | None) -> TrainingState:
        """The same position with an epoch's end written as the next epoch's start.

        Checkpoints written before this rule existed hold ``(e, steps_per_epoch)``
        for a save on the epoch's last step; they resume at ``(e + 1, 0)``.

        Raises:
            PlanExceededError: ``step_in_epoch`` is past the end of the epoch:
                the checkpoint was written with a longer ``steps_per_epoch``.
        """
        if not steps_per_epoch or self.step_in_epoch < steps_per_epoch:
            return self
        if self.step_in_epoch > steps_per_epoch:
            raise PlanExceededError(
                f"The checkpoint stands at {self}, past the end of its epoch: this run's epochs "
                f"have {steps_per_epoch} steps. Resume with the steps_per_epoch that wrote it, "
                f"or use a fresh model_dir. Received: steps_per_epoch={steps_per_epoch}."
            )
        return TrainingState(self.epoch + 1, 0, self.global_step)

    def __str__(self) -> str:
        return f"epoch {self.epoch} step {self.step_in_epoch} (global step {self.global_step})"


def epoch_length(data: _data.Data, strategy: tf.distribute.Strategy,
                 steps_per_epoch: int | None) -> int | None:
    """Steps in one epoch: ``steps_per_epoch``, else the data's cardinality (None if unknown).

    Raises:
        ValueError: ``steps_per_epoch`` is None and ``data`` repeats forever, so
            an epoch would never end.
    """
    if steps_per_epoch is not None:
        return steps_per_epoch
    cardinality = int(_data.local_dataset(data, strategy).cardinality())
    if cardinality == int(tf.data.INFINITE_CARDINALITY):
        raise ValueError(
            "`data` repeats forever, so an epoch without steps_per_epoch would never end: pass "
            "steps_per_epoch, or data that ends (no .repeat()). Received: steps_per_epoch=None."
        )
    return cardinality if cardinality >= 0 else None


def planned_steps(epochs: int, steps_per_epoch: int | None) -> int | None:
    """The run's total steps, when its epochs' length is known."""
    return None if steps_per_epoch is None else epochs * steps_per_epoch


def check_start(start: TrainingState, epochs: int, steps_per_epoch: int | None) -> None:
    """Raises `PlanExceededError` when a resumed run already stands past its plan."""
    planned = planned_steps(epochs, steps_per_epoch)
    if planned is not None and start.global_step > planned:
        raise PlanExceededError(
            f"The checkpoint stands at {start}, past this run's plan of {epochs} epochs of "
            f"{steps_per_epoch} steps ({planned} steps). Resume with the plan that wrote it, or "
            f"use a fresh model_dir. Received: epochs={epochs}, steps_per_epoch={steps_per_epoch}."
        )


def check_resumed_epoch(start: TrainingState, steps_left: int) -> None:
    """Raises `PlanExceededError` unless the resumed epoch has a positive number of steps."""
    if steps_left < 1:
        raise PlanExceededError(
            f"Resuming at {start} leaves {steps_left} steps in that epoch; Keras would run it "
            "without a step limit. This is a bug in strategies: please report it."
        )


class RunPosition(keras.callbacks.Callback):
    """Follows the run's `TrainingState` step by step, and stops it where it would pass its plan.

    Goes first among the callbacks, so that the others (`CheckpointCallback`)
    read the position of the step that just ended.

    Args:
        start: where training starts (or resumes), normalized.
        epochs: the epoch to stop after.
        steps_per_epoch: the epochs' length, or None when the data decide it.
    """

    def __init__(self, start: TrainingState, epochs: int, steps_per_epoch: int | None) -> None:
        super().__init__()
        self.start, self.epochs, self.steps_per_epoch = start, epochs, steps_per_epoch
        self.planned = planned_steps(epochs, steps_per_epoch)
        self.position = start
        self._offset = start.step_in_epoch  # Steps of the resumed epoch done before this run.

    @property
    def at_epoch_end(self) -> bool:
        """Whether the step that just ended was its epoch's last (when the length is known)."""
        return bool(self.steps_per_epoch) and self.position.step_in_epoch == self.steps_per_epoch

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch >= self.epochs:
            raise PlanExceededError(f"Epoch {epoch} began, but the plan has {self.epochs} epochs.")
        if epoch != self.start.epoch:
            self._offset = 0
        self.position = TrainingState(epoch, self._offset, self.position.global_step)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # `batch` is the last step of this execution, counted in this fit call;
        # Keras does not clamp it to the epoch's length (a partial last execution).
        total = self.params.get("steps") if self.params else None
        step_in_epoch = self._offset + (min(batch + 1, total) if total else batch + 1)
        before = self.position
        self.position = TrainingState(before.epoch, step_in_epoch,
                                 before.global_step + step_in_epoch - before.step_in_epoch)
        if self.planned is not None and self.position.global_step > self.planned:
            raise PlanExceededError(
                f"Training reached {self.position}, past the plan of {self.epochs} epochs of "
                f"{self.steps_per_epoch} steps ({self.planned} steps). This is a bug in "
                "strategies: please report it."
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.position = TrainingState(epoch + 1, 0, self.position.global_step)
