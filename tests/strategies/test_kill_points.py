"""A run killed right after *any* of its checkpoints resumes to the uninterrupted run, bitwise.

Generated, not sampled: for every job shape below (``checkpoint_every_steps``
dividing the epoch and not dividing it; ``steps_per_epoch`` given over endless
data and None over finite data), the uninterrupted run's model_dir is copied
right after each checkpoint is written, which is what a SIGKILL at that moment
leaves on disk. Each copy is then resumed by a new ``fit``, which must finish
exactly the planned steps and end with the same variables and history. The
copies include the checkpoints on an epoch's last step (issue 24: they resumed
into an epoch with no steps left, which Keras ran without a step limit) and the
one after the final step (a finished run: it writes its outputs and returns).

The multi-worker boundary case is tests/strategies/test_fit_cluster.py.
"""

from __future__ import annotations

import itertools
import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import strategies
from launch import _input
from strategies.compat import _keras_compat
from strategies.training import _checkpointing, _plan

BATCH, STEPS, EPOCHS = 4, 4, 2
EXAMPLES = BATCH * STEPS

STRATEGIES = {
    "one_device": lambda: tf.distribute.OneDeviceStrategy("CPU:0"),
    "mirrored": lambda: _keras_compat.mirrored_strategy(["CPU:0", "CPU:1"]),
}
EVERY = {"divides": 2, "does_not_divide": 3}
STEPS_PER_EPOCH = {"given": STEPS, "none": None}
SHAPES = list(itertools.product(STRATEGIES, EVERY, STEPS_PER_EPOCH))


def _model_fn() -> keras.Model:
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dropout(0.25), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(0.02), "mse", metrics=["mae"])
    return model


def _data(steps_per_epoch: int | None) -> tf.data.Dataset:
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(EXAMPLES, 5)).astype(np.float32)
    y = np.tanh(x.sum(axis=1, keepdims=True)).astype(np.float32)
    examples = tf.data.Dataset.from_tensor_slices((x, y))
    if steps_per_epoch is None:  # Finite: one pass per epoch, read from its start each time.
        return examples.batch(BATCH)
    return _input.epoch_stream(examples, EXAMPLES, BATCH, seed=7, drop_remainder=True)


def _fit(strategy: str, every: str, steps_per_epoch: str, model_dir) -> keras.callbacks.History:
    return strategies.fit(_model_fn, _data(STEPS_PER_EPOCH[steps_per_epoch]),
                          strategy=STRATEGIES[strategy](), epochs=EPOCHS,
                          steps_per_epoch=STEPS_PER_EPOCH[steps_per_epoch], model_dir=model_dir,
                          checkpoint_every_steps=EVERY[every], verbose=0)


def _variables(model: keras.Model) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in [*model.variables, *model.optimizer.variables]]


def _run_with_snapshots(shape, model_dir, snapshots_dir, monkeypatch):
    """The uninterrupted run; model_dir is copied right after each checkpoint is written."""
    snapshots: list[tuple[_plan.TrainingState, str]] = []
    save = _checkpointing.Checkpointer.save

    def save_and_copy(self, state):
        path = save(self, state)
        copy = snapshots_dir / f"after-{len(snapshots)}"
        shutil.copytree(model_dir, copy)
        snapshots.append((state, str(copy)))
        return path

    monkeypatch.setattr(_checkpointing.Checkpointer, "save", save_and_copy)
    history = _fit(*shape, model_dir)
    monkeypatch.undo()
    return history, snapshots


@pytest.mark.parametrize("shape", SHAPES, ids=["-".join(s) for s in SHAPES])
def test_a_kill_after_any_checkpoint_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch, shape):
    reference, snapshots = _run_with_snapshots(shape, tmp_path / "reference", tmp_path, monkeypatch)
    planned = EPOCHS * STEPS
    assert int(reference.model.optimizer.iterations.numpy()) == planned
    positions = [state for state, _ in snapshots]
    # Every epoch end and every due step is checkpointed, each position once, in order.
    every = EVERY[shape[1]]
    due = sorted({s for s in range(1, planned + 1) if s % every == 0 or s % STEPS == 0})
    assert [p.global_step for p in positions] == due, positions
    assert all(p.step_in_epoch < STEPS for p in positions), positions  # Epoch ends are (e + 1, 0).
    assert positions[-1] == _plan.TrainingState(EPOCHS, 0, planned)
    want = _variables(reference.model)

    for state, snapshot in snapshots:
        resumed = _fit(*shape, snapshot)
        where = f"killed after the checkpoint at {state}"
        assert int(resumed.model.optimizer.iterations.numpy()) == planned, where
        got = _variables(resumed.model)
        different = [i for i, (a, b) in enumerate(zip(want, got, strict=True))
                     if not np.array_equal(a, b)]
        assert different == [], (where, different)
        assert resumed.epoch == list(range(EPOCHS)), where
        for key in ("loss", "mae"):
            np.testing.assert_allclose(resumed.history[key], reference.history[key], rtol=1e-6,
                                       err_msg=f"{key}, {where}")
        summary = json.loads((tmp_path / snapshot / "summary.json").read_text())
        assert summary["steps"] == planned, where
        assert (tmp_path / snapshot / "model.keras").exists(), where


