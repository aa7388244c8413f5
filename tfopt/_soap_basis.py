"""SOAP's eigenbases: computed at step 1, refreshed every ``precondition_frequency`` steps.

``tfopt._soap`` holds the rule (``SOAP``: its state and the rotated Adam
step ``_moments_step``). This mixin holds what keeps the rotation current
on one device, or on every replica when the work is not split: the initial
eigendecomposition at step 1, the refresh every ``precondition_frequency``
steps after it, and the re-expression of the moments in the new basis
(``m`` rotated by ``Q_new.T Q_old``, ``v`` permuted to the new eigenvalue
order). ``tfopt._soap_split`` splits the same units over replicas.

It relies on ``SOAP``'s state (``_exp_avgs``, ``_exp_avg_sqs``,
``_statistics``, ``_bases``, ``precondition_frequency``), on its public
``refresh_eigenbasis`` (one power iteration and QR, kept on ``SOAP`` where
the API reference shows it) and on Keras' optimizer API.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops


class SOAPBasis:
    """``SOAP``'s eigenbasis computation and refresh (module docstring)."""

    @staticmethod
    def _initial_basis(statistic: Any) -> Any:
        """Step 1: the eigenvectors of ``statistic`` (descending eigenvalues)."""
        n = statistic.shape[-1]
        eye = ops.eye(n, dtype=keras.backend.standardize_dtype(statistic.dtype))
        _, vectors = ops.eigh(statistic + 1e-30 * eye)
        return ops.flip(vectors, axis=-1)

    @staticmethod
    def _permute(v: Any, order: Any, axis: int) -> Any:
        """``v`` permuted by ``order`` along ``axis`` (of a stack's tiles when batched)."""
        if len(order.shape) == 1:
            return ops.take(v, order, axis=axis)
        return ops.take_along_axis(v, _broadcast(order, 1 + axis, v.shape), axis=1 + axis)

    def _basis_step(self, index: int) -> None:
        """Step 1: the eigenbases of the statistics; every ``precondition_frequency``
        steps after it, their refresh (``v`` permuted to the new order)."""
        for m, v, statistics, bases in zip(self._exp_avgs[index], self._exp_avg_sqs[index],
                                           self._statistics[index], self._bases[index],
                                           strict=True):  # fmt: skip
            self._piece_basis_step(m, v, statistics, bases)

    def _piece_basis_step(self, m: Any, v: Any, statistics: list[Any], bases: list[Any]) -> None:
        axes = [axis for axis, stat in enumerate(statistics) if stat is not None]
        if not axes:
            return
        new_statistics = [ops.convert_to_tensor(statistics[axis]) for axis in axes]
        current_bases = [ops.convert_to_tensor(bases[axis]) for axis in axes]
        current_m, current_v = ops.convert_to_tensor(m), ops.convert_to_tensor(v)

        def initialize() -> tuple[Any, Any, Any]:  # m is still 0: nothing to re-express.
            return current_m, current_v, [self._initial_basis(new) for new in new_statistics]

        def refresh() -> tuple[Any, Any, Any]:
            first_moment, second_moment, new_bases = current_m, current_v, []
            for axis, new, q in zip(axes, new_statistics, current_bases, strict=True):
                basis, order = self.refresh_eigenbasis(new, q)
                first_moment = self._rebase(first_moment, self._transition(basis, q), axis)
                second_moment = self._permute(second_moment, order, axis)
                new_bases.append(basis)
            return first_moment, second_moment, new_bases

        first = ops.equal(self.iterations, 0)
        refreshing = ops.equal(ops.mod(self.iterations, self.precondition_frequency), 0)
        targets = [m, v, *(bases[axis] for axis in axes)]

        def changed() -> list[Any]:
            new_m, new_v, new_bases = ops.cond(first, initialize, refresh)
            return [new_m, new_v, *new_bases]

        if keras.backend.backend() == "tensorflow":
            # The writes inside the branch: between refreshes nothing is
            # written. (m, v and every basis used to be written back each step;
            # without that the digits CNN's step takes 0.91x its time, the
            # 784-wide autoencoder's 1.00x, in 9 interleaved rounds; docs/soap.md.)
            def write() -> Any:
                for target, value in zip(targets, changed(), strict=True):
                    self.assign(target, value)
                return ops.convert_to_tensor(True)

            ops.cond(ops.logical_or(first, refreshing), write, lambda: ops.convert_to_tensor(False))
            return
        # JAX traces a cond's branches as pure functions (a write inside one
        # would leak its tracer): the new values come out, written after.
        new_values = ops.cond(
            ops.logical_or(first, refreshing), changed, lambda: [current_m, current_v, *current_bases]
        )
        for target, value in zip(targets, new_values, strict=True):
            self.assign(target, value)

    @staticmethod
    def _transition(basis: Any, previous: Any) -> Any:
        """``Q_new.T @ Q_old``: re-expresses what ``Q_old`` rotated in ``Q_new`` (stacks too)."""
        return ops.matmul(_t(basis), previous)

    @staticmethod
    def _rebase(x: Any, transition: Any, axis: int) -> Any:
        """``x`` (rotated by the old basis along ``axis``) rotated by the new one instead.

        ``transition`` is ``Q_new.T @ Q_old`` (stacked for tiles, whose ``x``
        carries the tile index first).
        """
        batched = len(transition.shape) == 3
        if len(x.shape) - batched == 2:
            return ops.matmul(transition, x) if axis == 0 else ops.matmul(x, _t(transition))
        moved = ops.tensordot(transition, x, axes=([1], [axis]))  # New axis first.
        return ops.moveaxis(moved, 0, axis)


def _t(matrix: Any) -> Any:
    """The transpose of the last two dimensions."""
    return ops.swapaxes(matrix, -1, -2)


def _broadcast(order: Any, axis: int, shape: Sequence[int]) -> Any:
    """A stack's ``order`` ``(count, n)`` as gather indices of ``shape`` along ``axis`` (1 or 2)."""
    return ops.broadcast_to(ops.expand_dims(order, 3 - axis), tuple(shape))
