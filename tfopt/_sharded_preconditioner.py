"""Splits per-matrix preconditioner work (inverse roots, eigenbases) over replicas.

Under data parallelism every replica holds the same statistics, so every
replica would compute the same roots. :func:`sharded_map` gives each matrix
one owner, balancing the cost (``n**3`` for ``n x n``) greedily over the
replicas; each replica computes only what it owns, writes zeros elsewhere,
and one all-reduce (SUM) of the packed results gives every replica all of
them. Outside a multi-replica replica context it computes everything
locally.

Why the collective sits in a ``merge_call``: under MirroredStrategy on CPUs
and GPUs (without XLA), ``ReplicaContext.all_reduce`` is itself a
``merge_call``, and a ``merge_call`` inside ``tf.cond`` fails ("merge_call
called while defining a new graph", TF 2.21). The refresh is periodic, so
the collective must be conditional. In the cross-replica context of an
unconditional ``merge_call``, ``extended.reduce_to`` is plain ops (or
collective ops under MultiWorkerMirrored) and may sit in a ``tf.cond``: a
step without a refresh sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from tfopt._sharding_plan import assign_owners, matrix_cost

__all__ = ["assign_owners", "matrix_cost", "sharded_map", "splits"]


def _replica_context() -> tf.distribute.ReplicaContext | None:
    """The replica context to split over, or None to compute everything locally."""
    if tf.distribute.in_cross_replica_context():  # E.g. inside extended.update.
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync < 2:
        return None
    return context


def splits(optimizer: Any) -> bool:
    """Whether Shampoo or SOAP splits its preconditioner work over the replicas in this step.

    Not when its ``split_preconditioner_work`` is off; not under gradient
    accumulation, whose step runs inside a cond, where Mirrored and
    MultiWorkerMirrored forbid the split's merge_call (keras-team/keras#20582);
    and not without several replicas in a replica context. Every replica then
    computes all of the work, as one device does.
    """
    if not optimizer.split_preconditioner_work or optimizer.gradient_accumulation_steps:
        return False
    return _replica_context() is not None


def sharded_map(
    fns: Callable[[tf.Tensor], tf.Tensor] | Sequence[Callable[[tf.Tensor], tf.Tensor]],
    matrices: Sequence[tf.Tensor],
    *,
    enabled: tf.Tensor | bool = True,
    previous: Sequence[tf.Tensor] | None = None,
    costs: Sequence[float] | None = None,
) -> list[tf.Tensor]:
    """``fns[i](matrices[i])`` for every ``i`` when ``enabled``, else ``previous``.

    Args:
      fns: one callable for all matrices, or one per matrix. Each returns a
        tensor of its input's shape and dtype.
      matrices: square matrices, identical on every replica.
      enabled: scalar bool (a tensor, e.g. ``step % frequency == 0``): whether
        to compute at all. Must be the same on every replica.
      previous: returned where ``enabled`` is False (default: ``matrices``).
      costs: per-matrix cost for the balance (default :func:`matrix_cost`).

    Returns:
      The list of results, the same on every replica.

    Must not be called inside a ``tf.cond``/``tf.while_loop`` branch under a
    multi-replica strategy (its ``merge_call`` would fail there): pass the
    condition as ``enabled``.
    """
    matrices = list(matrices)
    if not matrices:
        return []
    if callable(fns):
        fns = [fns] * len(matrices)
    previous = matrices if previous is None else list(previous)
    enabled = tf.convert_to_tensor(enabled, tf.bool)
    context = _replica_context()
    if context is None:
        return list(
            tf.cond(
                enabled,
                lambda: [fn(m) for fn, m in zip(fns, matrices, strict=True)],
                lambda: previous,
            )
        )

    if costs is None:
        costs = [matrix_cost(m.shape[0]) for m in matrices]
    owners = assign_owners(costs, context.num_replicas_in_sync)
    replica_id = context.replica_id_in_sync_group
    dtype = matrices[0].dtype
    if any(m.dtype != dtype for m in matrices):
        raise ValueError(
            "sharded_map packs its results into one vector: the matrices must share a dtype. "
            f"Received: {sorted({m.dtype.name for m in matrices})}."
        )

    def owned(i: int) -> tf.Tensor:
        # Each matrix in its own cond: a replica runs only the functions it owns.
        return tf.cond(
            tf.logical_and(enabled, tf.equal(replica_id, owners[i])),
            lambda: fns[i](matrices[i]),
            lambda: tf.zeros_like(matrices[i]),
        )

    packed = tf.concat([tf.reshape(owned(i), [-1]) for i in range(len(matrices))], axis=0)
    summed = context.merge_call(_sum_if_enabled, args=(packed, enabled))
    results, offset = [], 0
    for m in matrices:
        size = m.shape.num_elements()
        results.append(tf.reshape(summed[offset : offset + size], m.shape))
        offset += size
    return list(tf.cond(enabled, lambda: results, lambda: previous))


def _sum_if_enabled(
    strategy: tf.distribute.Strategy, packed: tf.distribute.DistributedValues, enabled: object
) -> tf.distribute.DistributedValues:
    """Cross-replica: SUM-reduces ``packed`` (one collective) only when ``enabled``."""
    local = list(strategy.experimental_local_results(packed))
    predicate = strategy.experimental_local_results(enabled)[0]

    def reduce() -> list[tf.Tensor]:
        reduced = strategy.extended.reduce_to(
            tf.distribute.ReduceOp.SUM, packed, destinations=packed
        )
        return list(strategy.experimental_local_results(reduced))

    per_device = iter(tf.cond(predicate, reduce, lambda: local))
    # Called once per local replica, in order.
    return strategy.experimental_distribute_values_from_function(lambda _: next(per_device))
