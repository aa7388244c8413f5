"""The small image classifiers that `launch.train` can train: one builder, three models.

`build_model` is the only model code in the launcher, whatever the strategy:
`strategies.fit` calls it (through the launcher's ``model_fn``) inside
``strategy.scope()``. Every model

* takes raw ``uint8`` images of any TFDS image dataset (``[H, W, C]``) and
  rescales them to [0, 1] itself, so a saved ``model.keras`` needs no
  preprocessing code;
* returns logits (train with ``from_logits=True``), from a ``float32`` last
  layer, so that mixed precision keeps the softmax and the loss in float32, as
  the Keras mixed-precision guide recommends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
from keras import layers

# A TFDS image feature is uint8 in [0, 255].
_PIXEL_MAX = 255.0


def _mlp(x: keras.KerasTensor) -> keras.KerasTensor:
    """Two 256-unit ReLU layers with dropout."""
    x = layers.Flatten()(x)
    for _ in range(2):
        x = layers.Dense(256, activation="relu")(x)
        x = layers.Dropout(0.2)(x)
    return x


def _cnn(x: keras.KerasTensor) -> keras.KerasTensor:
    """Two 3x3 conv + 2x2 max-pool blocks (32, 64 filters), then a 128-unit layer.

    The layout of Keras' "Simple MNIST convnet" example, with "same" padding so
    that it also fits 8x8 images.
    """
    for filters in (32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    return layers.Dense(128, activation="relu")(x)


def _residual_block(x: keras.KerasTensor, filters: int, stride: int) -> keras.KerasTensor:
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        # Projection shortcut (option B of He et al.) where the shape changes.
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
        shortcut = layers.BatchNormalization()(shortcut)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def _resnet_small(x: keras.KerasTensor) -> keras.KerasTensor:
    """ResNet-8 for small images: the CIFAR ResNet of He et al. (2016) with n=1.

    A 16-filter 3x3 stem, then one basic block per stage at 16, 32 and 64
    filters (stride 2 in the last two stages), then global average pooling.
    See https://arxiv.org/abs/1512.03385, section 4.2.
    """
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for filters, stride in ((16, 1), (32, 2), (64, 2)):
        x = _residual_block(x, filters, stride)
    return layers.GlobalAveragePooling2D()(x)


_BODIES: dict[str, Callable[[keras.KerasTensor], keras.KerasTensor]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "resnet_small": _resnet_small,
}


def available() -> list[str]:
    """The names accepted by :func:`build_model` (and by ``--model``)."""
    return list(_BODIES)


def build_model(name: str, input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """Builds an uncompiled classifier of raw uint8 images that returns logits.

    Args:
      name: One of :func:`available`: ``"mlp"``, ``"cnn"`` or ``"resnet_small"``.
      input_shape: The shape of one image, ``(height, width, channels)``.
      num_classes: The number of output logits.

    Returns:
      A functional ``keras.Model`` named ``name``. Build it inside
      ``strategy.scope()`` so that its variables are distributed.

    Raises:
      ValueError: an unknown ``name``, or a shape or class count that cannot work.

    Examples:
      >>> model = build_model("cnn", (8, 8, 1), 10)
      >>> model.output_shape
      (None, 10)
    """
    check_args(name, input_shape, num_classes)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Rescaling(1.0 / _PIXEL_MAX)(inputs)
    x = _BODIES[name](x)
    logits = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def check_args(name: str, input_shape: Sequence[int], num_classes: int) -> None:
    """Raises ``ValueError`` unless :func:`build_model` can build these arguments."""
    if name not in _BODIES:
        raise ValueError(f"`model` must be one of {available()}. Received: model={name!r}.")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(
            "`input_shape` must be (height, width, channels) of positive integers. "
            f"Received: input_shape={input_shape!r}."
        )
    if name != "mlp" and min(shape[:2]) < 4:
        raise ValueError(
            f"Model {name!r} downsamples twice and needs images of at least 4x4; use "
            f"model='mlp'. Received: input_shape={shape}."
        )
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2. Received: num_classes={num_classes!r}.")
