"""Bad hyperparameters fail at construction, naming the argument and the value."""

from __future__ import annotations

import re

import keras
import pytest

import tfopt

BAD = [
    ("gradient_descent", "learning_rate", -0.1),
    ("gradient_descent", "learning_rate", float("inf")),
    ("sgd", "learning_rate", -1.0),
    ("sgd", "momentum", 1.0),
    ("sgd", "momentum", -0.1),
    ("dynamic_gradient_descent", "learning_rate", -0.01),
    ("dynamic_gradient_descent", "learning_rate_decay", 0.0),
    ("dynamic_gradient_descent", "learning_rate_decay", -0.5),
    ("dynamic_gradient_descent", "learning_rate_decay", 1.5),
    ("adagrad", "learning_rate", -0.001),
    ("adagrad", "initial_accumulator_value", -0.1),
    ("adagrad", "epsilon", -1e-7),
    ("adam", "learning_rate", -0.001),
    ("adam", "beta_1", 1.0),
    ("adam", "beta_1", -0.1),
    ("adam", "beta_2", 1.5),
    ("adam", "epsilon", -1.0),
    ("adam", "fused", "yes"),
]


@pytest.mark.parametrize("name, argument, value", BAD, ids=[f"{n}-{a}={v}" for n, a, v in BAD])
def test_rejects(name, argument, value):
    received = (
        f"Received: {argument}={value!r}" if isinstance(value, str) else f"{argument}={value}"
    )
    with pytest.raises(ValueError, match=re.escape(received)):
        tfopt.get(name, **{argument: value})


GOOD = [
    ("sgd", {"momentum": 0.0}),
    ("sgd", {"momentum": 0.99, "nesterov": True}),
    ("dynamic_gradient_descent", {"learning_rate_decay": 1.0}),
    ("adagrad", {"initial_accumulator_value": 0.0, "epsilon": 0.0}),
    ("adam", {"beta_1": 0.0, "beta_2": 0.0, "amsgrad": True}),
    ("adam", {"learning_rate": keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)}),
    ("adam", {"learning_rate": 0.0, "fused": False}),
]


@pytest.mark.parametrize("name, kwargs", GOOD, ids=[f"{n}-{sorted(k)}" for n, k in GOOD])
def test_accepts_edge_values(name, kwargs):
    optimizer = tfopt.get(name, **kwargs)
    config = optimizer.get_config()
    for key, value in kwargs.items():
        if key != "learning_rate":
            assert config[key] == value


def test_decay_is_not_silently_ignored():
    """Keras 3 warns about `decay` and ignores it; DynamicGradientDescent, whose
    founding-documents rule decays the rate, points to learning_rate_decay."""
    with pytest.raises(ValueError, match=r"learning_rate_decay.*Received: decay=0\.9"):
        tfopt.DynamicGradientDescent(decay=0.9)
