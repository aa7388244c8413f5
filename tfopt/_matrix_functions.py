"""Shampoo's matrix plumbing: shape merging, block partitioning, inverse p-th roots.

Each function follows ``optax_shampoo/distributed_shampoo.py`` (optax-shampoo
0.0.6) line for line, so that ``tfopt.Shampoo`` takes the same steps:

* :func:`merge_small_dims` and :class:`BlockLayout` are its
  ``merge_small_dims`` and ``BlockPartitioner``;
* :func:`power_iteration` and :func:`matrix_inverse_pth_root` are its
  ``power_iteration`` and ``matrix_inverse_pth_root`` (the coupled Newton
  iteration of Higham, "Functions of Matrices", eq. 7.18), without the LOBPCG
  and padding options.

They use only ``keras.ops`` (``while_loop`` and matmuls), so they run on every
Keras backend, in a ``tf.function`` or under ``jax.jit``, under XLA and on
TPUs, which have no float64 ``eigh``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

# optax-shampoo's constants (not arguments of distributed_shampoo).
NEWTON_ITERATIONS = 100
NEWTON_TOLERANCE = 1e-6
MAX_ERROR_RATIO = 1.2  # The error may grow once before it shrinks; more is divergence.
POWER_ITERATIONS = 100
POWER_TOLERANCE = 1e-6
POWER_SEED = 1729


def merge_small_dims(shape: Sequence[int], max_dim: int) -> list[int]:
    """Merges neighbouring dimensions while their product stays <= ``max_dim``.

    ``[1, 2, 512, 1, 2048, 1, 3, 4] -> [1024, 2048, 12]`` for ``max_dim = 1024``.
    """
    if shape and all(d == 1 for d in shape):
        return [1]
    merged, product = [], 1
    for d in shape:
        if product * d <= max_dim:
            product *= d
        else:
            if product > 1:
                merged.append(product)
            product = d
    if product > 1:
        merged.append(product)
    return merged


class BlockLayout:
    """How one variable is reshaped and cut into blocks of at most ``block_size``.

    Blocks are listed in row-major order over the per-axis pieces; each block
    of rank ``r`` has ``r`` statistics, one per axis, in axis order.
    """

    def __init__(self, shape: Sequence[int], block_size: int, merge_dims_to: int | None) -> None:
        self.shape = list(shape)
        self.transformed_shape = (
            merge_small_dims(self.shape, merge_dims_to) if merge_dims_to else list(self.shape)
        )
        self.split_sizes = []
        for d in self.transformed_shape:
            if 0 < block_size < d:
                pieces = [block_size] * ((d - 1) // block_size)
                self.split_sizes.append([*pieces, d - sum(pieces)])
            else:
                self.split_sizes.append([d])

    @property
    def rank(self) -> int:
        return len(self.transformed_shape)

    @property
    def statistics_sizes(self) -> list[int]:
        """The order of every statistic (``d x d``), block by block, axis by axis."""
        return [d for block in itertools.product(*self.split_sizes) for d in block]

    def partition(self, tensor: Any) -> list[Any]:
        blocks = [ops.reshape(tensor, self.transformed_shape)]
        for axis, sizes in enumerate(self.split_sizes):
            if len(sizes) > 1:
                cuts = list(itertools.accumulate(sizes))[:-1]  # numpy.split's indices.
                blocks = [piece for b in blocks for piece in ops.split(b, cuts, axis=axis)]
        return blocks

    def merge(self, blocks: list[Any]) -> Any:
        for axis in reversed(range(self.rank)):
            n = len(self.split_sizes[axis])
            if n > 1:
                blocks = [
                    ops.concatenate(blocks[i : i + n], axis=axis) for i in range(0, len(blocks), n)
                ]
        (merged,) = blocks
        return ops.reshape(merged, self.shape)


    def block_groups(self) -> dict[tuple[int, ...], list[int]]:
        """The blocks' indices (``partition`` order), grouped by block shape."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for b, shape in enumerate(itertools.product(*self.split_sizes)):
            groups.setdefault(tuple(shape), []).append(b)
        return groups

    def grams(self, tensor: Any) -> list[Any]:
        """:func:`gram` of every block along every axis, in ``statistics_sizes`` order.

        One batched contraction per block shape and axis (a 784x256 variable in
        blocks of 128: 4 ops instead of 28), not one per block.
        """
        blocks = self.partition(tensor)
        out: list[Any] = [None] * (len(blocks) * self.rank)
        for picked in self.block_groups().values():
            stacked = ops.stack([blocks[b] for b in picked])
            for axis in range(self.rank):
                for b, value in zip(picked, ops.unstack(batched_gram(stacked, axis)), strict=True):
                    out[b * self.rank + axis] = value
        return out

    def precondition(self, tensor: Any, roots: Sequence[Any]) -> Any:
        """:func:`precondition_block` of every block with its roots (``statistics_sizes``
        order), merged back to the variable's shape; batched per block shape."""
        blocks = self.partition(tensor)
        k = self.rank
        out: list[Any] = [None] * len(blocks)
        for picked in self.block_groups().values():
            stacked = ops.stack([blocks[b] for b in picked])
            for axis in range(k):
                stacked_roots = ops.stack([roots[b * k + axis] for b in picked])
                stacked = batched_contract_first(stacked, stacked_roots)
            for b, value in zip(picked, ops.unstack(stacked), strict=True):
                out[b] = value
        return self.merge(out)


