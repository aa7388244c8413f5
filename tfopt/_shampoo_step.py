"""How a Shampoo step runs: one XLA-compiled step on one TF device, or the roots split over replicas.

``tfopt._shampoo`` holds the rule (``Shampoo``: its state, the three phases
of a step and the plain ``update_step``). This mixin holds the two ways
``Shampoo._backend_update_step`` runs those phases over every variable at
once:

* ``_compiled_step``: on one TF device, every variable's step in one
  XLA-compiled function with the roots batched per shape
  (``_one_device_step``), or, for ``root_method="eigh"``, in two compiled
  halves with the refresh between them, outside XLA
  (``_one_device_step_eigh``);
* ``_split_step``: under a multi-replica strategy, each replica computes about
  ``1/N`` of the roots and one all-reduce per dtype shares them
  (``tfopt._sharded_preconditioner``).

It relies on ``Shampoo``'s attributes and phase methods (``_layouts``,
``_roots``, ``_gradient``, ``_update_statistics``, ``_root_fn``,
``_refresh``, ``_assign_roots``, ``_apply``) and on Keras' optimizer API.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfopt import _compiled
from tfopt._eigh_root import eigh_inverse_pth_root
from tfopt._matrix_functions import batched_matrix_inverse_pth_root


class ShampooStep:
    """``Shampoo``'s step execution over every variable at once (module docstring)."""

    # --- One TF device: every variable in one XLA-compiled step ----------------

    def _compiled_step(self, grads: list[Any], trainable_variables: list[Any],
                       learning_rate: Any) -> None:  # fmt: skip
        """Every variable's step in one XLA-compiled function (two for ``eigh``)."""
        variables = [getattr(v, "value", v) for v in trainable_variables]
        pairs = [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
        if self.root_method == "eigh":
            self._one_device_step_eigh(pairs, learning_rate)
        else:
            _compiled.whole_step(self, self._one_device_step)(pairs, learning_rate)

    def _batched_roots(self, matrices: list[Any], powers: list[int]) -> list[Any]:
        """Every statistic's root, in one batched Newton loop per (order, p, dtype)."""
        groups: dict[tuple, list[int]] = {}
        for i, (m, p) in enumerate(zip(matrices, powers, strict=True)):
            groups.setdefault((int(m.shape[0]), p, keras.backend.standardize_dtype(m.dtype)), []).append(i)
        out: list[Any] = [None] * len(matrices)
        method = eigh_inverse_pth_root if self.root_method == "eigh" else batched_matrix_inverse_pth_root
        for (_, p, _), picked in groups.items():
            roots, errors = method(
                ops.stack([matrices[i] for i in picked]), p, self.matrix_epsilon,
                self.relative_matrix_epsilon,
            )  # fmt: skip
            failed = ops.logical_or(ops.isnan(errors), errors >= self.inverse_failure_threshold)
            roots = ops.where(ops.reshape(failed, (-1, 1, 1)), float("nan"), roots)
            for i, root in zip(picked, ops.unstack(roots), strict=True):
                out[i] = root
        return out

    def _one_device_step(self, pairs: list[tuple[Any, Any]], learning_rate: Any) -> None:
        """``update_step`` for every variable, with the roots of all of them batched."""
        steps, matrices, owners, previous = self._collect_statistics(pairs)
        if matrices:
            powers = [2 * self._layouts[index].rank for index in owners]
            new_values = ops.cond(
                self._refresh(), lambda: self._batched_roots(matrices, powers), lambda: previous
            )
        for index, g, variable, start, count in steps:
            roots = self._roots[index]
            if count:
                roots = self._store_roots(roots, list(new_values[start : start + count]))
            self._apply(index, g, variable, learning_rate, roots)

    def _one_device_step_eigh(self, pairs: list[tuple[Any, Any]], learning_rate: Any) -> None:
        """``_one_device_step`` in two XLA-compiled halves with the refresh between them,
        outside XLA: XLA's CPU ``eigh`` took 150x TensorFlow's (``tfopt._eigh_root``)."""
        _compiled.whole_step(self, self._statistics_half, name="statistics")(pairs, learning_rate)
        indices = [self._get_variable_index(variable) for _, variable in pairs]
        statistics = [s for i in indices for s in self._statistics[i]]
        roots = [r for i in indices for r in self._roots[i]]
        if statistics:
            # Reads of the statistics follow the compiled half's writes (tf.function
            # orders the ops of one resource in program order).
            # `.value`: keras.ops.convert_to_tensor returns a Keras Variable unchanged,
            # which tf.stack rejects (Keras 3.15.1).
            matrices = [ops.convert_to_tensor(s.value) for s in statistics]
            previous = [ops.convert_to_tensor(r.value) for r in roots]
            powers = [2 * self._layouts[i].rank for i in indices for _ in self._statistics[i]]
            new_values = ops.cond(
                self._refresh(), lambda: self._batched_roots(matrices, powers), lambda: previous
            )
            self._store_roots(roots, list(new_values))
        _compiled.whole_step(self, self._apply_half, name="apply")(pairs, learning_rate)

    def _statistics_half(self, pairs: list[tuple[Any, Any]], learning_rate: Any) -> None:
        del learning_rate
        for grad, variable in pairs:
            index = self._get_variable_index(variable)
            self._update_statistics(index, self._gradient(grad, index))

    def _apply_half(self, pairs: list[tuple[Any, Any]], learning_rate: Any) -> None:
        for grad, variable in pairs:
            index = self._get_variable_index(variable)
            roots = [ops.convert_to_tensor(r.value) for r in self._roots[index]]
            self._apply(index, self._gradient(grad, index), variable, learning_rate, roots)

    def _store_roots(self, roots: list[Any], new_values: list[Any]) -> list[Any]:
        """``_assign_roots`` on refresh steps only; returns the roots to precondition with.

        Between refreshes ``new_values`` are the roots as read, so nothing is
        written. Assigning them back every step (after scanning them for
        non-finite values) read and wrote every root a step: with every other
        Shampoo phase stubbed out, the 784-wide autoencoder's step went from
        1.66x to 1.22x AdamW's without it (docs/benchmarks/second_order.md).
        TensorFlow only (the callers are): a write inside a cond branch is fine
        in a ``tf.function``, under XLA and in a replica context.
        """
        return ops.cond(
            self._refresh(), lambda: self._assign_roots(roots, new_values), lambda: list(new_values)
        )

    def _collect_statistics(self, pairs: list[tuple[Any, Any]]) -> tuple[list, list, list, list]:
        """Updates every variable's statistics; returns the per-variable steps
        ``(index, g, variable, start, count)``, the new statistics (flat), each
        one's variable index, and each one's current root."""
        steps, matrices, owners, previous = [], [], [], []
        for grad, variable in pairs:
            if grad is None:
                continue
            index = self._get_variable_index(variable)
            g = self._gradient(grad, index)
            statistics = self._update_statistics(index, g)
            steps.append((index, g, variable, len(matrices), len(statistics)))
            for statistic, root in zip(statistics, self._roots[index], strict=True):
                matrices.append(statistic)
                owners.append(index)
                previous.append(ops.convert_to_tensor(root))
        return steps, matrices, owners, previous

    # --- Several replicas: the roots split over them --------------------------

    def _split_step(self, grads: list[Any], trainable_variables: list[Any],
                    learning_rate: Any) -> None:  # fmt: skip
        """Every variable's step, each replica computing its share of the roots."""
        from tfopt._sharded_preconditioner import sharded_map

        variables = [getattr(v, "value", v) for v in trainable_variables]
        # As Keras: SUM of the per-replica gradients (each loss is divided by
        # the number of replicas). The reduced gradients are then the same on
        # every replica, so each replica updates its own copy of every
        # optimizer variable (aggregation "none"), as TF does without
        # merge_call, and only the roots need a collective.
        pairs = self._all_reduce_sum_gradients(list(zip(grads, variables, strict=True)))
        steps, matrices, owners, previous = self._collect_statistics(pairs)
        fns = [self._root_fn(index) for index in owners]
        new_values: list[Any] = [None] * len(matrices)
        # One collective per dtype (float32, and float64 variables if any).
        for dtype in sorted({m.dtype.name for m in matrices}):
            picked = [i for i, m in enumerate(matrices) if m.dtype.name == dtype]
            results = sharded_map(
                [fns[i] for i in picked],
                [matrices[i] for i in picked],
                enabled=self._refresh(),
                previous=[previous[i] for i in picked],
            )
            for i, value in zip(picked, results, strict=True):
                new_values[i] = value
        for index, g, variable, start, count in steps:
            roots = self._store_roots(self._roots[index], new_values[start : start + count])
            self._apply(index, g, variable, learning_rate, roots)
