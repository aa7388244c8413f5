"""Hyperparameter checks shared by the optimizers.

Each raises ``ValueError`` naming the argument and the received value, in
Keras' style: ``"... Received: beta_1=1.5."``. Learning-rate schedules and
callables are accepted as they are: they cannot be checked before they run.
"""

from __future__ import annotations

import math
from typing import Any

import keras


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_learning_rate(learning_rate: Any) -> None:
    """A float >= 0, a schedule, or a callable."""
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule) or callable(
        learning_rate
    ):
        return
    if _is_number(learning_rate) and (learning_rate < 0 or not math.isfinite(learning_rate)):
        raise ValueError(
            "`learning_rate` must be a finite number >= 0, a LearningRateSchedule or a "
            f"callable. Received: learning_rate={learning_rate}."
        )


def check_unit_interval(name: str, value: Any, *, closed_right: bool = False) -> None:
    """``value`` in [0, 1) (or [0, 1] with ``closed_right``)."""
    if not _is_number(value):
        if callable(value):
            return
        raise ValueError(f"`{name}` must be a number. Received: {name}={value!r}.")
    upper_ok = value <= 1 if closed_right else value < 1
    if not (value >= 0 and upper_ok):
        interval = "[0, 1]" if closed_right else "[0, 1)"
        raise ValueError(f"`{name}` must be in {interval}. Received: {name}={value}.")


def check_positive(name: str, value: Any) -> None:
    """``value`` > 0 and finite."""
    if not _is_number(value) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number > 0. Received: {name}={value!r}.")


def check_non_negative(name: str, value: Any) -> None:
    """``value`` >= 0 and finite."""
    if not _is_number(value) or not value >= 0 or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number >= 0. Received: {name}={value!r}.")