_LETTERS = "abcdefghijklmnopqrstuvwxy"  # "z" is the batch axis.


def batched_gram(blocks: Any, axis: int) -> Any:
    """:func:`gram` of each of ``blocks`` (a batch on axis 0) along ``axis``."""
    rank = len(blocks.shape) - 1
    left = _LETTERS[:rank]
    right = left[:axis] + "z" + left[axis + 1 :]  # Any letter not in `left`.
    right = right.replace("z", _LETTERS[rank])
    return ops.einsum(f"z{left},z{right}->z{left[axis]}{_LETTERS[rank]}", blocks, blocks)


def batched_contract_first(blocks: Any, roots: Any) -> Any:
    """One step of :func:`precondition_block` for each block: contract its first axis
    with its root's first axis; the root's second axis goes last."""
    rank = len(blocks.shape) - 1
    axes = _LETTERS[:rank]
    new = _LETTERS[rank]
    return ops.einsum(f"z{axes},z{axes[0]}{new}->z{axes[1:]}{new}", blocks, roots)


def gram(block: Any, axis: int) -> Any:
    """``G Gᵀ`` with ``G`` the block's slices along ``axis`` as rows (``d x d``)."""
    others = [i for i in range(len(block.shape)) if i != axis]
    return ops.tensordot(block, block, axes=(others, others))


def precondition_block(block: Any, roots: Sequence[Any]) -> Any:
    """``block ×₀ roots[0] ×₁ roots[1] ...``: contracting axis 0 appends the new axis
    last, so after ``rank`` contractions the axes are back in order."""
    for root in roots:
        block = ops.tensordot(block, root, axes=[[0], [0]])
    return block


def power_iteration(matrix: Any) -> Any:
    """The largest eigenvalue of a symmetric PSD matrix, as optax-shampoo estimates it
    (same seed, same stopping rule: |Δλ| <= 1e-6 or 100 iterations)."""
    n = matrix.shape[-1]
    dtype = keras.backend.standardize_dtype(matrix.dtype)
    v0 = ops.convert_to_tensor(
        np.random.RandomState(POWER_SEED).uniform(-1.0, 1.0, n).astype(dtype)
    )

    def condition(i, v, s, run):
        del v, s
        return ops.logical_and(i < POWER_ITERATIONS, run)

    def body(i, v, s, run):
        del run
        v = v / _norm(v)
        s_v = ops.matmul(matrix, v)
        s_new = ops.sum(v * s_v)
        return i + 1, s_v, s_new, ops.abs(s_new - s) > POWER_TOLERANCE

    _, _, s, _ = ops.while_loop(
        condition,
        body,
        (_int(0), v0, ops.zeros((), dtype), ops.convert_to_tensor(True)),
    )
    return s


