"""Which replica computes which preconditioner matrix: a plan every replica derives alone.

Plain Python, no TensorFlow: `tfopt._sharded_preconditioner` applies the plan
under ``tf.distribute``, and ``launch.bench.shampoo`` prints it (through
``tfopt.assign_owners`` and ``tfopt.matrix_cost``) on any backend.
"""

from __future__ import annotations

from collections.abc import Sequence


def matrix_cost(n: int) -> float:
    """The cost of one ``n x n`` matrix function (eigh, Newton iteration): ``n**3``."""
    return float(n) ** 3


def assign_owners(costs: Sequence[float], num_replicas: int) -> list[int]:
    """Greedy longest-processing-time balance: the owner replica of each matrix.

    Matrices are taken by decreasing cost (ties: lower index first), each given
    to the least-loaded replica (ties: lower replica id). Deterministic, so
    every replica derives the same plan without communicating. The busiest
    replica carries at most ``4/3`` of the optimal load (Graham, 1969).
    """
    if num_replicas < 1:
        raise ValueError(f"`num_replicas` must be >= 1. Received: num_replicas={num_replicas}.")
    loads = [0.0] * num_replicas
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        owner = min(range(num_replicas), key=lambda r: (loads[r], r))
        owners[i] = owner
        loads[owner] += costs[i]
    return owners
