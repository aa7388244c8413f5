"""Builders for the single-process strategies, and the registry's fixed order."""

from __future__ import annotations

import tensorflow as tf
from absl import logging

from strategies.building import _cluster_builders, _detect, _registry, _tpu
from strategies.building._config import StrategyConfig
from strategies.building._errors import StrategyError, invalid
from strategies.compat import _keras_compat


def _auto(config: StrategyConfig) -> tf.distribute.Strategy:
    # `build` resolves "auto" before dispatching; this entry exists so that the
    # name is registered (and in --strategy's enum) in its documented place.
    raise AssertionError("strategies.build resolves 'auto' itself")  # pragma: no cover


def _default(config: StrategyConfig) -> tf.distribute.Strategy:
    # get_strategy() is never None: outside any scope it is TF's default
    # strategy, whose scope() is a real no-op context manager.
    return tf.distribute.get_strategy()


def _one_device(config: StrategyConfig) -> tf.distribute.Strategy:
    device = config.device
    if device is None:
        device = "/gpu:0" if _detect.gpu_count() else "/cpu:0"
    spec = tf.DeviceSpec.from_string(device)
    count = len(tf.config.list_logical_devices(spec.device_type))
    if (spec.device_index or 0) >= count:
        raise invalid(
            "device", config.device, f"one of the {count} {spec.device_type} device(s) this process sees",
            "pick an existing device or leave it unset",
        )  # fmt: skip
    return tf.distribute.OneDeviceStrategy(device)


def _mirrored(config: StrategyConfig) -> tf.distribute.Strategy:
    if config.virtual_cpus:
        devices = split_cpu(config.virtual_cpus)
    else:
        gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
        if config.num_gpus is not None and config.num_gpus > len(gpus):
            raise invalid(
                "num_gpus", config.num_gpus, f"at most {len(gpus)}, the number of GPUs visible",
                "use fewer GPUs, or --virtual_cpus=N to mirror over CPU devices",
            )  # fmt: skip
        devices = gpus[: config.num_gpus] if config.num_gpus else gpus
        if not devices:
            logging.warning("mirrored: no GPU is visible, so it has one CPU replica; use --virtual_cpus=N for more.")
            devices = ["/cpu:0"]
    # Through the compat layer: a second MirroredStrategy in one process (a
    # notebook re-run, a test suite) would otherwise reuse the first one's
    # collective keys and abort (tensorflow/tensorflow#62790).
    return _keras_compat.mirrored_strategy(devices, cross_device_ops=_cross_device_ops(config.all_reduce, devices))


def split_cpu(n: int) -> list[str]:
    """Splits the CPU into ``n`` logical devices and returns their names.

    TensorFlow fixes its devices when it initializes, so this works only before
    the first op runs, or when the CPU already has exactly ``n`` logical devices.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:  # Already initialized with a different split.
        have = len(tf.config.list_logical_devices("CPU"))
        if have != n:
            raise StrategyError(
                f"`virtual_cpus` must be set before TensorFlow initializes, and this process already "
                f"has {have} logical CPU(s); build the strategy first thing in the program, or restart "
                f"the process/notebook runtime. Received: virtual_cpus={n}."
            ) from None
    return [f"/cpu:{i}" for i in range(n)]


def _cross_device_ops(all_reduce: str, devices: list[str]) -> tf.distribute.CrossDeviceOps | None:
    if all_reduce == "auto":
        return None  # TF picks: NCCL across GPUs, collectives across CPUs.
    if all_reduce == "nccl" and any("GPU" not in d.upper() for d in devices):
        # NCCL kernels exist only for GPUs; failing here beats an op-kernel
        # error at the first training step.
        raise invalid(
            "all_reduce", all_reduce, "'auto', 'hierarchical_copy' or 'reduce_to_one' on CPU devices",
            "NCCL runs only between GPUs",
        )  # fmt: skip
    return {
        "nccl": tf.distribute.NcclAllReduce,
        "hierarchical_copy": tf.distribute.HierarchicalCopyAllReduce,
        "reduce_to_one": tf.distribute.ReductionToOneDevice,
    }[all_reduce]()


# The registry's order is the documented order of --strategy's enum.
_registry.register("auto")(_auto)
_registry.register("default")(_default)
_registry.register("one_device")(_one_device)
_registry.register("mirrored")(_mirrored)
_registry.register("multi_worker_mirrored")(_cluster_builders.multi_worker_mirrored)
_registry.register("parameter_server")(_cluster_builders.parameter_server)
_registry.register("tpu")(_tpu.tpu)