def _matrix_power(matrix: Any, p: int) -> Any:
    # Binary powering in optax-shampoo's order (power = mat @ power), p static.
    power = ops.broadcast_to(ops.eye(matrix.shape[-1], dtype=matrix.dtype), matrix.shape)
    while p > 0:
        if p % 2 == 1:
            power = ops.matmul(matrix, power)
        p //= 2
        if p > 0:  # optax squares once more, unused.
            matrix = ops.matmul(matrix, matrix)
    return power


def matrix_inverse_pth_root(
    matrix: Any, p: int, ridge_epsilon: float, relative_matrix_epsilon: bool
) -> tuple[Any, Any]:
    """``(matrix + eps I)^(-1/p)`` by the coupled Newton iteration, and its error.

    ``eps = ridge_epsilon * max(λ_max, 1e-6)`` (``λ_max`` by power iteration)
    with ``relative_matrix_epsilon``, else ``ridge_epsilon``. The error is
    ``max |M - I|`` for the iteration's ``M = H^p (matrix + eps I)``; where the
    error ratio exceeded 1.2 (divergence) the previous iterate is returned.
    The caller treats ``error >= inverse_failure_threshold`` (or NaN) as a
    failure and keeps its previous root.
    """
    dtype = keras.backend.standardize_dtype(matrix.dtype)
    n = matrix.shape[0]
    alpha = ops.convert_to_tensor(-1.0 / p, dtype)
    max_ev = power_iteration(matrix) if relative_matrix_epsilon else ops.convert_to_tensor(1.0, dtype)
    ridge = ridge_epsilon * ops.maximum(max_ev, ops.convert_to_tensor(1e-6, dtype))
    if n == 1:
        return ops.power(matrix + ridge, alpha), ops.zeros((), dtype)

    identity = ops.eye(n, dtype=dtype)
    damped = matrix + ridge * identity
    z = (1 + p) / (2 * _norm(damped))
    m0 = damped * z
    h0 = identity * ops.power(z, 1.0 / p)
    error0 = ops.max(ops.abs(m0 - identity))

    def condition(i, m, h, old_h, error, ratio):
        del m, h, old_h
        return ops.logical_and(
            i < NEWTON_ITERATIONS,
            ops.logical_and(error > NEWTON_TOLERANCE, ratio < MAX_ERROR_RATIO),
        )

    def body(i, m, h, old_h, error, ratio):
        del old_h, ratio
        m_i = (1 - alpha) * identity + alpha * m
        new_m = ops.matmul(_matrix_power(m_i, p), m)
        new_h = ops.matmul(h, m_i)
        new_error = ops.max(ops.abs(new_m - identity))
        return i + 1, new_m, new_h, h, new_error, new_error / error

    _, m, h, old_h, _, ratio = ops.while_loop(
        condition, body, (_int(0), m0, h0, h0, error0, ops.convert_to_tensor(1.0, dtype))
    )
    error = ops.max(ops.abs(m - identity))
    root = ops.where(ratio < MAX_ERROR_RATIO, h, old_h)
    return root, error


def _norm(x: Any) -> Any:
    """The Euclidean norm of all of ``x``'s entries (``tf.norm``'s default)."""
    return ops.sqrt(ops.sum(ops.square(x)))


def _int(value: int) -> Any:
    # A loop counter of a fixed dtype: JAX's while_loop needs the carry's types fixed.
    return ops.convert_to_tensor(value, "int32")


