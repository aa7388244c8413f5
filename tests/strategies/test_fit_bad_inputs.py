"""strategies.fit with bad data or a bad model: one ValueError naming the argument, before any step."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import strategies
from strategies.compat import _keras_compat

CLASSES = 4
BATCH = 8


def _model() -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(CLASSES)])
    model.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _dataset(n: int = 32, *, features: int = 3, labels=None, x_dtype=np.float32, batch: int = BATCH):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, features)).astype(x_dtype)
    y = rng.integers(0, CLASSES, size=n) if labels is None else labels
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


class _Steps(keras.callbacks.Callback):
    began = False

    def on_train_begin(self, logs=None):
        type(self).began = True


def _built_outside():
    model = _model()  # Made here, under the default strategy, not inside fit's scope.
    return lambda: model


def _mirrored():
    return _keras_compat.mirrored_strategy(["CPU:0", "CPU:1"])


# (id, strategy, arguments, text the message must hold (the argument's name first))
CASES = [
    ("features-of-the-wrong-shape", "one", dict(data=_dataset(features=5)), ["`data`", "(None, 5)", "(None, 3)"]),
    ("features-of-the-wrong-rank", "one",
     dict(data=tf.data.Dataset.from_tensor_slices((np.zeros((16, 3, 1), np.float32), np.zeros(16, np.int64)))
          .batch(BATCH)), ["`data`", "(None, 3, 1)"]),
    ("features-are-strings", "one",
     dict(data=tf.data.Dataset.from_tensor_slices((np.array(["a"] * 16), np.zeros(16, np.int64))).batch(BATCH)),
     ["`data`", "string"]),
    ("labels-are-strings", "one",
     dict(data=tf.data.Dataset.from_tensor_slices((np.zeros((16, 3), np.float32), np.array(["cat"] * 16)))
          .batch(BATCH)), ["`data`", "string"]),
    ("empty-dataset", "one", dict(data=_dataset().take(0)), ["`data`", "empty"]),
    ("empty-dataset-of-unknown-length", "one", dict(data=_dataset().filter(lambda x, y: False)),
     ["`data`", "empty"]),
    ("labels-above-the-classes", "one", dict(data=_dataset(labels=np.arange(32) % 7)),
     ["`data`", "[0, 4)", "to 6"]),
    ("negative-labels", "one", dict(data=_dataset(labels=-(np.arange(32) % 2))), ["`data`", "from -1"]),
    ("validation-labels-out-of-range", "one",
     dict(validation_data=_dataset(labels=np.full(32, 9))), ["`validation_data`", "to 9"]),
    ("validation-features-of-the-wrong-shape", "one", dict(validation_data=_dataset(features=2)),
     ["`validation_data`", "(None, 2)"]),
    ("uncompiled-model", "one", dict(model_fn=lambda: keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])),
     ["`model_fn()`", "compiled=False"]),
    ("model-built-outside-the-scope", "mirrored", dict(model_fn=_built_outside()),
     ["`model_fn()`", "strategy.scope()", "MirroredStrategy"]),
    ("model-built-outside-one-device-scope", "one", dict(model_fn=_built_outside()),
     ["`model_fn()`", "OneDeviceStrategy"]),
    ("global-batch-not-divisible", "mirrored", dict(data=_dataset(36, batch=9)),
     ["`data`", "2 replicas", "batch size 9"]),
    ("global-batch-not-divisible-drop-remainder", "mirrored",
     dict(data=_dataset(36).unbatch().batch(9, drop_remainder=True)), ["`data`", "batch size 9"]),
]


@pytest.mark.parametrize(("strategy", "arguments", "texts"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_one_value_error_before_any_step(strategy, arguments, texts):
    kwargs = dict(model_fn=_model, data=_dataset(), epochs=1, verbose=0, callbacks=[_Steps()],
                  strategy=_mirrored() if strategy == "mirrored" else tf.distribute.OneDeviceStrategy("CPU:0"))
    kwargs.update(arguments)
    _Steps.began = False
    with pytest.raises(ValueError) as error:
        strategies.fit(kwargs.pop("model_fn"), kwargs.pop("data"), **kwargs)
    message = str(error.value)
    assert "\n" not in message.strip(), message
    for text in texts:
        assert text in message, f"{text!r} not in {message!r}"
    assert not _Steps.began, "training began before the error"


def test_good_inputs_still_train():
    # The checks must not reject what they guard: labels in range, divisible batches, in scope.
    history = strategies.fit(_model, _dataset(), strategy=_mirrored(), epochs=1, verbose=0,
                             validation_data=_dataset(16))
    assert int(history.model.optimizer.iterations.numpy()) == 4


def test_a_shuffled_dataset_is_not_read_ahead():
    # Peeking at a reshuffled dataset would advance its shuffle and change the run:
    # the first batch is read only from datasets where reading changes nothing.
    data = tf.data.Dataset.range(10).shuffle(10, seed=1, reshuffle_each_iteration=True).batch(5)
    from strategies.training import _fit_checks

    assert not _fit_checks._peekable(data)
    assert _fit_checks._peekable(tf.data.Dataset.range(10).batch(5))


@pytest.mark.parametrize("data, steps_per_epoch, received", [
    (_dataset(32), 5, "steps_per_epoch=5"),  # 4 batches, read from their start each epoch.
    (_dataset(32).filter(lambda x, y: True), None, "steps_per_epoch=None"),  # Unknown length.
    (lambda context: _dataset(32).repeat(), None, "steps_per_epoch=None"),
], ids=["dataset-shorter-than-epoch", "dataset-of-unknown-length", "dataset-fn-without-steps"])
def test_parameter_server_refuses_data_it_cannot_schedule(data, steps_per_epoch, received):
    # The check strategies.fit runs under ParameterServerStrategy, before the coordinator starts.
    from strategies.training import _ps_training

    with pytest.raises(ValueError, match=received) as error:
        _ps_training.check_arguments(data, steps_per_epoch, None)
    assert "\n" not in str(error.value)
