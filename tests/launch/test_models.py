"""launch._models: one builder, three models, any TFDS image shape."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from launch import _models

SHAPES = [((8, 8, 1), 10), ((28, 28, 1), 10), ((32, 32, 3), 100)]


def test_available_is_pinned() -> None:
    assert _models.available() == ["mlp", "cnn", "resnet_small"]


@pytest.mark.parametrize("name", _models.available())
@pytest.mark.parametrize("shape, classes", SHAPES, ids=["digits", "mnist", "cifar100"])
def test_builds_logits_for_uint8_images(name: str, shape: tuple[int, ...], classes: int) -> None:
    model = _models.build_model(name, shape, classes)
    assert model.name == name and model.output_shape == (None, classes)
    images = np.random.default_rng(0).integers(0, 256, size=(2, *shape), dtype=np.uint8)
    logits = model(images, training=False)
    assert logits.shape == (2, classes)
    # Logits, not probabilities: rows do not sum to one.
    assert not np.allclose(np.sum(keras.ops.convert_to_numpy(logits), axis=-1), 1.0)


def test_rescales_raw_pixels_inside_the_model() -> None:
    # uint8 255 and float 1.0 differ only before the model's Rescaling layer.
    model = _models.build_model("mlp", (8, 8, 1), 10)
    rescaling = next(layer for layer in model.layers if isinstance(layer, keras.layers.Rescaling))
    np.testing.assert_allclose(
        rescaling(np.full((1, 8, 8, 1), 255, np.uint8)), np.ones((1, 8, 8, 1)), rtol=1e-6
    )


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_logits_stay_float32_under_mixed_precision(policy: str) -> None:
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = _models.build_model("cnn", (8, 8, 1), 10)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.layers[1].compute_dtype != "float32"  # the body does run in low precision
    assert model.get_layer("logits").compute_dtype == "float32"
    assert keras.backend.standardize_dtype(model(np.zeros((1, 8, 8, 1), np.uint8)).dtype) == "float32"


def test_saved_model_round_trips_in_safe_mode(tmp_path) -> None:
    model = _models.build_model("resnet_small", (8, 8, 1), 10)
    images = np.random.default_rng(1).integers(0, 256, size=(4, 8, 8, 1), dtype=np.uint8)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5)


@pytest.mark.parametrize(
    "args, received",
    [
        (("vgg", (8, 8, 1), 10), "model='vgg'"),
        (("cnn", (2, 2, 1), 10), "input_shape=(2, 2, 1)"),
        (("mlp", (8, 8), 10), "input_shape=(8, 8)"),
        (("mlp", (8, 8, 1), 1), "num_classes=1"),
    ],
    ids=["unknown-name", "too-small-for-cnn", "no-channels", "one-class"],
)
def test_bad_arguments_name_the_value(args: tuple, received: str) -> None:
    with pytest.raises(ValueError, match=f"Received: {received}".replace("(", r"\(").replace(")", r"\)")):
        _models.build_model(*args)