def batched_power_iteration(matrices: Any) -> Any:
    """:func:`power_iteration` of each of ``matrices`` (``B x n x n``), in one loop.

    A matrix whose estimate has converged is frozen (``where``) while the
    others go on, so each gets exactly the iterations it gets alone.
    """
    n = matrices.shape[-1]
    dtype = keras.backend.standardize_dtype(matrices.dtype)
    v0 = np.random.RandomState(POWER_SEED).uniform(-1.0, 1.0, n).astype(dtype)
    v0 = ops.broadcast_to(ops.convert_to_tensor(v0), (matrices.shape[0], n))
    batch = matrices.shape[0]

    def condition(i, v, s, run):
        del v, s
        return ops.logical_and(i < POWER_ITERATIONS, ops.any(run))

    def body(i, v, s, run):
        unit = v / ops.sqrt(ops.sum(ops.square(v), axis=-1, keepdims=True))
        s_v = ops.squeeze(ops.matmul(matrices, ops.expand_dims(unit, -1)), -1)
        s_new = ops.sum(unit * s_v, axis=-1)
        v = ops.where(ops.expand_dims(run, -1), s_v, v)
        keep_going = ops.logical_and(run, ops.abs(s_new - s) > POWER_TOLERANCE)
        s = ops.where(run, s_new, s)
        return i + 1, v, s, keep_going

    _, _, s, _ = ops.while_loop(
        condition, body, (_int(0), v0, ops.zeros((batch,), dtype), ops.ones((batch,), "bool"))
    )
    return s


def batched_matrix_inverse_pth_root(
    matrices: Any, p: int, ridge_epsilon: float, relative_matrix_epsilon: bool
) -> tuple[Any, Any]:
    """:func:`matrix_inverse_pth_root` of each of ``matrices`` (``B x n x n``), in one loop.

    Few large batched matmuls instead of one loop of small ones per matrix
    (optax-shampoo vmaps the same function). A matrix whose iteration has
    stopped is frozen (``where``), so each gets exactly the iterations it
    gets alone. Returns the roots (``B x n x n``) and errors (``B``).
    """
    dtype = keras.backend.standardize_dtype(matrices.dtype)
    batch, n = matrices.shape[0], matrices.shape[-1]
    alpha = ops.convert_to_tensor(-1.0 / p, dtype)
    if relative_matrix_epsilon:
        max_ev = batched_power_iteration(matrices)
    else:
        max_ev = ops.ones((batch,), dtype)
    ridge = ridge_epsilon * ops.maximum(max_ev, ops.convert_to_tensor(1e-6, dtype))
    ridge = ops.reshape(ridge, (batch, 1, 1))
    if n == 1:
        return ops.power(matrices + ridge, alpha), ops.zeros((batch,), dtype)

    identity = ops.eye(n, dtype=dtype)
    damped = matrices + ridge * identity
    z = (1 + p) / (2 * ops.sqrt(ops.sum(ops.square(damped), axis=(1, 2), keepdims=True)))
    m0 = damped * z
    h0 = identity * ops.power(z, 1.0 / p)

    def error_of(m):
        return ops.max(ops.abs(m - identity), axis=(1, 2))

    error0 = error_of(m0)
    ratio0 = ops.ones((batch,), dtype)

    def running(error, ratio):
        return ops.logical_and(error > NEWTON_TOLERANCE, ratio < MAX_ERROR_RATIO)

    def condition(i, m, h, old_h, error, ratio, run):
        del m, h, old_h, error, ratio
        return ops.logical_and(i < NEWTON_ITERATIONS, ops.any(run))

    def body(i, m, h, old_h, error, ratio, run):
        m_i = (1 - alpha) * identity + alpha * m
        new_m = ops.matmul(_matrix_power(m_i, p), m)
        new_h = ops.matmul(h, m_i)
        new_error = error_of(new_m)
        new_ratio = new_error / error
        run3 = ops.reshape(run, (batch, 1, 1))
        m = ops.where(run3, new_m, m)
        old_h = ops.where(run3, h, old_h)
        h = ops.where(run3, new_h, h)
        error = ops.where(run, new_error, error)
        ratio = ops.where(run, new_ratio, ratio)
        return i + 1, m, h, old_h, error, ratio, ops.logical_and(run, running(error, ratio))

    _, m, h, old_h, _, ratio, _ = ops.while_loop(
        condition, body, (_int(0), m0, h0, h0, error0, ratio0, running(error0, ratio0))
    )
    error = error_of(m)
    root = ops.where(ops.reshape(ratio < MAX_ERROR_RATIO, (batch, 1, 1)), h, old_h)
    return root, error
