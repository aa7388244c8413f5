"""``--optimizer`` and its hyperparameter flags -> a Keras optimizer.

A name is looked up in ``tfopt.available()`` first, then among Keras'
built-in optimizers, so ``adam`` is ``tfopt.Adam`` and ``adamw`` is Keras'.
Only hyperparameters the user set are passed, and only if the optimizer's
constructor takes them: ``--momentum`` with ``adam`` is an error, not a value
silently dropped.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import keras

import tfopt

# The flags that become constructor arguments of the same name.
HYPERPARAMETERS = (
    "learning_rate", "momentum", "beta_1", "beta_2", "epsilon", "weight_decay", "global_clipnorm",
)  # fmt: skip


def _buildable_from_flags(cls: type) -> bool:
    """False for wrappers such as LossScaleOptimizer, which need another optimizer."""
    if cls is keras.optimizers.Optimizer:
        return False
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return not any(p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)


def _keras_builtins() -> dict[str, type]:
    """``{"adam": keras.optimizers.Adam, ...}``, as ``keras.optimizers.get`` names them."""
    return {
        cls.__name__.lower(): cls
        for cls in vars(keras.optimizers).values()
        if isinstance(cls, type) and issubclass(cls, keras.optimizers.Optimizer) and _buildable_from_flags(cls)
    }


def available() -> list[str]:
    """Every ``--optimizer`` name: tfopt's, then Keras built-ins that tfopt does not shadow.

    Wrappers that need another optimizer (``lookahead``) are left out: flags
    alone cannot build them.
    """
    names = [n for n in tfopt.available() if _buildable_from_flags(tfopt.get_class(n))]
    return names + sorted(set(_keras_builtins()) - set(tfopt.available()))


def check_name(name: str) -> None:
    """Raises ``ValueError`` for a name that is in neither tfopt nor Keras."""
    if name in tfopt.available() and name not in available():
        raise ValueError(
            f"`optimizer` {name!r} wraps another optimizer, so flags alone cannot build it; "
            f"in Python, use tfopt.{tfopt.get_class(name).__name__}(inner_optimizer). "
            f"Received: optimizer={name!r}."
        )
    if name not in available():
        raise ValueError(
            f"`optimizer` must be a tfopt or Keras optimizer: {', '.join(available())}. "
            f"Received: optimizer={name!r}."
        )


def _optimizer_class(name: str) -> type:
    if name in tfopt.available():
        return tfopt.get_class(name)
    return _keras_builtins()[name]


def accepted_arguments(cls: type) -> set[str]:
    """The keyword arguments ``cls(...)`` takes, following ``**kwargs`` up the MRO."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break  # This __init__ does not forward anything further up.
    names.discard("self")
    return names


def make(name: str, hyperparameters: Mapping[str, Any]) -> keras.optimizers.Optimizer:
    """Builds optimizer ``name`` with the hyperparameters that are not ``None``.

    Args:
      name: From :func:`available`.
      hyperparameters: ``{flag name: value}`` for the flags in
        ``HYPERPARAMETERS``; ``None`` means "unset: keep the optimizer's default".
        ``learning_rate`` may be a ``LearningRateSchedule``.

    Returns:
      A new optimizer. Call this inside ``strategy.scope()``.

    Raises:
      ValueError: unknown name, a set flag the optimizer does not take (named
        as ``--flag``), or a value the optimizer rejects.
    """
    check_name(name)
    given = {k: v for k, v in hyperparameters.items() if v is not None}
    unknown = sorted(set(given) - set(HYPERPARAMETERS))
    if unknown:
        raise ValueError(f"Not optimizer hyperparameters: {unknown}. Received: {given}.")
    cls = _optimizer_class(name)
    accepted = accepted_arguments(cls)
    for key in HYPERPARAMETERS:
        if key in given and key not in accepted:
            raise ValueError(
                f"--{key} does not apply to optimizer {name!r} ({cls.__name__}); leave it unset "
                f"or choose an optimizer that takes it. Received: {key}={given[key]}."
            )
    if name in tfopt.available():
        return tfopt.get(name, **given)
    return cls(**given)
