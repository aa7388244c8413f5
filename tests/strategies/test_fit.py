"""strategies.fit in one process: default, OneDevice and Mirrored over the 2 logical CPUs.

The multi-process strategies (MultiWorkerMirrored, ParameterServer) and the
SIGKILL resumption are in test_fit_cluster.py.
"""

from __future__ import annotations

import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import strategies
import tfopt
from strategies.compat import _keras_compat

BATCH = 8
STEPS = 4  # batches per epoch


def _one_device():
    return tf.distribute.OneDeviceStrategy("CPU:0")


def _mirrored():
    return _keras_compat.mirrored_strategy(["CPU:0", "CPU:1"])


def _data(batches: int = STEPS) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * batches, 3)).astype(np.float32)
    return x, np.sin(x.sum(axis=1, keepdims=True)).astype(np.float32)


def _dataset(batches: int = STEPS) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(_data(batches)).batch(BATCH)


def _model_fn(optimizer_fn, steps_per_execution: int = 1):
    def model_fn() -> keras.Model:
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                                  keras.layers.Dense(1)])
        model.compile(optimizer=optimizer_fn(), loss="mse", metrics=["mae"],
                      steps_per_execution=steps_per_execution)
        return model

    return model_fn


def _fit(strategy, optimizer_fn, **kwargs) -> keras.callbacks.History:
    kwargs.setdefault("epochs", 1)
    kwargs.setdefault("verbose", 0)
    return strategies.fit(_model_fn(optimizer_fn), kwargs.pop("data", _dataset()),
                          strategy=strategy, **kwargs)


def _assert_same_weights(expected: keras.Model, got: keras.Model, atol: float = 1e-5) -> None:
    for a, b in zip(expected.get_weights(), got.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, atol=atol)


# The full matrix (SGD, momentum, Adam x with/without global_clipnorm, and
# accumulation) runs under MultiWorkerMirrored in test_fit_cluster.py; here
# each optimizer, both clip settings and accumulation appear once.
EQUIVALENCE = [
    pytest.param(lambda: keras.optimizers.SGD(0.1), 1, id="sgd"),
    pytest.param(lambda: keras.optimizers.SGD(0.1, momentum=0.9, global_clipnorm=0.2), 3,
                 id="momentum-global_clipnorm-steps_per_execution3"),
    pytest.param(lambda: keras.optimizers.Adam(0.05, global_clipnorm=0.2,
                                               gradient_accumulation_steps=2), 1,
                 id="adam-global_clipnorm-accumulate2"),
    # A wrapper: the innermost optimizer is the one synchronized.
    pytest.param(lambda: tfopt.SkipNonFinite(keras.optimizers.SGD(
        0.1, momentum=0.9, clipnorm=0.1, gradient_accumulation_steps=2)), 1,
        id="skip_nonfinite-momentum-clipnorm-accumulate2"),
]


@pytest.mark.parametrize("optimizer_fn, steps_per_execution", EQUIVALENCE)
def test_mirrored_equals_one_device(optimizer_fn, steps_per_execution):
    reference = _fit(_one_device(), optimizer_fn)
    mirrored = _fit(_mirrored(), optimizer_fn, steps_per_execution=steps_per_execution)
    _assert_same_weights(reference.model, mirrored.model)
    assert int(mirrored.model.optimizer.iterations.numpy()) == int(
        reference.model.optimizer.iterations.numpy())
    np.testing.assert_allclose(mirrored.history["loss"], reference.history["loss"], rtol=1e-5)


def test_dataset_fn_of_per_replica_batches_equals_global_batches():
    # One input pipeline feeds both replicas in turn: per-replica batches of 4
    # are the two halves of each global batch of 8.
    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = context.get_per_replica_batch_size(BATCH)
        return tf.data.Dataset.from_tensor_slices(_data()).batch(batch)

    sgd = lambda: keras.optimizers.SGD(0.1)  # noqa: E731
    global_batches = _fit(_mirrored(), sgd)
    per_replica = _fit(_mirrored(), sgd, data=dataset_fn)
    _assert_same_weights(global_batches.model, per_replica.model)


def test_per_replica_clipping_keeps_keras_order():
    def model_fn() -> keras.Model:
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(
            1, use_bias=False, kernel_initializer="zeros")])
        model.compile(optimizer=keras.optimizers.SGD(1.0, clipnorm=1.0),
                      loss=lambda y, p: 2.0 * tf.reduce_mean(p))  # gradient 2 per example
        return model

    x = np.ones((4, 1), np.float32)
    data = tf.data.Dataset.from_tensor_slices((x, x)).batch(4)
    moves = {clip: float(strategies.fit(model_fn, data, strategy=_mirrored(), epochs=1,
                                        verbose=0, clip_gradients=clip).model.get_weights()[0][0, 0])
             for clip in ("after_all_reduce", "per_replica")}
    assert moves == pytest.approx({"after_all_reduce": -1.0, "per_replica": -2.0})


def test_history_has_per_epoch_logs_and_the_model_under_default_strategy():
    history = _fit(tf.distribute.get_strategy(), lambda: keras.optimizers.SGD(0.1),
                   validation_data=_dataset(2))
    assert history.epoch == [0]
    assert set(history.history) >= {"loss", "mae", "val_loss", "val_mae", "steps_per_second",
                                    "examples_per_second"}
    assert isinstance(history.model, keras.Model)
    assert int(history.model.optimizer.iterations.numpy()) == STEPS


