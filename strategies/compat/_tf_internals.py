"""The private TensorFlow APIs that `strategies.training` reads, each behind a version check.

TensorFlow offers no public API for these three needs:

* **The global ``tf.random.Generator``, only if the program made one.**
  ``tf.random.get_global_generator()`` creates one (from fresh entropy) when
  there is none, which would change the program's random state just by
  looking. Resumption saves it when it exists (`strategies.training._resume`).
* **The coordination service's key-value store**, which MultiWorkerMirrored
  workers share: the preemption protocol agrees on a stop step through it
  (`strategies.training._preemption`). ``tf.distribute`` uses it internally
  (``PreemptionCheckpointHandler``) but exposes only the whole handler.
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


