"""Checkpoints and ``.keras`` files written by an older version restore and train on.

``tests/fixtures/old_checkpoints/096621c/`` was written by commit 096621c
(the project when issue 23 began; see that directory's README and
``make_fixtures.py``): the digits MLP and CNN with Adam, LAMB and Shampoo,
each a checkpoint directory whose newest checkpoint is mid-epoch (epoch 0,
step 2) and a ``model.keras``. Every future version must restore them: a
format change needs a migration, or a one-line refusal that names the version.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import strategies
import tfopt

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "old_checkpoints"
OLD = FIXTURES / "096621c"
CASES = [f"{m}-{o}" for m in ("mlp", "cnn") for o in ("adam", "lamb", "shampoo")]
CLASSES = {"adam": tfopt.Adam, "lamb": tfopt.LAMB, "shampoo": tfopt.Shampoo}

_spec = importlib.util.spec_from_file_location("digits_models", FIXTURES / "digits_models.py")
digits_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(digits_models)
PROVENANCE = json.loads((OLD / "PROVENANCE.json").read_text())


def _data() -> tf.data.Dataset:
    # make_fixtures.py's data.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, *digits_models.INPUT_SHAPE), dtype=np.uint8)
    labels = rng.integers(0, digits_models.NUM_CLASSES, (64,), dtype=np.int64)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(8).repeat()


def _model_fn(case: str):
    model_name, optimizer = case.split("-")
    hyperparameters = PROVENANCE["optimizers"][optimizer]

    def model_fn() -> keras.Model:
        model = digits_models.build_model(model_name)
        model.compile(optimizer=tfopt.get(optimizer, **hyperparameters),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
        return model
    return model_fn


class _Restored(keras.callbacks.Callback):
    """Records the weights and step counter training starts from."""

    iterations = None

    def on_train_begin(self, logs=None):
        # A resumed run finishes the interrupted epoch in one Keras fit and runs the rest in another.
        if self.iterations is not None:
            return
        self.iterations = int(self.model.optimizer.iterations.numpy())
        self.weights = [v.numpy() for v in self.model.trainable_variables]


def test_the_fixtures_are_the_old_commits():
    assert PROVENANCE["commit"].startswith("096621c")
    assert (PROVENANCE["tensorflow"], PROVENANCE["keras"]) == ("2.21.0", "3.15.1")
    assert sorted(p.name for p in OLD.iterdir() if p.is_dir()) == sorted(CASES)
    for case in CASES:
        assert tf.train.latest_checkpoint(str(OLD / case / "checkpoints")).endswith("ckpt-2")
    # A guard on this file's size budget: the fixtures stay small.
    assert sum(p.stat().st_size for p in OLD.rglob("*") if p.is_file()) < 2_000_000


@pytest.mark.parametrize("case", CASES)
def test_old_checkpoint_resumes_and_trains_on(tmp_path, case):
    shutil.copytree(OLD / case, tmp_path / case)
    model_dir = tmp_path / case
    keras.utils.set_random_seed(0)
    tf.random.set_global_generator(tf.random.Generator.from_seed(0))
    restored = _Restored()
    history = strategies.fit(_model_fn(case), _data(), strategy=strategies.build("default"),
                             epochs=2, steps_per_epoch=3, model_dir=model_dir, resume=True,
                             verbose=0, callbacks=[restored])
    # It started where the old run's checkpoint stood, with its weights...
    reader = tf.train.load_checkpoint(str(OLD / case / "checkpoints" / "ckpt-2"))
    assert restored.iterations == PROVENANCE["checkpoints"]["position"]["global_step"] == 2
    for i, value in enumerate(restored.weights):
        saved = reader.get_tensor(f"optimizer/_trainable_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE")
        np.testing.assert_array_equal(value, saved)
    # ...finished epoch 0 (1 step) and ran epoch 1 (3 steps), and wrote the new files.
    model = history.model
    assert int(model.optimizer.iterations.numpy()) == 6
    assert history.epoch == [0, 1]
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-6")
    assert strategies.load_model(model_dir / "model.keras").optimizer.iterations.numpy() == 6


@pytest.mark.parametrize("case", CASES)
def test_old_keras_file_loads_and_trains_on(case):
    model_name, optimizer = case.split("-")
    model = strategies.load_model(OLD / case / "model.keras")
    assert model.name == model_name
    assert type(model.optimizer) is CLASSES[optimizer]
    if optimizer == "shampoo":  # Saved before root_method existed: Newton's roots, as then.
        assert model.optimizer.root_method == "newton"
    assert int(model.optimizer.iterations.numpy()) == PROVENANCE["model.keras"]["steps_per_epoch"]
    images, _ = next(iter(_data()))
    assert model.predict(images, verbose=0).shape == (8, digits_models.NUM_CLASSES)
    model.fit(_data(), steps_per_epoch=1, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 3
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)


def test_a_checkpoint_of_another_optimizer_is_refused(tmp_path):
    # The restore above is a real check: the fixture's signature is read and compared.
    shutil.copytree(OLD / "mlp-adam", tmp_path / "run")
    with pytest.raises(strategies.CheckpointMismatchError, match="Adam.*LAMB|LAMB.*Adam"):
        strategies.fit(_model_fn("mlp-lamb"), _data(), strategy=strategies.build("default"),
                       epochs=1, steps_per_epoch=3, model_dir=tmp_path / "run", verbose=0)
