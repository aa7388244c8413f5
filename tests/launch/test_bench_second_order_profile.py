"""launch.bench.second_order_profile's floor rows: the products they time are the ones they name."""

from __future__ import annotations

import numpy as np
import pytest

from launch.bench import second_order_profile as profile


class _Variable:
    def __init__(self, *shape: int) -> None:
        self.shape = shape


VARIABLES = [_Variable(300, 200), _Variable(200), _Variable(3, 3, 4, 8)]


def _products_numpy(floor: profile.MatmulFloor) -> float:
    """Every Gram matrix and contraction, written from the rule with np.einsum."""
    total = 0.0
    for blocks, roots in floor.stacks(VARIABLES):
        rank = blocks.ndim - 1
        for axis in range(rank):
            g = np.moveaxis(blocks, axis + 1, 1).reshape(len(blocks), blocks.shape[axis + 1], -1)
            total += np.einsum("zij,zkj->zik", g, g)[:, 0, 0].sum()
        x = blocks
        for _ in range(floor.passes):
            for root in roots:  # Contract the first block axis; the new axis goes last.
                x = np.moveaxis(np.tensordot(x, root, axes=([1], [1])).diagonal(axis1=0, axis2=rank), -1, 0)
        total += x[:, :1].sum()
    return total


def test_shampoo_floor_counts_every_block_of_every_variable():
    stacks = profile.MatmulFloor("shampoo").stacks(VARIABLES)
    shapes = sorted(blocks.shape for blocks, _ in stacks)
    # 300x200 in blocks of 128: rows 128, 128, 44; columns 128, 72. The bias: 128, 72.
    # The 3x3x4x8 kernel merges to 288 (Shampoo's merge_small_dims): 128, 128, 32.
    assert shapes == sorted([(2, 128, 128), (2, 128, 72), (1, 44, 128), (1, 44, 72),
                             (1, 128), (1, 72), (2, 128), (1, 32)])  # fmt: skip
    assert all(r.shape == (len(b), d, d) for b, rs in stacks for r, d in zip(rs, b.shape[1:], strict=True))


def test_soap_floor_counts_only_matrices_and_rotates_twice():
    floor = profile.MatmulFloor("soap")
    assert sorted(b.shape for b, _ in floor.stacks(VARIABLES)) == [(1, 44, 72), (1, 44, 128), (2, 128, 72), (2, 128, 128)]
    assert (floor.passes, profile.MatmulFloor("shampoo").passes) == (2, 1)


@pytest.mark.parametrize("optimizer", ["shampoo", "soap"])
def test_floor_computes_the_products_it_names(optimizer):
    floor = profile.MatmulFloor(optimizer)
    got = float(floor.products(VARIABLES)())
    want = _products_numpy(floor)
    assert got == pytest.approx(want, rel=1e-4, abs=1e-2)