def _legacy_boundary_checkpoint(model_dir, snapshot_at_epoch_end: str) -> None:
    """Rewrites the epoch-0 end checkpoint as the old code wrote it: (0, STEPS) not (1, 0)."""
    shutil.copytree(snapshot_at_epoch_end, model_dir)
    strategy = STRATEGIES["one_device"]()
    with strategy.scope():
        model = _model_fn()
    model.build((None, 5))
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    # The compiled metrics' variables exist once the model has been evaluated.
    model.evaluate(_data(None).take(1), verbose=0)
    checkpointer = _checkpointing.Checkpointer(model, strategy, model_dir)
    assert checkpointer.restore() == _plan.TrainingState(1, 0, STEPS)
    checkpointer.save(_plan.TrainingState(0, STEPS, STEPS))
    assert checkpointer.restore() == _plan.TrainingState(0, STEPS, STEPS)


def test_a_checkpoint_written_at_an_epochs_last_step_by_older_code_resumes_at_the_next(
        tmp_path, monkeypatch):
    shape = ("one_device", "divides", "given")
    reference, snapshots = _run_with_snapshots(shape, tmp_path / "reference", tmp_path, monkeypatch)
    epoch_end = next(path for state, path in snapshots if state.global_step == STEPS)
    _legacy_boundary_checkpoint(tmp_path / "legacy", epoch_end)

    resumed = _fit(*shape, tmp_path / "legacy")
    assert int(resumed.model.optimizer.iterations.numpy()) == EPOCHS * STEPS
    assert all(np.array_equal(a, b) for a, b in
               zip(_variables(reference.model), _variables(resumed.model), strict=True))

    # Without the normalization (the bug), fit refuses the empty epoch instead of running
    # it without a step limit, and names the position.
    shutil.rmtree(tmp_path / "legacy")
    _legacy_boundary_checkpoint(tmp_path / "legacy", epoch_end)
    monkeypatch.setattr(_plan.TrainingState, "normalized", lambda self, steps: self)
    with pytest.raises(_plan.PlanExceededError, match=r"epoch 0 step 4 \(global step 4\)"):
        _fit(*shape, tmp_path / "legacy")


def test_a_checkpoint_past_a_shorter_epoch_is_refused(tmp_path):
    state = _plan.TrainingState(1, 3, 7)
    with pytest.raises(_plan.PlanExceededError, match=r"epoch 1 step 3 \(global step 7\).*steps_per_epoch=2"):
        state.normalized(2)
    assert state.normalized(4) == state
    assert _plan.TrainingState(1, 4, 8).normalized(4) == _plan.TrainingState(2, 0, 8)
    assert state.normalized(None) == state


def test_training_past_the_plan_is_stopped_with_the_position():
    position = _plan.RunPosition(_plan.TrainingState(), epochs=1, steps_per_epoch=2)
    position.set_params({"steps": None, "epochs": 1})  # Keras passes no limit for an unbounded epoch.
    position.on_epoch_begin(0)
    position.on_train_batch_end(0)
    position.on_train_batch_end(1)
    assert position.at_epoch_end
    with pytest.raises(_plan.PlanExceededError, match=r"epoch 0 step 3 \(global step 3\).*2 steps"):
        position.on_train_batch_end(2)


def test_a_resumed_run_past_its_plan_is_refused():
    with pytest.raises(_plan.PlanExceededError, match=r"global step 9.*epochs=2"):
        _plan.check_start(_plan.TrainingState(2, 1, 9), epochs=2, steps_per_epoch=4)


def test_endless_data_without_steps_per_epoch_is_refused(tmp_path):
    data = _data(None).repeat()
    with pytest.raises(ValueError, match="steps_per_epoch=None"):
        strategies.fit(_model_fn, data, strategy=STRATEGIES["one_device"](), epochs=1, verbose=0)
