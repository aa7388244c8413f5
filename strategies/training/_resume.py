"""What a checkpoint needs beyond weights and optimizer so that a resumed run is the same run.

`strategies.training._checkpointing` saves the model's weights (through the optimizer)
and the optimizer's state. A run resumed from that alone differs from the
uninterrupted run in four ways; this module closes each:

1. **Random state.** ``tf.train.Checkpoint(model=...)`` of a Keras 3 model
   saves none of the model's own variables: trainable weights are reached
   through the optimizer, but a ``Dropout``'s ``SeedGenerator`` state and a
   ``BatchNormalization``'s moving statistics are not saved at all. After a
   restart dropout drew the masks of step 0 again. `ResumeState` tracks every
   variable of ``model.variables`` (by position), and TensorFlow's global
   ``tf.random.Generator`` when the program made one.
2. **Data position.** See `start_positions`: for an endless dataset (one
   iterator for the whole run, ``steps_per_epoch`` set), the position is the
   number of batches trained, so the resumed run skips exactly those.
   Skipping replays the input pipeline without training; its order must
   therefore be a function of the position alone (``launch`` shuffles epoch
   ``e`` with the seed ``(seed, e)``; see ``launch._input``), which holds for
   any pipeline without ``reshuffle_each_iteration``. For a finite dataset
   (one iterator per epoch) the position is the step within the epoch.
3. **The epoch's metrics.** Keras resets metrics when an epoch begins, so a
   run resumed mid-epoch would report the metrics of the epoch's second part
   only. The metric variables are saved too, and `RestoreEpochMetrics`
   restores them again right after Keras' reset.
4. **History.** ``fit`` returns, and ``summary.json`` and the curves show,
   the history of every epoch: the epochs before the restart are saved as
   JSON in the checkpoint (`HistoryRecorder`) and put back in front.

The choice of a deterministic position over a ``tf.data`` iterator
checkpoint: Keras 3's ``model.fit`` makes its iterators itself
(``EpochIterator``) and offers no way to hand it a restored one without
patching Keras internals; and an iterator checkpoint of a shuffle buffer
holds the buffer (up to the whole dataset) in every checkpoint. The cost of
the deterministic position is replaying the skipped batches once, at restart.
"""

from __future__ import annotations

import json
from typing import Any

import keras
import tensorflow as tf

from strategies.compat import _keras_compat, _tf_internals
from strategies.training import _data

# The checkpoint key prefix of the generator's state (``ResumeState.tf_random_generator``).
GENERATOR_KEY = "resume/tf_random_generator/"


class GeneratorMismatchError(ValueError):
    """The checkpoint holds a global tf.random.Generator's state and this program has none."""


class ResumeState(tf.Module):
    """The trackable part of a checkpoint that makes resuming exact (see the module doc)."""

    def __init__(self, model: keras.Model) -> None:
        super().__init__(name="resume_state")
        # By position, as Keras orders them: paths hold auto-generated layer
        # names ("dense_3") that depend on how many models the process made.
        # The checkpoint's signature has already checked that the models match.
        # The Keras variables themselves (trackable under the TF backend), not
        # their tf.Variables: the trainable ones are also reached through the
        # optimizer, and one object is saved once, a second wrapper twice.
        self.model_variables = list(model.variables)
        self.metric_variables = list(model.metrics_variables)
        self.history = tf.Variable("{}", trainable=False, name="history")
        generator = _tf_internals.global_generator()
        if generator is not None:
            self.tf_random_generator = generator

    def restore(self, path: str) -> None:
        """Restores what ``path`` holds of this state; a part it lacks keeps its value.

        Lenient on purpose in one direction: a checkpoint written before a part
        existed (or by a program without a global generator) restores, and that
        part keeps its fresh value. The other direction drops state, so it is
        refused: the checkpoint holds TensorFlow's global generator and this
        program made none before ``fit`` (or made it after `ResumeState`).
        """
        reader = _keras_compat.checkpoint_reader(path)  # ram:// too.
        if not hasattr(self, "tf_random_generator") and any(
                key.startswith(GENERATOR_KEY) for key in reader.get_variable_to_shape_map()):
            raise GeneratorMismatchError(
                "it holds the state of TensorFlow's global tf.random.Generator, but this program "
                "made none before strategies.fit, so that state would be dropped and random draws "
                "would differ from the uninterrupted run (call tf.random.set_global_generator(...) "
                "before fit, as the run that wrote it did)")
        tf.train.Checkpoint(resume=self).restore(path).expect_partial()

    def record_history(self, epochs: list[int], history: dict[str, list[float]]) -> None:
        self.history.assign(json.dumps({"epoch": epochs, "history": history}))

    def saved_history(self) -> tuple[list[int], dict[str, list[float]]]:
        saved = json.loads(self.history.numpy().decode() or "{}")
        return list(saved.get("epoch", [])), dict(saved.get("history", {}))


