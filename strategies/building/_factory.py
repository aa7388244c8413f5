"""`build`, `describe` and `is_server_task`: the factory's front door."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
from absl import logging

from strategies.building import _config, _detect, _registry, _resolve
from strategies.building._config import StrategyConfig
from strategies.building._errors import StrategyError


def build(config_or_name: StrategyConfig | str | None = None, **overrides: Any) -> tf.distribute.Strategy:
    """Builds a `tf.distribute.Strategy` from a config or a strategy name.

    ``auto`` is resolved by `strategies.detect` and logged with its reason; the
    options of strategies it did not pick are then dropped. After the strategy
    is built, Keras' global dtype policy is set to ``config.mixed_precision``
    (``float32`` by default, which resets an earlier policy), so call this before
    building models.

    Args:
        config_or_name: A `StrategyConfig`, or a name from `strategies.available()`.
            ``None`` means ``StrategyConfig(**overrides)`` (``auto`` unless
            ``strategy=`` is among them).
        **overrides: `StrategyConfig` fields to set or replace.

    Returns:
        The strategy; never ``None`` (``default`` is TF's default strategy).

    Raises:
        StrategyError: For any invalid option, missing hardware or unreachable
            peer, with one sentence naming the flag or key at fault.

    Example:

    ```python
    strategy = strategies.build("mirrored", virtual_cpus=2)
    with strategy.scope():
        model = make_model()
    ```
    """
    config = to_config(config_or_name, overrides)
    if config.strategy == "auto":
        name, reason = _detect.detect(config)
        logging.info("strategy=auto chose %s: %s", name, reason)
        config = resolve_auto(config, name, reason)
    strategy = _registry.get_builder(config.strategy)(config)
    set_mixed_precision(config.mixed_precision)
    logging.info("Built %s", describe(strategy))
    return strategy


def set_mixed_precision(policy: str) -> None:
    """Sets Keras' global dtype policy, importing Keras only when that changes anything."""
    # A Keras imported later starts at float32 anyway; not importing it keeps
    # parameter-server tasks and plain-TF users from paying for it.
    if policy != "float32" or "keras" in sys.modules:
        import keras

        keras.mixed_precision.set_global_policy(policy)


def to_config(config_or_name: StrategyConfig | str | None, overrides: dict[str, Any]) -> StrategyConfig:
    """A validated config from `build`'s arguments."""
    if config_or_name is None:
        return _config.replace(StrategyConfig(), overrides)
    if isinstance(config_or_name, StrategyConfig):
        return _config.replace(config_or_name, overrides)
    if isinstance(config_or_name, str):
        if "strategy" in overrides:
            raise StrategyError(
                f"`strategy` was given twice, as the name {config_or_name!r} and as a keyword; pass one. "
                f"Received: strategy={overrides['strategy']!r}."
            )
        return _config.replace(StrategyConfig(strategy=config_or_name), overrides)
    raise StrategyError(
        f"`config_or_name` must be a StrategyConfig or one of {_registry.available()}. "
        f"Received: config_or_name={config_or_name!r}."
    )


def resolve_auto(config: StrategyConfig, name: str, reason: str) -> StrategyConfig:
    """``config`` with ``strategy=name``, dropping options only other strategies read."""
    defaults = {f.name: f.default for f in dataclasses.fields(StrategyConfig)}
    dropped = {
        key: defaults[key]
        for key, users in _config._USED_BY.items()
        if name not in users and getattr(config, key) != defaults[key]
    }
    try:
        return _config.replace(config, {"strategy": name, **dropped})
    except StrategyError as e:
        raise StrategyError(f"{e} (strategy=auto chose {name!r} because {reason}.)") from None


def is_server_task(config: StrategyConfig, environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is a parameter-server ``worker``/``ps`` task.

    Such a process runs `strategies.serve_forever` instead of `build`.
    """
    environ = os.environ if environ is None else environ
    name = config.strategy
    if name == "auto":
        name, _ = _detect.detect(config, environ)
    return name == "parameter_server" and _resolve.task_role(config, environ) in ("worker", "ps")


def describe(strategy: tf.distribute.Strategy) -> str:
    """Returns a one-line summary: kind, replicas, devices and reduction, then the TF and Keras versions.

    Example: ``"MirroredStrategy: 2 replicas on /job:localhost/replica:0/task:0/device:CPU:0,
    ...:CPU:1 (all-reduce: CollectiveAllReduce); TensorFlow 2.21.0, Keras 3.15.1"``.
    """
    return f"{_describe_strategy(strategy)}; {versions()}"


def versions() -> str:
    """``"TensorFlow 2.21.0, Keras 3.15.1"``: what this process runs (setup.cfg admits TF 2.20 and 2.21)."""
    import keras

    return f"TensorFlow {tf.__version__}, Keras {keras.__version__}"


def _describe_strategy(strategy: tf.distribute.Strategy) -> str:
    kind = _public_name(strategy)
    ext = strategy.extended
    n = strategy.num_replicas_in_sync
    replicas = _plural(n, "replica")
    if kind == "DefaultStrategy":
        return "DefaultStrategy: 1 replica on the default device (no distribution)"
    if getattr(strategy, "_is_parameter_server_strategy_v2", False):
        partitioner = getattr(ext, "_variable_partitioner", None)
        return (
            f"ParameterServerStrategy: {_plural(ext._num_workers, 'worker')}, {ext._num_ps} ps "
            f"(partitioner: {type(partitioner).__name__ if partitioner else 'none'})"
        )
    devices = _short_devices(list(ext.worker_devices))
    if kind == "MultiWorkerMirroredStrategy":
        options = getattr(ext, "_communication_options", None)
        impl = getattr(getattr(options, "implementation", None), "name", "AUTO")
        role = f"{ext._task_type} {ext._task_id}" if ext._task_type else "single worker"
        return (
            f"MultiWorkerMirroredStrategy: {replicas} across {_plural(ext._num_workers, 'worker')}; "
            f"this is {role}{' (chief)' if ext.should_checkpoint else ''} on {devices} (communication: {impl})"
        )
    cross = getattr(ext, "_cross_device_ops", None) or getattr(ext, "_inferred_cross_device_ops", None)
    suffix = f" (all-reduce: {type(cross).__name__})" if cross is not None and n > 1 else ""
    return f"{kind}: {replicas} on {devices}{suffix}"


def _public_name(strategy: tf.distribute.Strategy) -> str:
    """The tf.distribute name a user knows (TF's classes have internal names and aliases)."""
    if strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy():
        return "DefaultStrategy"
    for cls, name in (
        # Its class is named CollectiveAllReduceStrategy.
        (tf.distribute.MultiWorkerMirroredStrategy, "MultiWorkerMirroredStrategy"),
        (tf.distribute.MirroredStrategy, "MirroredStrategy"),
        (tf.distribute.OneDeviceStrategy, "OneDeviceStrategy"),
        (tf.distribute.TPUStrategy, "TPUStrategy"),
    ):
        if isinstance(strategy, cls):
            return name
    return type(strategy).__name__


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _short_devices(devices: list[str]) -> str:
    """Names later devices by what differs from the first: '/job:.../device:CPU:0, ...:CPU:1'."""
    if not devices:
        return "no devices"
    first = devices[0]
    prefix = first.rsplit("/device:", 1)[0] + "/device"
    rest = [f"...{d[len(prefix):]}" if d.startswith(prefix) else d for d in devices[1:]]
    return ", ".join([first, *rest])
