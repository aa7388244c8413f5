"""The public surface of tfopt: __all__, the registry, and Keras serialization.

Adding an optimizer means adding it to both pinned lists below.
"""

from __future__ import annotations

import keras
import pytest

import tfopt

EXPECTED_ALL = [
    "Adagrad",
    "Adam",
    "DynamicGradientDescent",
    "GradientDescent",
    "LAMB",
    "LARS",
    "LazyAdam",
    "Lookahead",
    "RAdam",
    "SGD",
    "Shampoo",
    "SOAP",
    "SkipNonFinite",
    "SkippedSteps",
    "assign_owners",
    "available",
    "get",
    "get_class",
    "matrix_cost",
]

# In registration (import) order.
EXPECTED_NAMES = [
    "gradient_descent",
    "sgd",
    "dynamic_gradient_descent",
    "adagrad",
    "adam",
    "lars",
    "lamb",
    "radam",
    "lookahead",
    "lazy_adam",
    "shampoo",
    "soap",
]

# The classic optimizers (issue 2): name -> class.
CLASSIC = {
    "gradient_descent": tfopt.GradientDescent,
    "sgd": tfopt.SGD,
    "dynamic_gradient_descent": tfopt.DynamicGradientDescent,
    "adagrad": tfopt.Adagrad,
    "adam": tfopt.Adam,
}


def test_all_is_pinned():
    assert sorted(tfopt.__all__) == sorted(EXPECTED_ALL)
    assert len(set(tfopt.__all__)) == len(tfopt.__all__)
    for name in tfopt.__all__:
        assert hasattr(tfopt, name), name


def test_available_is_pinned():
    assert tfopt.available() == EXPECTED_NAMES


@pytest.mark.parametrize("name", CLASSIC)
def test_get_by_any_name(name):
    cls = CLASSIC[name]
    for key in (name, cls.__name__, f"tfopt>{cls.__name__}"):
        optimizer = tfopt.get(key, learning_rate=0.05)
        assert type(optimizer) is cls
        assert float(optimizer.learning_rate) == pytest.approx(0.05)


@pytest.mark.parametrize("name", CLASSIC)
def test_registered_with_keras(name):
    cls = CLASSIC[name]
    assert keras.saving.get_registered_name(cls) == f"tfopt>{cls.__name__}"
    optimizer = cls(learning_rate=0.05)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(restored) is cls
    assert restored.get_config() == optimizer.get_config()


def test_get_overrides_a_serialized_config():
    serialized = keras.optimizers.serialize(tfopt.Adam(learning_rate=0.01, beta_1=0.8))
    optimizer = tfopt.get(serialized, beta_1=0.5)
    assert type(optimizer) is tfopt.Adam
    assert (optimizer.beta_1, float(optimizer.learning_rate)) == (0.5, pytest.approx(0.01))


def test_get_accepts_a_get_config_dict():
    optimizer = tfopt.Adam(learning_rate=0.01)  # Named "adam", "adam_1", ... by Keras.
    tfopt.Adam(learning_rate=0.01)
    config = tfopt.Adam(learning_rate=0.01).get_config()
    assert type(tfopt.get(config)) is type(optimizer)


def test_get_rejects_a_config_whose_name_is_not_an_optimizer():
    config = tfopt.Adam(learning_rate=0.01, name="my_optimizer").get_config()
    with pytest.raises(ValueError, match="'my_optimizer'.*keras.optimizers.serialize"):
        tfopt.get(config)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="Unknown tfopt optimizer 'adamw'") as error:
        tfopt.get("adamw")
    for name in EXPECTED_NAMES:
        assert name in str(error.value)


@pytest.mark.parametrize("name", CLASSIC)
def test_compiles_into_a_model(name):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=tfopt.get(name), loss="mse")
    assert type(model.optimizer) is CLASSIC[name]


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_get_class_returns_the_class_that_get_builds(name):
    cls = tfopt.get_class(name)
    assert f"tfopt>{cls.__name__}" == keras.saving.get_registered_name(cls)
    if name != "lookahead":  # Lookahead needs an inner optimizer.
        assert type(tfopt.get(name)) is cls


def test_get_class_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="Unknown tfopt optimizer 'nadam'"):
        tfopt.get_class("nadam")
