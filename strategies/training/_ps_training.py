"""Parameter-server training: a ClusterCoordinator loop around the model's own ``train_step``.

Keras 3 ``model.fit`` does not support ParameterServerStrategy
(keras-team/keras#18624: "pass this dataset to
ClusterCoordinator.create_per_worker_dataset"). This loop runs on the
coordinator (the chief) and keeps Keras' semantics where they apply: the
step is ``model.train_step`` (so the compiled loss, metrics and optimizer, or a
user's override, are used unchanged), epoch logs come from the model's metrics,
and callbacks, History and the epoch progress line work as under ``fit``.

What differs, by the nature of asynchronous training:

* Each scheduled step runs on whichever worker is free, on that worker's own
  copy of the input pipeline (``create_per_worker_dataset``), so the training
  data must repeat and ``steps_per_epoch`` is required.
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
from strategies.training import _data, _trainers


def check_arguments(steps_per_epoch: int | None, steps_per_execution: int | None) -> None:
    """Raises ValueError for arguments parameter-server training cannot honour."""
    if steps_per_epoch is None:
        raise ValueError(
            "Parameter-server training needs `steps_per_epoch`: each worker reads its own "
            "copy of the data, so an epoch cannot end when the data does. Repeat the dataset "
            "(`.repeat()`) and pass steps_per_epoch. Received: steps_per_epoch=None."
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
        data: a repeating Dataset of batches, or ``dataset_fn(input_context)``.
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

        if _data.is_dataset_fn(data):
            @tf.function
            def per_worker_dataset() -> Any:
                return strategy.distribute_datasets_from_function(data)
        else:
            def per_worker_dataset() -> Any:
                return data
        self._iterator = iter(self.coordinator.create_per_worker_dataset(per_worker_dataset))

        @tf.function
        def train_step(iterator: Any) -> None:
            # Logs stay on the workers: the epoch's come from the metrics.
            strategy.run(model.train_step, args=(next(iterator),))

        self._train_step = train_step
        self._test_step = tf.function(model.test_step, reduce_retracing=True)

    shows_progress_bar = False  # Steps are scheduled in chunks; one line per epoch instead.

    def train(self, run: _trainers.Run) -> keras.callbacks.History:
        callbacks = keras.callbacks.CallbackList(
            run.callbacks, add_history=True, add_progbar=False, model=self.model,
            epochs=run.epochs, steps=run.steps_per_epoch, verbose=run.verbose)
        return self.fit(epochs=run.epochs, steps_per_epoch=run.steps_per_epoch, callbacks=callbacks,
                        initial_epoch=run.start.epoch, initial_step=run.start.step_in_epoch,
                        validation_data=run.validation_data, validation_steps=run.validation_steps)

    def fit(self, *, epochs: int, steps_per_epoch: int, callbacks: keras.callbacks.CallbackList,
            initial_epoch: int = 0, initial_step: int = 0, validation_data: _data.Data | None = None,
            validation_steps: int | None = None) -> keras.callbacks.History:
        """Trains from (``initial_epoch``, ``initial_step``) to ``epochs``; returns History."""
        model = self.model
        model.stop_training = False
        chunk = self.chunk_steps or steps_per_epoch
        logs: dict[str, Any] = {}
        callbacks.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            model.reset_metrics()
            callbacks.on_epoch_begin(epoch)
            done = initial_step if epoch == initial_epoch else 0
            while done < steps_per_epoch:
                n = min(chunk - done % chunk, steps_per_epoch - done)
                for _ in range(n):
                    self.coordinator.schedule(self._train_step, args=(self._iterator,))
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
