"""SOAP's eigenbasis refresh split over replicas, batched per tile size.

Under data parallelism every replica holds the same statistics, so every
replica would compute the same eigenbases. Here each statistic (each tile on
its own) gets one owner replica, balanced by ``n**3``
(:func:`tfopt._sharding_plan.assign_owners`, as Shampoo's roots). A replica
then refreshes all the statistics it owns of one size ``n`` as **one stack**
(one batched matmul, sort and QR, or at step 1 one batched ``eigh``), across
tiles, tile groups and variables: the same ops per stack as the unsplit
path's one batched QR per tile group, so no more ops than one device runs.
The results travel as ``[Q_new; Q_new.T Q; order]`` (``(2n + 1) x n`` per
statistic: the new basis, the transition that re-expresses ``m`` in it, the
order as floats, exact through a SUM with zeros) in **one all-reduce** per
step and dtype; every replica then re-expresses ``m`` and permutes ``v``
itself with the same ops as the unsplit path, so the result is bitwise the
unsplit one.

The replica picks its share with one ``tf.switch_case`` on its id (a replica
runs only its own branch) and the collective sits in an unconditional
``merge_call``, as :mod:`tfopt._sharded_preconditioner` explains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from tfopt._sharded_preconditioner import _replica_context, _sum_if_enabled
from tfopt._sharding_plan import assign_owners, matrix_cost


@dataclass(frozen=True)
class _Unit:
    """One statistic of one piece: ``index`` (variable), ``piece``, ``axis``; its
    statistic and basis as stacks ``(count, n, n)``; ``batched``: stored as a stack."""

    index: int
    piece: int
    axis: int
    statistic: tf.Tensor
    basis: tf.Tensor
    batched: bool


def split_basis_steps(optimizer: Any, indices: list[int]) -> None:
    """SOAP's ``_basis_step`` for these variables, each basis computed by one replica."""
    iterations = tf.convert_to_tensor(optimizer.iterations)
    first = tf.equal(iterations, 0)
    refreshing = tf.equal(tf.math.floormod(iterations, optimizer.precondition_frequency), 0)
    units = []
    for index in indices:
        for j, statistics in enumerate(optimizer._statistics[index]):
            for axis, statistic in enumerate(statistics):
                if statistic is None:
                    continue
                s = tf.convert_to_tensor(statistic)
                q = tf.convert_to_tensor(optimizer._bases[index][j][axis])
                batched = len(s.shape) == 3
                if not batched:
                    s, q = s[None], q[None]
                units.append(_Unit(index, j, axis, s, q, batched))
    if not units:
        return
    results = _refreshed(optimizer, units, first, refreshing)

    def sliced(parts: list[tf.Tensor]) -> list[tf.Tensor]:
        return [r[:, : int(u.statistic.shape[-1])] for u, r in zip(units, parts, strict=True)]

    # The bases change only on a refresh (else the all-reduce returned zeros),
    # and are written only then (the writes inside the branch).
    def write_bases() -> tf.Tensor:
        for unit, basis in zip(units, sliced(results), strict=True):
            optimizer.assign(optimizer._bases[unit.index][unit.piece][unit.axis],
                             basis if unit.batched else basis[0])  # fmt: skip
        return tf.constant(True)

    tf.cond(refreshing, write_bases, lambda: tf.constant(False))
    _rebase_moments(optimizer, units, results, refreshing, first)


