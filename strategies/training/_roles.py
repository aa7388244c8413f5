"""What this process is in its cluster, read from the strategy it runs under."""

from __future__ import annotations

import tensorflow as tf

SINGLE = "single"
MIRRORED = "mirrored"
MULTI_WORKER = "multi_worker_mirrored"
PARAMETER_SERVER = "parameter_server"
TPU = "tpu"


def kind(strategy: tf.distribute.Strategy) -> str:
    """The training path a strategy needs: one of the module's constants."""
    # Order matters: MultiWorkerMirroredStrategy is not a MirroredStrategy
    # subclass, but check the specific classes before the general ones anyway.
    if isinstance(strategy, tf.distribute.ParameterServerStrategy):
        return PARAMETER_SERVER
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return MULTI_WORKER
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return MIRRORED
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return TPU
    return SINGLE


def task(strategy: tf.distribute.Strategy) -> tuple[str, int] | None:
    """``(task_type, task_id)`` of this process, or None outside a multi-process cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None
    if resolver.task_type is None:
        return None
    return str(resolver.task_type), int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (TF's own answer, `should_checkpoint`).

    True in a single process, on the chief (or worker 0 without a chief) under
    MultiWorkerMirroredStrategy, and on the coordinator under parameter servers.
    """
    if kind(strategy) == PARAMETER_SERVER:
        return True  # Only the coordinator runs `fit`; workers and ps serve.
    return bool(strategy.extended.should_checkpoint)


def task_label(strategy: tf.distribute.Strategy) -> str:
    """``"worker 1"``-style name of this process, or ``"local"``."""
    found = task(strategy)
    return "local" if found is None else f"{found[0]} {found[1]}"