def test_progress_line_reports_metrics_and_throughput(capsys):
    history = _fit(_mirrored(), lambda: keras.optimizers.SGD(0.1), verbose=2, epochs=1)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch")]
    assert len(lines) == 1
    match = re.fullmatch(r"Epoch 1/1 - loss: [\d.]+ - mae: [\d.]+ - (\d+) steps in ([\d.]+)s - "
                         r"([\d.]+) steps/s - (\d+) examples/s", lines[0])
    assert match, lines[0]
    assert int(match.group(1)) == STEPS
    examples_per_second = history.history["examples_per_second"][0]
    steps_per_second = history.history["steps_per_second"][0]
    # Every example counted once across both replicas: 8 examples per step.
    assert examples_per_second == pytest.approx(BATCH * steps_per_second, rel=1e-6)


def test_model_dir_gets_outputs_and_a_rerun_resumes(tmp_path):
    sgd = lambda: keras.optimizers.SGD(0.1)  # noqa: E731
    first = _fit(_one_device(), sgd, model_dir=tmp_path, epochs=2)
    assert {"checkpoints", "logs", "model.keras", "summary.json"} <= set(os.listdir(tmp_path))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 2 * STEPS and summary["num_replicas"] == 1
    assert summary["train"]["loss"] == pytest.approx(first.history["loss"][-1])
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    _assert_same_weights(first.model, loaded, atol=0)

    second = _fit(_one_device(), sgd, model_dir=tmp_path, epochs=3)
    # Resumed after the two finished epochs; the history holds the whole run's.
    assert second.epoch == [0, 1, 2] and second.epochs_before_restart == 2
    assert second.history["loss"][:2] == first.history["loss"]
    assert int(second.model.optimizer.iterations.numpy()) == 3 * STEPS


class _Crash(keras.callbacks.Callback):
    def __init__(self, epoch: int, batch: int) -> None:
        super().__init__()
        self.at = (epoch, batch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise RuntimeError("simulated crash")


def test_resumes_mid_epoch_and_matches_an_uninterrupted_run(tmp_path):
    sgd = lambda: keras.optimizers.SGD(0.1, momentum=0.9)  # noqa: E731
    uninterrupted = _fit(_mirrored(), sgd, epochs=3)
    # Checkpoints every 3 steps; the crash comes at global step 2*4 + 3 = 11,
    # before that step's checkpoint, so the newest is step 9: epoch 2, step 1.
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(_mirrored(), sgd, epochs=3, model_dir=tmp_path, checkpoint_every_steps=3,
             callbacks=[_Crash(epoch=2, batch=2)])
    resumed = _fit(_mirrored(), sgd, epochs=3, model_dir=tmp_path, checkpoint_every_steps=3)
    assert resumed.epoch == [0, 1, 2] and resumed.epochs_before_restart == 2
    assert int(resumed.model.optimizer.iterations.numpy()) == 3 * STEPS
    _assert_same_weights(uninterrupted.model, resumed.model)


def test_resume_rejects_a_checkpoint_of_another_model(tmp_path):
    _fit(_one_device(), lambda: keras.optimizers.SGD(0.1), model_dir=tmp_path, epochs=1)
    with pytest.raises(ValueError, match="does not match this model and optimizer"):
        _fit(_one_device(), lambda: keras.optimizers.Adam(0.1), model_dir=tmp_path, epochs=2)


def _uncompiled() -> keras.Model:
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])


BAD_ARGUMENTS = [
    ("epochs", dict(epochs=-1), "epochs=-1"),
    ("epochs-str", dict(epochs="3"), "epochs='3'"),
    ("steps_per_epoch", dict(steps_per_epoch=0), "steps_per_epoch=0"),
    ("steps_per_execution", dict(steps_per_execution=1.5), "steps_per_execution=1.5"),
    ("validation_steps", dict(validation_steps=-2), "validation_steps=-2"),
    ("checkpoint_every_steps", dict(checkpoint_every_steps=True), "checkpoint_every_steps=True"),
    ("clip_gradients", dict(clip_gradients="sideways"), "clip_gradients='sideways'"),
    ("verbose", dict(verbose=3), "verbose=3"),
    ("data", dict(data=[1, 2]), "data=[1, 2]"),
    ("validation_data", dict(validation_data="val.csv"), "validation_data='val.csv'"),
    ("strategy", dict(strategy="mirrored"), "strategy='mirrored'"),
    ("model_fn", dict(model_fn="mlp"), "model_fn='mlp'"),
    ("uncompiled", dict(model_fn=_uncompiled), "compiled=False"),
]


@pytest.mark.parametrize("overrides, received", [(o, r) for _, o, r in BAD_ARGUMENTS],
                         ids=[i for i, _, _ in BAD_ARGUMENTS])
def test_bad_arguments_name_the_value(overrides, received):
    kwargs = dict(model_fn=_model_fn(lambda: keras.optimizers.SGD(0.1)), data=_dataset(),
                  strategy=_one_device(), epochs=1, verbose=0)
    kwargs.update(overrides)
    with pytest.raises(ValueError) as error:
        strategies.fit(kwargs.pop("model_fn"), kwargs.pop("data"), **kwargs)
    assert received in str(error.value)


def test_per_replica_clipping_cannot_accumulate_under_mirrored():
    adam = lambda: keras.optimizers.Adam(0.1, gradient_accumulation_steps=2)  # noqa: E731
    with pytest.raises(ValueError, match=r"keras-team/keras#20582.*gradient_accumulation_steps=2"):
        _fit(_mirrored(), adam, clip_gradients="per_replica")
