"""`strategies.fit`: one model function and one call, on every tf.distribute strategy."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from strategies import (
    _checkpointing,
    _data,
    _fit_checks,
    _keras_compat,
    _plan,
    _preemption,
    _progress,
    _ps_training,
    _resume,
    _roles,
)

CLIP_MODES = ("after_all_reduce", "per_replica")
SUMMARY_FILE = "summary.json"
LOGS_SUBDIR = "logs"


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
    `strategies._keras_compat` are installed on this model only; parameter
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
    raise `Preempted` (see `strategies._preemption`).

    Args:
        model_fn: returns a compiled ``keras.Model``; called inside ``strategy.scope()``.
        data: a ``tf.data.Dataset`` of global batches, or
            ``dataset_fn(input_context)`` returning per-replica batches.
        strategy: any ``tf.distribute.Strategy``, e.g. from ``strategies.build``.
        epochs: the epoch to stop after (as Keras: the total, resumed epochs included).
        steps_per_epoch: batches per epoch; None means one pass over ``data``.
            Required under parameter servers, whose data must repeat.
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
    path = _roles.kind(strategy)
    chief = _roles.is_chief(strategy)
    verbose = _resolve_verbose(verbose) if chief else 0
    if path == _roles.PARAMETER_SERVER:
        _ps_training.check_arguments(steps_per_epoch, steps_per_execution)

    with strategy.scope():
        model = model_fn()
    _check_model(model)
    _fit_checks.check_model_in_scope(model, strategy)
    for name, value in (("data", data), ("validation_data", validation_data)):
        if value is not None:
            _fit_checks.check_data(model, value, strategy, name)
    if steps_per_execution is not None:
        model.steps_per_execution = int(steps_per_execution)
    spec = _data.element_spec(data, strategy)
    per_epoch = _plan.epoch_length(data, strategy, steps_per_epoch)

    trainer = None
    if path == _roles.PARAMETER_SERVER:
        # Workers update the parameter servers' variables from a replica
        # context: Keras' merge_call inside a cond (accumulation, EMA overwrite,
        # keras-team/keras#20582) fails there too, the replica-local path does not.
        _keras_compat.synchronize_gradients(model.optimizer)
        trainer = _ps_training.CoordinatorTrainer(model, strategy, data,
                                                  chunk_steps=checkpoint_every_steps)
    else:
        _prepare_keras_fit(model, strategy, path, clip_gradients, spec)

    start = _plan.TrainingState()
    all_callbacks: list[keras.callbacks.Callback] = []
    if verbose == 1 and path != _roles.PARAMETER_SERVER:
        all_callbacks.append(keras.callbacks.ProgbarLogger())
    all_callbacks.append(_progress.EpochProgress(print_fn="default" if verbose else None,
                                                 epochs=epochs))
    all_callbacks.extend(callbacks)
    if model_dir is not None:
        tf.io.gfile.makedirs(os.fspath(model_dir))
        _build_variables(model, spec)  # Restoring needs every variable to exist.
        checkpointer = _checkpointing.Checkpointer(model, strategy, model_dir)
        restored = checkpointer.restore() if resume else None
        if restored is not None:
            start = restored.normalized(per_epoch)
            _plan.check_start(start, epochs, per_epoch)
            # Epochs count from 1 here, as in Keras' "Epoch 2/3".
            message = (f"Resuming from {checkpointer.latest()} at epoch {start.epoch + 1}, "
                       f"step {start.step_in_epoch}.")
            logging.info(message)
            if verbose:
                print(message, flush=True)
        if chief:
            all_callbacks.append(keras.callbacks.TensorBoard(
                os.path.join(os.fspath(model_dir), LOGS_SUBDIR), write_graph=False,
                profile_batch=0))
    # Without model_dir there is nowhere to save, and SIGTERM keeps its default.
    preemption = _preemption.PreemptionWatcher(strategy) if model_dir is not None else None
    position = _plan.RunPosition(start, epochs, per_epoch)
    all_callbacks.insert(0, position)
    recorder = None
    if model_dir is not None:
        # Exact resumption (strategies._resume): the epoch's metrics, then the history.
        if restored is not None and start.step_in_epoch:
            all_callbacks.insert(0, _resume.RestoreEpochMetrics(
                checkpointer.resume_state, checkpointer.latest(), start.epoch))
        recorder = _resume.HistoryRecorder(checkpointer.resume_state)
        all_callbacks.append(recorder)
        all_callbacks.append(_checkpointing.CheckpointCallback(
            checkpointer, position, every_steps=checkpoint_every_steps, preemption=preemption))

    began = time.perf_counter()
    with preemption or contextlib.nullcontext():
        history = _train(model, strategy, data, trainer, start, all_callbacks, epochs=epochs,
                         steps_per_epoch=steps_per_epoch, per_epoch=per_epoch,
                         validation_data=validation_data,
                         validation_steps=validation_steps, verbose=verbose)
    train_seconds = time.perf_counter() - began
    _resume.prepend_saved_history(history, recorder, start.epoch)

    if model_dir is not None:
        _checkpointing.save_model(model, strategy, model_dir)
        if chief:
            _write_summary(model_dir, model, strategy, history, train_seconds)
    return history


def _train(model: keras.Model, strategy: tf.distribute.Strategy, data: _data.Data,
           trainer: _ps_training.CoordinatorTrainer | None, start: _plan.TrainingState,
           all_callbacks: list[keras.callbacks.Callback], *, epochs: int,
           steps_per_epoch: int | None, per_epoch: int | None,
           validation_data: _data.Data | None,
           validation_steps: int | None, verbose: int) -> keras.callbacks.History:
    if trainer is not None:
        callback_list = keras.callbacks.CallbackList(
            all_callbacks, add_history=True, add_progbar=False, model=model,
            epochs=epochs, steps=steps_per_epoch, verbose=verbose)
        return trainer.fit(epochs=epochs, steps_per_epoch=steps_per_epoch,
                           callbacks=callback_list, initial_epoch=start.epoch,
                           initial_step=start.step_in_epoch,
                           validation_data=validation_data, validation_steps=validation_steps)
    return _keras_fit(model, strategy, data, start, epochs=epochs,
                      steps_per_epoch=steps_per_epoch, per_epoch=per_epoch,
                      validation_data=validation_data,
                      validation_steps=validation_steps, callbacks=all_callbacks,
                      verbose=verbose)


def _build_variables(model: keras.Model, spec: Any) -> None:
    # The compiled metrics too: their state is checkpointed (strategies._resume).
    if not model.built or not _resume.metrics_built(model):
        _keras_compat.build_from_spec(model, spec)
    elif not model.optimizer.built:
        with model.distribute_strategy.scope():
            model.optimizer.build(model.trainable_variables)


def _prepare_keras_fit(model: keras.Model, strategy: tf.distribute.Strategy, path: str,
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


def _keras_fit(model: keras.Model, strategy: tf.distribute.Strategy, data: _data.Data,
               start: _plan.TrainingState, *, epochs: int, steps_per_epoch: int | None,
               per_epoch: int | None, validation_data: _data.Data | None, validation_steps: int | None,
               callbacks: list[keras.callbacks.Callback], verbose: int) -> keras.callbacks.History:
    """``model.fit``, resuming mid-epoch by first finishing the interrupted epoch alone."""
    common = dict(validation_data=None if validation_data is None
                  else _data.for_keras(validation_data, strategy),
                  validation_steps=validation_steps, callbacks=callbacks,
                  # Data arrive as tf.data, already shuffled (or not) by the caller;
                  # Keras would ignore shuffle=True for them and warn on every run.
                  shuffle=False, verbose=1 if verbose == 1 else 0)
    if start.step_in_epoch == 0 or start.epoch >= epochs:
        skip, _ = _resume.start_positions(data, strategy, start.global_step, 0, 0)
        return model.fit(_data.for_keras(_data.skip(data, skip), strategy), epochs=epochs,
                         steps_per_epoch=steps_per_epoch, initial_epoch=start.epoch, **common)
    if per_epoch is None:
        raise ValueError(
            "Resuming mid-epoch needs the epoch's length: pass steps_per_epoch or use data of "
            f"known cardinality. Received: steps_per_epoch={steps_per_epoch}, checkpoint at "
            f"epoch {start.epoch}, step {start.step_in_epoch}."
        )
    _plan.check_resumed_epoch(start, per_epoch - start.step_in_epoch)
    first_skip, next_skip = _resume.start_positions(data, strategy, start.global_step,
                                                    start.step_in_epoch, per_epoch - start.step_in_epoch)
    with _resume.no_final_ema_overwrite(model) if start.epoch + 1 < epochs else contextlib.nullcontext():
        first = model.fit(_data.for_keras(_data.skip(data, first_skip), strategy), epochs=start.epoch + 1,
                          steps_per_epoch=per_epoch - start.step_in_epoch,
                          initial_epoch=start.epoch, **common)
    record = {"epoch": list(first.epoch), "history": {k: list(v) for k, v in first.history.items()}}
    if start.epoch + 1 >= epochs or model.stop_training:
        return first
    history = model.fit(_data.for_keras(_data.skip(data, next_skip), strategy), epochs=epochs,
                        steps_per_epoch=steps_per_epoch, initial_epoch=start.epoch + 1, **common)
    history.epoch[:0] = record["epoch"]
    for key, values in record["history"].items():
        history.history.setdefault(key, [])[:0] = values
    return history


def _write_summary(model_dir: str | os.PathLike[str], model: keras.Model,
                   strategy: tf.distribute.Strategy, history: keras.callbacks.History,
                   train_seconds: float) -> None:
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
    with tf.io.gfile.GFile(os.path.join(os.fspath(model_dir), SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)


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


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}.")
