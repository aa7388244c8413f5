"""The training loops behind `strategies.fit`, behind one interface (orbit's trainer/controller split).

`fit` owns the run (arguments, the model, the run directory, callbacks); a
`Trainer` owns the steps. Two implement it:

* `KerasTrainer`: Keras' own ``model.fit``, with the `strategies.compat`
  fixes that this strategy needs installed on this model only;
* `strategies.training._ps_training.CoordinatorTrainer`: a ``ClusterCoordinator``
  loop around ``model.train_step`` for parameter servers, which Keras 3's
  ``model.fit`` does not support (keras-team/keras#18624).

`strategies.fit` picks one from the strategy's kind.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from strategies.compat import _keras_compat
from strategies.training import _data, _plan, _resume, _roles


@dataclasses.dataclass(frozen=True)
class Run:
    """What a trainer is asked to do: train ``data`` from ``start`` to the end of ``epochs``."""

    data: _data.Data
    start: _plan.TrainingState
    callbacks: list[keras.callbacks.Callback]
    epochs: int
    steps_per_epoch: int | None  # As the caller gave it.
    per_epoch: int | None  # The epochs' length: steps_per_epoch, else the data's cardinality.
    validation_data: _data.Data | None = None
    validation_steps: int | None = None
    verbose: int = 0


class Trainer(abc.ABC):
    """Runs the steps of a `Run` and returns its ``keras.callbacks.History``."""

    #: Whether Keras' per-step progress bar applies (``verbose=1``).
    shows_progress_bar: bool = True

    @abc.abstractmethod
    def train(self, run: Run) -> keras.callbacks.History:
        """Trains ``run``; the callbacks see Keras' usual calls, the history every epoch run here."""


class KerasTrainer(Trainer):
    """``model.fit``, resuming mid-epoch by first finishing the interrupted epoch alone.

    Args:
        model: compiled under ``strategy.scope()``.
        strategy: any strategy but parameter servers.
        clip_gradients: ``"after_all_reduce"`` or ``"per_replica"`` (see `strategies.fit`).
        spec: one batch's ``element_spec``, to build the model without reading data.
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy, clip_gradients: str,
                 spec: Any) -> None:
        self.model, self.strategy = model, strategy
        self._install_fixes(model, strategy, _roles.kind(strategy), clip_gradients, spec)

    @staticmethod
    def _install_fixes(model: keras.Model, strategy: tf.distribute.Strategy, path: str,
                       clip_gradients: str, spec: Any) -> None:
        """Installs the `_keras_compat` fixes this strategy needs on this model, and no others."""
        replicas = strategy.num_replicas_in_sync
        optimizer = model.optimizer
        if replicas > 1 and path in (_roles.MIRRORED, _roles.MULTI_WORKER) and optimizer is not None:
            if clip_gradients == "after_all_reduce":
                _keras_compat.synchronize_gradients(optimizer)
            elif _keras_compat.needs_merge_call_in_cond(optimizer):
                raise ValueError(
                    "clip_gradients='per_replica' keeps Keras' own optimizer step, which cannot "
                    "accumulate gradients or overwrite EMA weights over several replicas "
                    "(keras-team/keras#20582); use clip_gradients='after_all_reduce'. Received: "
                    f"clip_gradients={clip_gradients!r}, gradient_accumulation_steps="
                    f"{optimizer.gradient_accumulation_steps}, ema_overwrite_frequency="
                    f"{optimizer.ema_overwrite_frequency}."
                )
        if path == _roles.MULTI_WORKER:
            _keras_compat.build_without_batches(model, spec)
            _keras_compat.install_step_functions(model)
        elif path == _roles.MIRRORED and model.steps_per_execution > 1:
            _keras_compat.install_step_functions(model)

    def train(self, run: Run) -> keras.callbacks.History:
        start = run.start
        fit = self._fit_call(run)
        if start.step_in_epoch == 0 or start.epoch >= run.epochs:
            skip, _ = _resume.start_positions(run.data, self.strategy, start.global_step, 0, 0)
            return fit(skip, start.epoch, run.epochs, run.steps_per_epoch)
        if run.per_epoch is None:
            raise ValueError(
                "Resuming mid-epoch needs the epoch's length: pass steps_per_epoch or use data of "
                f"known cardinality. Received: steps_per_epoch={run.steps_per_epoch}, checkpoint at "
                f"epoch {start.epoch}, step {start.step_in_epoch}."
            )
        steps_left = run.per_epoch - start.step_in_epoch
        _plan.check_resumed_epoch(start, steps_left)
        first_skip, next_skip = _resume.start_positions(run.data, self.strategy, start.global_step,
                                                        start.step_in_epoch, steps_left)
        more_epochs = start.epoch + 1 < run.epochs
        with _keras_compat.no_final_ema_overwrite(self.model) if more_epochs else contextlib.nullcontext():
            first = fit(first_skip, start.epoch, start.epoch + 1, steps_left)
        if not more_epochs or self.model.stop_training:
            return first
        # Copied before the second call, which may reuse the History object.
        epochs_run, logs = list(first.epoch), {k: list(v) for k, v in first.history.items()}
        history = fit(next_skip, start.epoch + 1, run.epochs, run.steps_per_epoch)
        history.epoch[:0] = epochs_run
        for key, values in logs.items():
            history.history.setdefault(key, [])[:0] = values
        return history

    def _fit_call(self, run: Run) -> Callable[[int, int, int, int | None], keras.callbacks.History]:
        """``model.fit`` of ``run`` from ``initial_epoch`` to ``epochs``, ``skip`` batches in."""
        validation = (None if run.validation_data is None
                      else _data.for_keras(run.validation_data, self.strategy))

        def fit(skip: int, initial_epoch: int, epochs: int,
                steps_per_epoch: int | None) -> keras.callbacks.History:
            return self.model.fit(
                _data.for_keras(_data.skip(run.data, skip), self.strategy), epochs=epochs,
                steps_per_epoch=steps_per_epoch, initial_epoch=initial_epoch,
                validation_data=validation, validation_steps=run.validation_steps,
                callbacks=run.callbacks,
                # Data arrive as tf.data, already shuffled (or not) by the caller;
                # Keras would ignore shuffle=True for them and warn on every run.
                shuffle=False, verbose=1 if run.verbose == 1 else 0)

        return fit
