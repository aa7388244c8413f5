"""`strategies.fit`: one model function and one call, on every tf.distribute strategy."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from strategies.training import (
    _data,
    _fit_checks,
    _plan,
    _progress,
    _ps_training,
    _roles,
    _run_directory,
    _trainers,
)

CLIP_MODES = ("after_all_reduce", "per_replica")


def fit(
    model_fn: Callable[[], keras.Model],
    data: _data.Data,
    *,
    strategy: tf.distribute.Strategy,
    epochs: int,
    steps_per_epoch: int | None = None,
    validation_data: _data.Data | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    model_dir: str | os.PathLike[str] | None = None,
    steps_per_execution: int | None = None,
    validation_steps: int | None = None,
    clip_gradients: str = "after_all_reduce",
    verbose: int | str = "auto",
    resume: bool = True,
    checkpoint_every_steps: int | None = None,
) -> keras.callbacks.History:
    """Builds the model under ``strategy`` and trains it, with the semantics of one device.

    Keras' own ``model.fit`` runs wherever it is sound. Where Keras 3 breaks
    (multi-worker, several replicas with clipping, gradient accumulation, EMA
    or ``steps_per_execution > 1``) the version-guarded fixes in
    `strategies.compat._keras_compat` are installed on this model only; parameter
    servers get a ``ClusterCoordinator`` loop around ``model.train_step``.

    Gradients are all-reduced *before* any loss-scale check, clipping,
    accumulation or update, and then the optimizer's own methods run (a
    subclass's overrides included), so with N replicas the result equals one
    device running the same global batches (``clip_gradients="after_all_reduce"``;
    see docs/equivalence.md). An optimizer whose own methods that path cannot
    keep is refused before training.
    ``clip_gradients="per_replica"`` keeps Keras' own order: each replica clips
    its partial gradient before the all-reduce.

    With ``model_dir``, training writes TensorBoard logs (``logs/``),
    checkpoints of the model and optimizer (``checkpoints/``, every epoch and
    every ``checkpoint_every_steps`` steps), the final ``model.keras`` and
    ``summary.json``; with ``resume=True`` it continues from the newest
    checkpoint there, mid-epoch included. Under several workers only the chief
    writes these, and every worker takes part in saving. A SIGTERM (a
    preemption notice) then makes every worker checkpoint at the same step and
    raise `Preempted` (see `strategies.training._preemption`).

    Args:
        model_fn: returns a compiled ``keras.Model``; called inside ``strategy.scope()``.
        data: a ``tf.data.Dataset`` of global batches, or
            ``dataset_fn(input_context)`` returning per-replica batches.
        strategy: any ``tf.distribute.Strategy``, e.g. from ``strategies.build``.
        epochs: the epoch to stop after (as Keras: the total, resumed epochs included).
        steps_per_epoch: batches per epoch; None means one pass over ``data``.
            Required under parameter servers with a ``dataset_fn``, whose
            data must repeat.
        validation_data: same conventions as ``data``; evaluated after each epoch.
        callbacks: Keras callbacks, run on every worker.
        model_dir: where logs, checkpoints and the final model go; None writes nothing.
        steps_per_execution: steps per ``tf.function`` call; None keeps the compiled value.
        validation_steps: batches per validation pass; None means all of it.
        clip_gradients: ``"after_all_reduce"`` or ``"per_replica"``.
        verbose: 0 silent; 1 Keras' progress bar plus one line per epoch; 2 one
            line per epoch; "auto" is 1 on a terminal, else 2. Non-chief workers are silent.
        resume: continue from the newest checkpoint in ``model_dir``, if any.
        checkpoint_every_steps: also checkpoint whenever this many more steps are done.

    Returns:
        The ``keras.callbacks.History`` of the whole run, with ``.model`` set:
        after a restart, the epochs before it come from the checkpoint, and
        ``.epochs_before_restart`` counts them.

    Raises:
        Preempted: with ``model_dir``, after a SIGTERM: the checkpoint is saved.
        CheckpointMismatchError: ``model_dir`` holds a checkpoint of another
            model or optimizer.
        UnsupportedOptimizerError: (a ValueError) several replicas, and an
            optimizer class outside Keras and tfopt distributes by hand in a
            method the all-reduce-first path replaces.

    Example:

    ```python
    def model_fn():
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
        model.compile(keras.optimizers.SGD(0.1, global_clipnorm=1.0),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        return model

    history = strategies.fit(model_fn, dataset, strategy=strategies.build("auto"),
                             epochs=5, model_dir="/tmp/run")
    ```
    """
    _check_arguments(model_fn, data, strategy, epochs, steps_per_epoch, validation_data,
                     steps_per_execution, validation_steps, clip_gradients, verbose,
                     checkpoint_every_steps)
    verbose = _resolve_verbose(verbose) if _roles.is_chief(strategy) else 0
    model = _build_model(model_fn, strategy, data, validation_data, steps_per_execution)
    spec = _data.element_spec(data, strategy)
    per_epoch = _plan.epoch_length(data, strategy, steps_per_epoch)
    trainer = _make_trainer(model, strategy, data, spec, clip_gradients, checkpoint_every_steps)
    run_dir = _run_directory.open_run_directory(
        model_dir, model, strategy, spec, resume=resume, epochs=epochs, per_epoch=per_epoch,
        every_steps=checkpoint_every_steps, verbose=verbose)
    position = _plan.RunPosition(run_dir.start, epochs, per_epoch)
    progress = [keras.callbacks.ProgbarLogger()] if verbose == 1 and trainer.shows_progress_bar else []
    progress.append(_progress.EpochProgress(print_fn="default" if verbose else None, epochs=epochs))
    run = _trainers.Run(
        data, run_dir.start,
        [*run_dir.leading_callbacks(), position, *progress, *callbacks,
         *run_dir.trailing_callbacks(position)],
        epochs=epochs, steps_per_epoch=steps_per_epoch, per_epoch=per_epoch,
        validation_data=validation_data, validation_steps=validation_steps, verbose=verbose)
    began = time.perf_counter()
    with run_dir.watching_preemption():
        history = trainer.train(run)
    run_dir.finish(history, time.perf_counter() - began)
    return history


def _build_model(model_fn: Callable[[], keras.Model], strategy: tf.distribute.Strategy,
                 data: _data.Data, validation_data: _data.Data | None,
                 steps_per_execution: int | None) -> keras.Model:
    """``model_fn()`` in the strategy's scope, checked against the data before any step runs."""
    with strategy.scope():
        model = model_fn()
    _check_model(model)
    _fit_checks.check_model_in_scope(model, strategy)
    for name, value in (("data", data), ("validation_data", validation_data)):
        if value is not None:
            _fit_checks.check_data(model, value, strategy, name)
    if steps_per_execution is not None:
        model.steps_per_execution = int(steps_per_execution)
    return model


