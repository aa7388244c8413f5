"""SOAP's blocks: a matrix cut into tiles, the tiles of one shape stacked.

Shampoo-style blocking (Shampoo's ``block_size``; Meta's Distributed
Shampoo, whose eigenvalue-corrected variant is SOAP, blocks the same way):
each tile of at most ``block x block`` is a matrix of its own, with its own
statistics, eigenbases and second moment. A dimension of size ``n`` is cut
into ``n // block`` tiles of ``block`` and one remainder tile, so a matrix
has at most four tile shapes; the tiles of one shape form one group, and
every op of a step runs once per group on a stack ``(count, p, q)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from keras import ops


@dataclass(frozen=True)
class Group:
    """The tiles of one shape: rows ``rows[0]:rows[1]`` x columns ``cols[0]:cols[1]``."""

    rows: tuple[int, int]
    cols: tuple[int, int]
    tile: tuple[int, int]

    @property
    def grid(self) -> tuple[int, int]:
        return ((self.rows[1] - self.rows[0]) // self.tile[0],
                (self.cols[1] - self.cols[0]) // self.tile[1])  # fmt: skip

    @property
    def count(self) -> int:
        return self.grid[0] * self.grid[1]


def _segments(n: int, block: int) -> list[tuple[int, int, int]]:
    """``(start, stop, tile)``: the full tiles of ``block``, then the remainder."""
    if n <= block:
        return [(0, n, n)]
    full = n // block * block
    return [(0, full, block)] + ([(full, n, n - full)] if n > full else [])


def groups(shape: Sequence[int], blocks: Sequence[int]) -> list[Group]:
    """The tile groups of a ``shape`` matrix cut into ``blocks[i]`` along dimension ``i``."""
    rows, cols = (_segments(int(n), int(b)) for n, b in zip(shape, blocks, strict=True))
    return [Group((r0, r1), (c0, c1), (p, q)) for r0, r1, p in rows for c0, c1, q in cols]


def tile(x: Any, group: Group) -> Any:
    """``group``'s tiles of the matrix ``x``: ``(count, p, q)``, row-major over the grid."""
    (r0, r1), (c0, c1), (p, q), (nr, nc) = group.rows, group.cols, group.tile, group.grid
    x = x[r0:r1, c0:c1]
    if nr * nc == 1:
        return ops.expand_dims(x, 0)
    return ops.reshape(ops.transpose(ops.reshape(x, (nr, p, nc, q)), (0, 2, 1, 3)), (nr * nc, p, q))


def untile(stacks: Sequence[Any], all_groups: Sequence[Group]) -> Any:
    """The matrix whose :func:`tile` per group is ``stacks``."""
    pieces: dict[int, list[Any]] = {}
    for x, group in zip(stacks, all_groups, strict=True):
        (p, q), (nr, nc) = group.tile, group.grid
        if nr * nc == 1:
            block = x[0]
        else:
            block = ops.reshape(ops.transpose(ops.reshape(x, (nr, nc, p, q)), (0, 2, 1, 3)),
                                (nr * p, nc * q))  # fmt: skip
        pieces.setdefault(group.rows[0], []).append(block)
    rows = [ops.concatenate(row, axis=1) if len(row) > 1 else row[0] for row in pieces.values()]
    return ops.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]