def _refreshed(optimizer: Any, units: list[_Unit], first: tf.Tensor,
               refreshing: tf.Tensor) -> list[tf.Tensor]:  # fmt: skip
    """Per unit, ``[Q_new; Q_new.T Q; order]`` stacked ``(count, 2n + 1, n)``, the same on every replica.

    Zeros on steps without a refresh (nothing is computed or sent then).
    """
    context = _replica_context()
    # Buckets: per (dtype, n), the units' tiles stacked in a fixed order, so
    # that every replica derives the same plan and layout.
    buckets: dict[tuple[str, int], list[int]] = {}
    for u, unit in enumerate(units):
        buckets.setdefault((unit.statistic.dtype.name, int(unit.statistic.shape[-1])), []).append(u)
    keys = sorted(buckets)
    sizes = {key: sum(int(units[u].statistic.shape[0]) for u in buckets[key]) for key in keys}
    tiles = [(key, row) for key in keys for row in range(sizes[key])]
    owners = assign_owners([matrix_cost(key[1]) for key, _ in tiles], context.num_replicas_in_sync)
    owned = [{key: [row for (k, row), o in zip(tiles, owners, strict=True) if k == key and o == r]
              for key in keys} for r in range(context.num_replicas_in_sync)]  # fmt: skip

    def stack(key: tuple[str, int], field: str) -> tf.Tensor:
        parts = [getattr(units[u], field) for u in buckets[key]]
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)

    def zeros(key: tuple[str, int]) -> tf.Tensor:
        return tf.zeros((sizes[key], 2 * key[1] + 1, key[1]), key[0])

    def compute(rows: list[int], key: tuple[str, int]) -> tf.Tensor:
        """``[Q_new; Q_new.T Q; order]`` of ``rows`` of the bucket, zeros elsewhere."""
        if not rows:
            return zeros(key)
        whole = rows == list(range(sizes[key]))
        s, q = stack(key, "statistic"), stack(key, "basis")
        if not whole:
            s, q = tf.gather(s, rows), tf.gather(q, rows)
        n = key[1]

        def initialize() -> tuple[tf.Tensor, tf.Tensor]:
            # Step 1: m is still 0, so the transition is not used.
            order = tf.broadcast_to(tf.range(n), (len(rows), n))
            return optimizer._initial_basis(s), tf.zeros_like(q), order

        def refresh() -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            basis, order = optimizer.refresh_eigenbasis(s, q)
            return basis, optimizer._transition(basis, q), order

        basis, transition, order = tf.cond(first, initialize, refresh)
        result = tf.concat([basis, transition, tf.cast(order, key[0])[:, None, :]], axis=1)
        if whole:
            return result
        return tf.scatter_nd(tf.constant(rows)[:, None], result, (sizes[key], 2 * n + 1, n))

    branches = [
        lambda r=r: [compute(owned[r][key], key) for key in keys]
        for r in range(context.num_replicas_in_sync)
    ]  # fmt: skip
    # Out of range (no refresh this step): the default, zeros.
    index = tf.where(refreshing, tf.cast(context.replica_id_in_sync_group, tf.int32), -1)
    packed = tf.switch_case(index, branches, default=lambda: [zeros(key) for key in keys])
    summed = dict(zip(keys, _all_reduce(context, dict(zip(keys, packed, strict=True)), refreshing),
                      strict=True))  # fmt: skip

    out, offsets = [], dict.fromkeys(keys, 0)
    for unit in units:
        key = (unit.statistic.dtype.name, int(unit.statistic.shape[-1]))
        count = int(unit.statistic.shape[0])
        out.append(summed[key][offsets[key] : offsets[key] + count])
        offsets[key] += count
    return out


def _all_reduce(context: tf.distribute.ReplicaContext, buffers: dict[tuple[str, int], tf.Tensor],
                enabled: tf.Tensor) -> list[tf.Tensor]:  # fmt: skip
    """The buffers SUM-reduced over the replicas: one collective per dtype."""
    out = {}
    for dtype in sorted({key[0] for key in buffers}):
        keys = [key for key in buffers if key[0] == dtype]
        flat = tf.concat([tf.reshape(buffers[key], [-1]) for key in keys], axis=0)
        summed = context.merge_call(_sum_if_enabled, args=(flat, enabled))
        offset = 0
        for key in keys:
            size = buffers[key].shape.num_elements()
            out[key] = tf.reshape(summed[offset : offset + size], buffers[key].shape)
            offset += size
    return [out[key] for key in buffers]


def _rebase_moments(optimizer: Any, units: list[_Unit], results: list[tf.Tensor],
                    refreshing: tf.Tensor, first: tf.Tensor) -> None:  # fmt: skip
    """``m`` re-expressed in the new bases and ``v`` permuted, on a refresh after step 1.

    The same ops in the same order as the unsplit path's ``refresh``, so the
    same bits.
    """
    per_piece: dict[tuple[int, int], list[tuple[_Unit, tf.Tensor]]] = {}
    for unit, result in zip(units, results, strict=True):
        per_piece.setdefault((unit.index, unit.piece), []).append((unit, result))
    rebasing = tf.logical_and(refreshing, tf.logical_not(first))
    for (index, j), pairs in per_piece.items():
        m, v = optimizer._exp_avgs[index][j], optimizer._exp_avg_sqs[index][j]
        current = [tf.convert_to_tensor(m), tf.convert_to_tensor(v)]

        def rebased(pairs: list = pairs, current: list = current, m: Any = m, v: Any = v) -> tf.Tensor:
            first_moment, second_moment = current
            for unit, result in pairs:
                n = int(unit.statistic.shape[-1])
                transition, order = result[:, n : 2 * n], tf.cast(result[:, 2 * n], tf.int32)
                if not unit.batched:
                    transition, order = transition[0], order[0]
                first_moment = optimizer._rebase(first_moment, transition, unit.axis)
                second_moment = optimizer._permute(second_moment, order, unit.axis)
            optimizer.assign(m, first_moment)
            optimizer.assign(v, second_moment)
            return tf.constant(True)

        # Written only when rebased: between refreshes m and v stay as they are.
        tf.cond(rebasing, rebased, lambda: tf.constant(False))