def _make_trainer(model: keras.Model, strategy: tf.distribute.Strategy, data: _data.Data,
                  spec: Any, clip_gradients: str, chunk_steps: int | None) -> _trainers.Trainer:
    """The loop for this strategy: parameter servers get the coordinator loop, the rest Keras'."""
    if _roles.kind(strategy) == _roles.PARAMETER_SERVER:
        return _ps_training.CoordinatorTrainer(model, strategy, data, chunk_steps=chunk_steps)
    return _trainers.KerasTrainer(model, strategy, clip_gradients, spec)


def _resolve_verbose(verbose: int | str) -> int:
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(verbose)


def _check_model(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model_fn()` must return a keras.Model. Received: {type(model).__name__}.")
    if not model.compiled or model.optimizer is None:
        raise ValueError(
            "`model_fn()` must return a model compiled with an optimizer: call "
            f"model.compile(optimizer=..., loss=...) inside it. Received: model {model.name!r} "
            f"with compiled={model.compiled}."
        )


def _check_arguments(model_fn: Any, data: Any, strategy: Any, epochs: Any, steps_per_epoch: Any,
                     validation_data: Any, steps_per_execution: Any, validation_steps: Any,
                     clip_gradients: Any, verbose: Any, checkpoint_every_steps: Any) -> None:
    if not callable(model_fn):
        raise ValueError(f"`model_fn` must be a function returning a compiled keras.Model. "
                         f"Received: model_fn={model_fn!r}.")
    _data.check(data, "data")
    if validation_data is not None:
        _data.check(validation_data, "validation_data")
    if not isinstance(strategy, tf.distribute.Strategy):
        raise ValueError("`strategy` must be a tf.distribute.Strategy, e.g. strategies.build"
                         f"('auto'). Received: strategy={strategy!r}.")
    _check_int("epochs", epochs, minimum=0)
    for name, value in (("steps_per_epoch", steps_per_epoch),
                        ("steps_per_execution", steps_per_execution),
                        ("validation_steps", validation_steps),
                        ("checkpoint_every_steps", checkpoint_every_steps)):
        if value is not None:
            _check_int(name, value, minimum=1)
    if clip_gradients not in CLIP_MODES:
        raise ValueError(f"`clip_gradients` must be one of {CLIP_MODES}. "
                         f"Received: clip_gradients={clip_gradients!r}.")
    if verbose not in ("auto", 0, 1, 2):
        raise ValueError(f"`verbose` must be 'auto', 0, 1 or 2. Received: verbose={verbose!r}.")
    if _roles.kind(strategy) == _roles.PARAMETER_SERVER:
        _ps_training.check_arguments(data, steps_per_epoch, steps_per_execution)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}.")
