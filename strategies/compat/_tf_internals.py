"""The private TensorFlow APIs that `strategies.training` reads, each behind a version check.

TensorFlow offers no public API for these four needs:

* **The global ``tf.random.Generator``, only if the program made one.**
  ``tf.random.get_global_generator()`` creates one (from fresh entropy) when
  there is none, which would change the program's random state just by
  looking. Resumption saves it when it exists (`strategies.training._resume`).
* **The coordination service's key-value store**, which MultiWorkerMirrored
  workers share: the preemption protocol agrees on a stop step through it
  (`strategies.training._preemption`). ``tf.distribute`` uses it internally
  (``PreemptionCheckpointHandler``) but exposes only the whole handler.
* **The coordination service's heartbeat timeout.** MultiWorkerMirrored
  configures the service itself, with TensorFlow's default timeout (10 s),
  unless one is configured already; `configure_heartbeat` configures it first,
  the same way but with the user's timeout (``--heartbeat_timeout``).
* **The ops of a dataset's graph**, to tell whether reading one batch of it
  ahead (the input checks, `strategies.training._fit_checks`) would move a
  stateful op (a random shuffle) that training then sees in another state.

Each was verified on the TensorFlow versions in
`strategies.compat._keras_compat.VERIFIED_TENSORFLOW`. On another version
the first two fail loudly (`check_versions`), and the third switches itself off:
a dataset whose ops are unknown is never read ahead.
"""

from __future__ import annotations

import tensorflow as tf

from strategies.compat import _keras_compat


def global_generator() -> tf.random.Generator | None:
    """TensorFlow's global ``tf.random.Generator``, only if the program made one (no new entropy)."""
    _keras_compat.check_versions("reading TF's global tf.random.Generator without creating one "
                                 "(tensorflow.python.ops.stateful_random_ops, no public API)")
    from tensorflow.python.ops import stateful_random_ops

    return getattr(stateful_random_ops, "global_generator", None)


def set_cluster_value(key: str, value: str) -> None:
    """Sets ``key`` in the coordination service's store; raises AlreadyExistsError if it is set."""
    _context().set_config_key_value(key, value)


def get_cluster_value(key: str, timeout_ms: int | None = None) -> str:
    """The value of ``key`` in the coordination service's store; blocks until it is set."""
    if timeout_ms is None:
        return _context().get_config_key_value(key)
    return _context().get_config_key_value(key, timeout_ms)


def _context():  # Returns a tensorflow.python.eager.context.Context.
    _keras_compat.check_versions("the coordination service's key-value store "
                                 "(tensorflow.python.eager.context, no public API)")
    from tensorflow.python.eager import context

    return context.context()


def configure_heartbeat(cluster_spec: dict[str, list[str]], task_type: str, seconds: float) -> None:
    """Configures the coordination service MultiWorkerMirrored uses, with a heartbeat timeout.

    What ``CollectiveAllReduceExtended._initialize_multi_worker`` does (TF
    2.20/2.21: a standalone service led by the chief, else worker 0, that
    coordinates the chief and worker jobs), plus ``heartbeat_timeout_in_ms``.
    MultiWorkerMirroredStrategy then finds the service configured and keeps it.
    Call it before the strategy is built (before TensorFlow initializes).
    """
    _keras_compat.check_versions("the coordination service's heartbeat timeout "
                                 "(tensorflow.python.eager.context, no public API)")
    from tensorflow.python.distribute import collective_all_reduce_strategy, multi_worker_util
    from tensorflow.python.eager import context

    spec = tf.train.ClusterSpec(cluster_spec)
    jobs = ["chief", "worker"]
    if task_type not in jobs or context.context().coordination_service is not None:
        return
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(spec),
        heartbeat_timeout_in_ms=int(seconds * 1000),
        # The proto module MultiWorkerMirrored itself uses (it moved between TF versions).
        coordinated_jobs=[collective_all_reduce_strategy.coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
                          for job in jobs if job in spec.jobs],
    )


def dataset_ops(dataset: tf.data.Dataset) -> set[str] | None:
    """Every op name in ``dataset``'s graph (its functions' too); None when it cannot be read."""
    if not _verified():
        return None
    try:
        graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    except Exception:  # A dataset TF cannot serialize: any error means "unknown".
        return None
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops |= {node.op for node in function.node_def}
    return ops


def _verified() -> bool:
    try:
        _keras_compat.check_versions("reading a dataset's graph (Dataset._as_serialized_graph)")
    except _keras_compat.KerasCompatError:
        return False
    return True


