"""The strategy registry: one dict from name to builder, in registration order.

`available()` is the single source of the valid names: `StrategyConfig`
validates against it and `--strategy`'s enum is built from it, so the help text
can never list a name the factory rejects.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from strategies.building._errors import StrategyError

if TYPE_CHECKING:
    import tensorflow as tf

# A builder takes a validated `StrategyConfig`. The type says `Any` because
# `_config` imports this module (to validate names against `available()`), and
# the registry must not import `_config` back, not even for a type.
Builder = Callable[[Any], "tf.distribute.Strategy"]
_B = TypeVar("_B", bound=Builder)

_BUILDERS: dict[str, Builder] = {}


def _builders() -> dict[str, Builder]:
    """The registry, the built-in strategies first: they register when `_builders` is imported.

    Imported on first use rather than by the package, because the builders
    import TensorFlow and `strategies.cluster` must not.
    """
    importlib.import_module("strategies.building._builders")
    return _BUILDERS


def register(name: str) -> Callable[[_B], _B]:
    """Registers a builder under ``name``; use as a decorator.

    A builder takes a validated `StrategyConfig` whose ``strategy`` is ``name``
    and returns a `tf.distribute.Strategy`.

    Example:

    ```python
    @strategies.register("central_storage")
    def _central_storage(config):
        return tf.distribute.experimental.CentralStorageStrategy()
    ```

    Raises:
        StrategyError: If ``name`` is already registered or is not an identifier.
    """
    if not isinstance(name, str) or not name.isidentifier() or not name.islower():
        raise StrategyError(
            f"A strategy name must be a lower-case identifier such as 'my_strategy'. "
            f"Received: name={name!r}."
        )
    if name in _builders():
        raise StrategyError(
            f"Strategy {name!r} is already registered; pick another name. "
            f"Registered: {available()}. Received: name={name!r}."
        )

    def decorator(builder: _B) -> _B:
        _BUILDERS[name] = builder
        return builder

    return decorator


def available() -> list[str]:
    """Returns every registered strategy name, in registration order."""
    return list(_builders())


def get_builder(name: str) -> Builder:
    """Returns the builder for ``name``, or raises a `StrategyError` listing the names."""
    try:
        return _builders()[name]
    except KeyError:
        raise StrategyError(
            f"`strategy` must be one of {available()}. Received: strategy={name!r}."
        ) from None
