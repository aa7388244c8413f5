"""Parameter-server training: a ClusterCoordinator loop around the model's own ``train_step``.

Keras 3 ``model.fit`` does not support ParameterServerStrategy
(keras-team/keras#18624: "pass this dataset to
ClusterCoordinator.create_per_worker_dataset"). This loop runs on the
coordinator (the chief) and keeps Keras' semantics where they apply: the
step is ``model.train_step`` (so the compiled loss, metrics and optimizer, or a
user's override, are used unchanged), epoch logs come from the model's metrics,
and callbacks, History and the epoch progress line work as under ``fit``.

The two input conventions of `strategies.fit`, each as TensorFlow's
parameter-server guide allows:

* ``dataset_fn(input_context)``: one input pipeline per worker
  (``strategy.distribute_datasets_from_function`` inside
  ``coordinator.create_per_worker_dataset``). Each scheduled step reads the
  next batch of whichever worker runs it, so the data must repeat and
  ``steps_per_epoch`` is required. Under parameter servers every worker's
  ``input_context`` is pipeline 0 of 1 (TensorFlow gives no worker index), so
  each worker reads the whole data: shuffle it differently per worker, as the
  guide advises. This is the path that scales: input runs on the workers.
* a ``tf.data.Dataset`` of global batches: read on the coordinator, and step k
  gets batch k as an argument of the scheduled function (its tensors travel
  with the step). Every batch is trained on exactly once, in the order one
  device would read them (an endless dataset from one iterator, a finite one
  from its start each epoch, as Keras' ``fit``), which is one-device semantics
  but for the asynchrony of the updates; with one worker, the run equals one
  device. The guide's other route, ``create_per_worker_dataset(dataset)``, would
  give every worker a serialized copy of the whole dataset, so N workers
  would train on every batch N times: not the same run. The cost is that the
  coordinator produces every batch; when that is the bottleneck, pass a
  ``dataset_fn``. A captured dataset cannot be sent to a worker at all
  ("Unable to parse tensor proto", the failure this replaces).

What differs, by the nature of asynchronous training:

* Each scheduled step runs on whichever worker is free.
* Steps are scheduled in chunks and joined at chunk ends; batch-level
  callbacks see only those chunk ends.
* Validation runs on the coordinator, over the whole validation data (or
  ``validation_steps`` batches), reading the variables on the parameter servers.
* The optimizer's step counter and the metrics are made atomic
  (`_keras_compat.make_counters_atomic`), so ``optimizer.iterations`` equals
  the number of steps scheduled.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from strategies.compat import _keras_compat
from strategies.training import _data, _resume, _trainers


def check_arguments(data: _data.Data, steps_per_epoch: int | None, steps_per_execution: int | None) -> None:
    """Raises ValueError, before any step, for arguments parameter-server training cannot honour."""
    if _data.is_dataset_fn(data):
        if steps_per_epoch is None:
            raise ValueError(
                "Parameter-server training from a dataset_fn needs `steps_per_epoch`: each worker "
                "reads its own copy of the data, so an epoch cannot end when the data does. Repeat "
                "the dataset (`.repeat()`) and pass steps_per_epoch. Received: steps_per_epoch=None."
            )
    else:
        batches = int(data.cardinality())
        if batches == int(tf.data.UNKNOWN_CARDINALITY) and steps_per_epoch is None:
            raise ValueError(
                "Parameter-server training needs `steps_per_epoch` for a tf.data.Dataset of unknown "
                "length (after filter(), say): the coordinator schedules a known number of steps. "
                "Received: steps_per_epoch=None."
            )
        if batches >= 0 and steps_per_epoch is not None and steps_per_epoch > batches:
            raise ValueError(
                f"`data` has {batches} batches, fewer than steps_per_epoch={steps_per_epoch}, and "
                "parameter-server training reads a tf.data.Dataset from its start each epoch: "
                "repeat it (`.repeat()`), lower steps_per_epoch, or pass a dataset_fn. Received: "
                f"steps_per_epoch={steps_per_epoch}."
            )
    if steps_per_execution not in (None, 1):
        raise ValueError(
            "Parameter-server training schedules one step per function call; "
            "steps_per_execution must be 1 or None. "
            f"Received: steps_per_execution={steps_per_execution}."
        )


class CoordinatorTrainer(_trainers.Trainer):
    """Runs epochs of ``model.train_step`` on the workers of a ParameterServerStrategy.

    Args:
        model: compiled under ``strategy.scope()``.
        strategy: a ``tf.distribute.ParameterServerStrategy``.
        data: a Dataset of global batches (read on the coordinator), or a
            repeating ``dataset_fn(input_context)`` (read on each worker).
        chunk_steps: steps scheduled between two joins (for checkpoints every N steps).
    """

    def __init__(self, model: keras.Model, strategy: tf.distribute.Strategy, data: _data.Data,
                 chunk_steps: int | None = None) -> None:
        self.model = model
        self.strategy = strategy
        self.chunk_steps = chunk_steps
        # Workers update the parameter servers' variables from a replica
        # context: Keras' merge_call inside a cond (accumulation, EMA overwrite,
        # keras-team/keras#20582) fails there too, the replica-local path does not.
        _keras_compat.synchronize_gradients(model.optimizer)
        _keras_compat.build_from_spec(model, _data.element_spec(data, strategy))
        _keras_compat.make_counters_atomic(model)
        self.coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
        self.data = data
        self._iterator: Any = None  # Per-worker iterators (dataset_fn) or the coordinator's (Dataset).

        if _data.is_dataset_fn(data):
            @tf.function
            def per_worker_dataset() -> Any:
                return strategy.distribute_datasets_from_function(data)

            self._iterator = iter(self.coordinator.create_per_worker_dataset(per_worker_dataset))

            @tf.function
            def train_step(iterator: Any) -> None:
                # Logs stay on the workers: the epoch's come from the metrics.
                strategy.run(model.train_step, args=(next(iterator),))
        else:
            @tf.function(reduce_retracing=True)
            def train_step(batch: Any) -> None:
                strategy.run(model.train_step, args=(batch,))

        self._train_step = train_step
        self._test_step = tf.function(model.test_step, reduce_retracing=True)

    shows_progress_bar = False  # Steps are scheduled in chunks; one line per epoch instead.

    def train(self, run: _trainers.Run) -> keras.callbacks.History:
        callbacks = keras.callbacks.CallbackList(
            run.callbacks, add_history=True, add_progbar=False, model=self.model,
            epochs=run.epochs, steps=run.steps_per_epoch, verbose=run.verbose)
        return self.fit(epochs=run.epochs, steps_per_epoch=run.per_epoch, callbacks=callbacks,
                        initial_epoch=run.start.epoch, initial_step=run.start.step_in_epoch,
                        initial_global_step=run.start.global_step,
                        validation_data=run.validation_data, validation_steps=run.validation_steps)

    def fit(self, *, epochs: int, steps_per_epoch: int, callbacks: keras.callbacks.CallbackList,
            initial_epoch: int = 0, initial_step: int = 0, initial_global_step: int = 0,
            validation_data: _data.Data | None = None,
            validation_steps: int | None = None) -> keras.callbacks.History:
        """Trains from (``initial_epoch``, ``initial_step``) to ``epochs``; returns History."""
        model = self.model
        stream = not _data.is_dataset_fn(self.data) and _resume.is_stream(self.data, self.strategy)
        if stream:  # One iterator for the run, from the step it stands at.
            self._iterator = iter(self.data.skip(initial_global_step))
        model.stop_training = False
        chunk = self.chunk_steps or steps_per_epoch
        logs: dict[str, Any] = {}
        callbacks.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            model.reset_metrics()
            callbacks.on_epoch_begin(epoch)
            done = initial_step if epoch == initial_epoch else 0
            if not _data.is_dataset_fn(self.data) and not stream:  # A finite Dataset: from its start.
                self._iterator = iter(self.data.skip(done))
            while done < steps_per_epoch:
                n = min(chunk - done % chunk, steps_per_epoch - done)
                for i in range(n):
                    self.coordinator.schedule(self._train_step, args=(self._next_input(epoch, done + i),))
                self.coordinator.join()  # Re-raises the first error of any step.
                done += n
                # Batch indices count from the start of this call's first epoch.
                first = initial_step if epoch == initial_epoch else 0
                callbacks.on_train_batch_end(done - first - 1)
            logs = self._metrics()
            if validation_data is not None:
                logs.update({f"val_{k}": v for k, v in
                             self.evaluate(validation_data, validation_steps, callbacks).items()})
            callbacks.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
        # As Keras' fit does at the end: with use_ema, the weights become their averages.
        model.optimizer.finalize_variable_values(model.trainable_variables)
        callbacks.on_train_end(logs)
        return model.history

    def _next_input(self, epoch: int, step: int) -> Any:
        """The scheduled step's argument: the per-worker iterators, or the coordinator's next batch."""
        if _data.is_dataset_fn(self.data):
            return self._iterator
        try:
            return next(self._iterator)
        except StopIteration:
            # Only data of unknown length gets here; a known short one is refused before training.
            raise ValueError(
                f"`data` ran out at step {step} of epoch {epoch + 1}, before steps_per_epoch: repeat it "
                "(`.repeat()`) or pass a smaller steps_per_epoch."
            ) from None

    def evaluate(self, data: _data.Data, steps: int | None,
                 callbacks: keras.callbacks.CallbackList | None = None) -> dict[str, float]:
        """One pass over ``data`` on the coordinator; returns the metrics (loss first)."""
        if callbacks is not None:
            callbacks.on_test_begin()
        self.model.reset_metrics()
        dataset = _data.local_dataset(data, self.strategy)
        if steps is not None:
            dataset = dataset.take(steps)
        for batch in dataset:
            self._test_step(batch)
        logs = self._metrics()
        if callbacks is not None:
            callbacks.on_test_end(logs)
        return logs

    def _metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.model.get_metrics_result().items()}
