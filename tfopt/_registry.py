"""Name -> optimizer class registry, and Keras serialization registration.

Every tfopt optimizer is registered twice, in one decorator:
  * here, under its snake_case name (``tfopt.get("adam")``);
  * with Keras, under the package ``tfopt`` (``"tfopt>Adam"``), so that
    ``keras.optimizers.deserialize`` and ``.keras`` files find it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import keras

from tfopt._skip_nonfinite import SkipNonFinite

PACKAGE = "tfopt"

_T = TypeVar("_T", bound=type)
_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[_T], _T]:
    """Class decorator: registers an optimizer as ``name`` and as ``"tfopt>Class"``."""

    def decorator(cls: _T) -> _T:
        if name in _REGISTRY:
            raise ValueError(
                f"An optimizer named {name!r} is already registered "
                f"({_REGISTRY[name].__name__}). Received: {cls.__name__}."
            )
        keras.saving.register_keras_serializable(package=PACKAGE)(cls)
        _REGISTRY[name] = cls
        return cls

    return decorator


def available() -> list[str]:
    """The snake_case names accepted by :func:`get`, in registration order."""
    return list(_REGISTRY)


def get_class(name: str) -> type:
    """The optimizer class registered as ``name`` (or class name, or ``"tfopt>Name"``).

    Raises:
      ValueError: unknown name; the message lists the valid ones.

    Examples:
      >>> import tfopt
      >>> tfopt.get_class("lazy_adam").__name__
      'LazyAdam'
    """
    return _lookup(name)


def _lookup(name: str) -> type:
    key = name.strip()
    if key.startswith(PACKAGE + ">"):
        key = key[len(PACKAGE) + 1 :]
    if key in _REGISTRY:
        return _REGISTRY[key]
    for cls in _REGISTRY.values():  # Also accept the class name: "Adam".
        if cls.__name__ == key:
            return cls
    raise ValueError(
        f"Unknown tfopt optimizer {name!r}. Valid names: {', '.join(available())}. "
        "Keras built-ins are available through keras.optimizers.get()."
    )


def _lookup_instance_name(name: str) -> type:
    base = re.sub(r"_\d+$", "", name)
    if base in _REGISTRY:
        return _REGISTRY[base]
    raise ValueError(
        f"Cannot tell which optimizer the config named {name!r} belongs to: a get_config() dict "
        "names the instance, not the class. Pass keras.optimizers.serialize(optimizer) (it holds "
        f"'class_name') or a name from tfopt.available(): {', '.join(available())}."
    )


def get(
    name_or_config: str | Mapping[str, Any] | keras.optimizers.Optimizer | None,
    *,
    skip_nonfinite: bool = False,
    **overrides: Any,
) -> keras.optimizers.Optimizer | None:
    """Builds a tfopt optimizer from a name or a config.

    Like ``keras.optimizers.get``, ``None`` gives ``None`` and an optimizer
    instance (tfopt's or Keras') is returned as it is, so code written for
    Keras' ``get`` can call this one instead.

    Args:
      name_or_config: a name from :func:`available` (``"adam"``), a class name
        (``"Adam"`` or ``"tfopt>Adam"``), a ``get_config()`` dict, a Keras
        serialized dict (``{"class_name": ..., "config": ...}``), an optimizer
        instance, or ``None``.
      skip_nonfinite: wrap the optimizer in :class:`tfopt.SkipNonFinite`, which
        skips (on all replicas) each step whose gradients hold NaN or Inf. An
        instance is wrapped as it is.
      **overrides: hyperparameters that replace the config's. An instance or
        ``None`` takes none.

    Returns:
      A new optimizer instance; the instance itself (or it wrapped in
      :class:`tfopt.SkipNonFinite`) when given one; ``None`` for ``None``.

    Raises:
      ValueError: unknown name, a bad hyperparameter, or overrides given with
        an instance or ``None``.

    Examples:
      >>> import tfopt
      >>> opt = tfopt.get("sgd", learning_rate=0.1, momentum=0.9)
      >>> type(opt).__name__, float(opt.momentum)
      ('SGD', 0.9)
      >>> tfopt.get(opt) is opt, tfopt.get(None)
      (True, None)
    """
    if name_or_config is None or isinstance(name_or_config, keras.optimizers.Optimizer):
        # keras.optimizers.get's contract: None -> None, an instance unchanged.
        if overrides:
            raise ValueError(
                "tfopt.get() applies hyperparameters only when it builds the optimizer; "
                f"it was given {type(name_or_config).__name__}. Received: "
                + ", ".join(f"{k}={v!r}" for k, v in overrides.items()) + "."
            )
        if name_or_config is None:
            if skip_nonfinite:
                raise ValueError(
                    "tfopt.get(None) has no optimizer to wrap. Received: skip_nonfinite=True."
                )
            return None
        return SkipNonFinite(name_or_config) if skip_nonfinite else name_or_config
    optimizer = _get(name_or_config, **overrides)
    if skip_nonfinite:
        optimizer = SkipNonFinite(optimizer)
    return optimizer


def _get(name_or_config: str | Mapping[str, Any], **overrides: Any) -> keras.optimizers.Optimizer:
    if isinstance(name_or_config, str):
        return _lookup(name_or_config)(**overrides)
    if isinstance(name_or_config, Mapping):
        if "class_name" in name_or_config:
            cls = _lookup(str(name_or_config["class_name"]))
            config = dict(name_or_config.get("config", {}))
        elif "name" in name_or_config:
            # A bare get_config() dict names the instance, not the class: Keras
            # numbers repeated default names ("adam", "adam_1", ...).
            config = dict(name_or_config)
            cls = _lookup_instance_name(str(config["name"]))
        else:
            raise ValueError(
                "A tfopt config needs 'class_name' (Keras serialized form) or 'name'. "
                f"Received keys: {sorted(name_or_config)}."
            )
        config.update(overrides)
        return cls.from_config(config)
    raise ValueError(
        "tfopt.get() takes a name, a config dict, an optimizer instance or None. "
        f"Received: {type(name_or_config).__name__} {name_or_config!r}."
    )
