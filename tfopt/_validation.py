"""Hyperparameter checks shared by the optimizers.

Each raises ``ValueError`` naming the argument and the received value, in
Keras' style: ``"... Received: beta_1=1.5."``. Learning-rate schedules and
callables are accepted as they are: they cannot be checked before they run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
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


def check_int(name: str, value: Any, minimum: int) -> None:
    """``value`` an ``int`` (not a ``bool``) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}.")


def check_bool(name: str, value: Any) -> None:
    """``value`` is ``True`` or ``False`` (not a truthy stand-in such as 1 or "yes")."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be a bool (True or False). Received: {name}={value!r}.")


def check_one_of(name: str, value: Any, choices: Sequence[Any]) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}. Received: {name}={value!r}.")


def check_greater_than(name: str, value: Any, bound: float, why: str) -> None:
    """``value`` > ``bound``; ``why`` (one clause) says what breaks at or below it."""
    if not _is_number(value) or not value > bound:
        raise ValueError(f"`{name}` must be > {bound}: {why}. Received: {name}={value!r}.")


def check_fused(fused: Any) -> None:
    """``fused`` is ``"auto"``, ``True`` or ``False``; ``True`` needs the TensorFlow backend."""
    if not (fused is True or fused is False or (isinstance(fused, str) and fused == "auto")):
        raise ValueError(f"`fused` must be 'auto', True or False. Received: fused={fused!r}.")
    if fused is True and keras.backend.backend() != "tensorflow":
        raise ValueError(
            "`fused=True` needs the TensorFlow backend, whose training kernels it calls. "
            f"The Keras backend is {keras.backend.backend()!r}; use fused='auto' or False. "
            f"Received: fused={fused!r}."
        )


def check_optimizer(value: Any) -> None:
    """A wrapper's ``optimizer``: a ``keras.optimizers.Optimizer`` instance."""
    if not isinstance(value, keras.optimizers.Optimizer):
        raise ValueError(
            "`optimizer` must be a keras.optimizers.Optimizer instance. "
            f"Received: optimizer={value!r}."
        )


def check_no_options(wrapper: str, kwargs: dict[str, Any]) -> None:
    """A wrapper takes no optimizer options of its own: they belong to the inner optimizer."""
    for key, value in kwargs.items():
        raise ValueError(
            f"{wrapper} takes no `{key}`: set it on the inner optimizer. "
            f"Received: {key}={value!r}."
        )


def check_patterns(name: str, patterns: Any) -> None:
    """``None`` or a list of valid regular expressions (a bare string is refused).

    A bare string is a common slip that would otherwise match every character
    separately.
    """
    if patterns is None:
        return
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise ValueError(
            f"`{name}` must be a list of regular expressions (strings), e.g. "
            f"['bias', 'layer_norm']. Received: {name}={patterns!r}."
        )
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(
                f"`{name}` holds an invalid regular expression {pattern!r} ({e}). "
                f"Received: {name}={list(patterns)!r}."
            ) from None


def check_rejected(kwargs: dict[str, Any], rejected: dict[str, str]) -> None:
    """Refuses any keyword of ``kwargs`` that ``rejected`` maps to a message.

    Each message is a sentence that says what to pass instead (a renamed
    argument, a reserved Keras name, an unsupported option); the received
    value is appended.
    """
    for name, value in kwargs.items():
        if name in rejected:
            raise ValueError(f"{rejected[name]} Received: {name}={value!r}.")