def metrics_built(model: keras.Model) -> bool:
    """Whether the compiled loss and metrics have their variables (Keras builds them lazily)."""
    return all(getattr(getattr(model, name, None), "built", True)
               for name in ("_compile_metrics", "_compile_loss"))


class _MetricsOnly(tf.Module):
    def __init__(self, state: ResumeState) -> None:
        super().__init__(name="resume_state")
        self.metric_variables = list(state.metric_variables)


class RestoreEpochMetrics(keras.callbacks.Callback):
    """Puts the checkpoint's metric state back after Keras resets it at the resumed epoch's start.

    Restoring through a checkpoint (rather than ``assign``) is what makes this
    work for replica-local (sync-on-read) metric variables under a strategy:
    TensorFlow splits a saved sum over the replicas.
    """

    def __init__(self, state: ResumeState, path: str, epoch: int) -> None:
        super().__init__()
        self._checkpoint = tf.train.Checkpoint(resume=_MetricsOnly(state))
        self._path, self._epoch = path, epoch

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch == self._epoch and self._path is not None:
            self._checkpoint.restore(self._path).expect_partial()
            self._path = None  # Only the resumed epoch started mid-way.


class HistoryRecorder(keras.callbacks.Callback):
    """Keeps every epoch's logs (those before a restart included) in `ResumeState`.

    Goes before the checkpoint callback, so that an epoch-end checkpoint holds
    that epoch's logs.
    """

    def __init__(self, state: ResumeState) -> None:
        super().__init__()
        self.state = state
        self.epochs, self.history = state.saved_history()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epochs.append(epoch)
        for key, value in (logs or {}).items():
            value = value if isinstance(value, int) else float(value)
            self.history.setdefault(key, []).append(value)
        self.state.record_history(self.epochs, self.history)


def prepend_saved_history(history: keras.callbacks.History, recorder: HistoryRecorder | None,
                          first_epoch: int) -> None:
    """Puts the epochs run before the restart in front of ``history``.

    Sets ``history.epochs_before_restart`` to their number (0 for a run that
    did not resume), so that throughput counts only the epochs run here.
    """
    history.epochs_before_restart = 0
    if recorder is None:
        return
    before = [i for i, e in enumerate(recorder.epochs) if e < first_epoch]
    if not before:
        return
    history.epochs_before_restart = len(before)
    history.epoch[:0] = [recorder.epochs[i] for i in before]
    for key, values in recorder.history.items():
        history.history.setdefault(key, [])[:0] = values[: len(before)]


def is_stream(data: _data.Data, strategy: tf.distribute.Strategy) -> bool:
    """Whether ``data`` is endless, so that one iterator serves the whole run."""
    return int(_data.local_dataset(data, strategy).cardinality()) == int(tf.data.INFINITE_CARDINALITY)


def start_positions(data: _data.Data, strategy: tf.distribute.Strategy, global_step: int,
                    step_in_epoch: int, steps_in_first_fit: int) -> tuple[int, int]:
    """Batches to skip for the first ``model.fit`` call of a resumed run, and for the second.

    An endless dataset is read by one iterator from the run's first step: its
    position is ``global_step``, and the second call (the epochs after the
    resumed one) starts ``steps_in_first_fit`` batches further. A finite
    dataset is read from its start every epoch: its position is the step in
    the epoch, and the next epoch starts at 0.
    """
    if is_stream(data, strategy):
        return global_step, global_step + steps_in_first_fit
    return step_in_epoch, 0
