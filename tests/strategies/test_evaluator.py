"""`strategies.evaluate_checkpoints` on the checkpoints a single-process `fit` wrote.

The multi-process side (an evaluator task beside a multi-worker job, through
launch.local_cluster) is in tests/launch/test_evaluator_cluster.py.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

import strategies

BATCH, STEPS, EPOCHS = 8, 3, 2


def _model_fn():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse", metrics=["mae"])
    return model


def _dataset(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH * STEPS, 3)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, np.sin(x.sum(1, keepdims=True)))).batch(BATCH)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("run"))
    history = strategies.fit(_model_fn, _dataset(), strategy=tf.distribute.get_strategy(), epochs=EPOCHS,
                             model_dir=model_dir, verbose=0)
    return model_dir, history.model


def test_evaluates_the_final_checkpoint_once_and_stops(run_dir):
    model_dir, trained = run_dir
    records = strategies.evaluate_checkpoints(_model_fn, _dataset(seed=1), model_dir, timeout=30)
    # The run is over: each kept checkpoint (one per epoch), oldest first, up to the last one
    # (summary.json says which).
    assert [r["step"] for r in records] == [STEPS, STEPS * EPOCHS]
    assert [r["epoch"] for r in records] == [1, EPOCHS]
    expected = trained.evaluate(_dataset(seed=1), verbose=0, return_dict=True)
    for name, value in expected.items():
        assert records[-1]["metrics"][name] == pytest.approx(value, rel=1e-6), name
    with open(os.path.join(model_dir, "eval.jsonl")) as f:
        assert [json.loads(line) for line in f] == records
    # TensorBoard scalars at the checkpoint's step, beside fit's own logs.
    events = event_accumulator.EventAccumulator(os.path.join(model_dir, "logs", "eval"),
                                                size_guidance={"tensors": 0})
    events.Reload()
    assert {"evaluation_loss_vs_iterations", "evaluation_mae_vs_iterations"} <= set(events.Tags()["tensors"])
    assert [e.step for e in events.Tensors("evaluation_mae_vs_iterations")] == [STEPS, STEPS * EPOCHS]
    # A restarted evaluator finds the run finished and evaluates nothing again.
    assert strategies.evaluate_checkpoints(_model_fn, _dataset(seed=1), model_dir, timeout=30) == []


def test_stops_at_final_step_and_times_out_without_checkpoints(tmp_path, run_dir):
    model_dir, _ = run_dir
    # final_step alone ends it (a fresh log, so nothing counts as evaluated).
    fresh = tmp_path / "copy"
    tf.io.gfile.makedirs(str(fresh / "checkpoints"))
    for name in tf.io.gfile.listdir(os.path.join(model_dir, "checkpoints")):
        tf.io.gfile.copy(os.path.join(model_dir, "checkpoints", name), str(fresh / "checkpoints" / name))
    records = strategies.evaluate_checkpoints(_model_fn, _dataset(), str(fresh), final_step=STEPS * EPOCHS,
                                              timeout=30)
    assert [r["step"] for r in records] == [STEPS, STEPS * EPOCHS]
    with pytest.raises(TimeoutError, match="No new checkpoint .* for 1 s"):
        strategies.evaluate_checkpoints(_model_fn, _dataset(), str(tmp_path / "empty"), timeout=1,
                                        poll_interval=0.2)


def test_a_restarted_evaluator_catches_up_on_every_kept_checkpoint(tmp_path):
    # A run with checkpoints every 2 steps and at each epoch's end (3); the manager keeps the newest
    # three: 3, 4, 6. The evaluator "died" after recording step 3 (its first life is run for real,
    # on a state file listing only that checkpoint).
    model_dir = str(tmp_path / "run")
    strategies.fit(_model_fn, _dataset(), strategy=tf.distribute.get_strategy(), epochs=EPOCHS,
                   model_dir=model_dir, checkpoint_every_steps=2, verbose=0)
    directory = os.path.join(model_dir, "checkpoints")
    state = tf.train.get_checkpoint_state(directory)
    kept = list(state.all_model_checkpoint_paths)
    assert [int(p.rpartition("-")[2]) for p in kept] == [3, 4, 6]
    os.rename(os.path.join(model_dir, "summary.json"), str(tmp_path / "summary.json"))
    _write_state(directory, kept[:1])
    first = strategies.evaluate_checkpoints(_model_fn, _dataset(seed=1), model_dir, final_step=3, timeout=30)
    assert [r["step"] for r in first] == [3]
    # The run went on to its end while the evaluator was down: both later checkpoints are
    # evaluated, oldest first (tf-keras' SidecarEvaluator took only the newest), the final one included.
    _write_state(directory, kept)
    os.rename(str(tmp_path / "summary.json"), os.path.join(model_dir, "summary.json"))
    again = strategies.evaluate_checkpoints(_model_fn, _dataset(seed=1), model_dir, timeout=30)
    assert [r["step"] for r in again] == [4, 6]
    with open(os.path.join(model_dir, "eval.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [3, 4, 6]


def _write_state(directory, paths):
    """The `checkpoint` state file CheckpointManager writes (a text proto), listing ``paths``."""
    lines = [f'model_checkpoint_path: "{paths[-1]}"'] + [f'all_model_checkpoint_paths: "{p}"' for p in paths]
    with open(os.path.join(directory, "checkpoint"), "w") as f:
        f.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("kwargs, received", [
    ({"model_dir": None}, "model_dir=None"),
    ({"steps": 0}, "steps=0"),
    ({"timeout": float("nan")}, "timeout=nan"),
], ids=["no-model-dir", "zero-steps", "nan-timeout"])
def test_bad_arguments_name_the_value(kwargs, received):
    arguments = {"model_dir": "/tmp/unused", **kwargs}
    with pytest.raises(ValueError, match=received):
        strategies.evaluate_checkpoints(_model_fn, _dataset(), **arguments)
