"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner (Vyas et al., 2024)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

from tfopt import _compiled, _soap_blocks, _sparse
from tfopt._registry import register
from tfopt._soap_basis import SOAPBasis, _broadcast, _t
from tfopt._validation import (
    check_bool,
    check_int,
    check_learning_rate,
    check_non_negative,
    check_positive,
    check_unit_interval,
)


@register("soap")
class SOAP(SOAPBasis, keras.optimizers.Optimizer):
    """ShampoO with Adam in the Preconditioner's eigenbasis, as its authors define it.

    SOAP keeps Shampoo's Kronecker-factored statistics ``L``, ``R`` (one per
    dimension of each variable), rotates the gradient into their eigenbasis
    ``Q_L``, ``Q_R``, runs Adam there, and rotates the step back. The basis is
    refreshed every ``precondition_frequency`` steps by one power iteration
    and a QR decomposition, so that between refreshes a step costs little more
    than Adam's. The definition is the authors' reference as
    ``pytorch_optimizer.SOAP`` (pytorch-optimizer 4.1.0) implements it. For a
    matrix variable ``w`` with gradient ``g`` (every variable: see below),
    ``t`` the 1-based step::

        # Step 1 only initialises the statistics; w does not move.
        L = shampoo_beta * L + (1 - shampoo_beta) * g @ g.T      (L = 0 at t=1)
        R = shampoo_beta * R + (1 - shampoo_beta) * g.T @ g
        Q_L, Q_R = eigenvectors of L, R (descending eigenvalues)

        # Steps t >= 2, with s = t - 1:
        m = beta_1 * m + (1 - beta_1) * g                        (original space)
        v = beta_2 * v + (1 - beta_2) * (Q_L.T @ g @ Q_R)**2     (rotated space)
        u = Q_L @ ((Q_L.T @ m @ Q_R) / (sqrt(v) + epsilon)) @ Q_R.T
        u = u / (sqrt(mean(u**2)) + epsilon)                     (if normalize_grads)
        w = w - learning_rate * sqrt(1 - beta_2**s) / (1 - beta_1**s) * u
                                              (the factor only if correct_bias)
        w = w * (1 - learning_rate * weight_decay)               (decoupled)
        L, R updated with g as above
        if s % precondition_frequency == 0:                       (the refresh)
            for Q, S in (Q_L, L), (Q_R, R):
                order = argsort(-diag(Q.T @ S @ Q))               (estimated eigenvalues)
                v = v permuted by order along Q's dimension
                Q = qr((S @ Q)[:, order]).Q

    A variable of ``n`` dimensions has one statistic per dimension, each the
    gradient contracted with itself over the other dimensions; ``Q_i``
    rotates dimension ``i``. A dimension larger than ``max_precondition_dim``
    is not rotated (identity). A vector is rotated only with
    ``precondition_1d`` (one full ``n x n`` statistic); otherwise it takes
    Adam's step with SOAP's schedule. ``merge_dims`` first reshapes a
    variable by merging consecutive dimensions while their product stays at
    most ``max_precondition_dim`` (a 3x3x64x128 conv kernel becomes 576x128
    with the default), as the reference's ``merge_small_dims``.

    **Blocks.** A matrix (after ``merge_dims``) with a rotated dimension
    larger than ``block_size`` is cut into tiles of at most ``block_size`` x
    ``block_size`` along its rotated dimensions (``n // block_size`` full
    tiles and one remainder per dimension), as Shampoo blocks: each tile is a
    matrix of its own, with its own statistics, eigenbases and second moment,
    and the tiles of one shape run as one stack (batched matmuls and QR).
    ``normalize_grads`` still normalizes the whole variable's update. With
    the default 128, a 784x256 kernel is 14 tiles (12 of 128x128, 2 of
    16x128): a step's statistics and rotations cost ``O(mn b)`` instead of
    ``O(mn (m + n))``, and a refresh ``O((m + n) b^2)`` instead of
    ``O(m^3 + n^3)``. ``block_size=None`` never cuts (the authors'
    reference, which has no blocks); variables of another rank (vectors,
    unmerged conv kernels) are never cut.

    **Split over replicas.** Under a multi-replica ``tf.distribute`` strategy,
    in a replica context, each replica refreshes the bases of about ``1/N``
    of the statistics (every tile has one owner, balanced by ``n**3``; a
    replica's tiles of one size run as one stack) and one all-reduce per
    refresh shares them (``tfopt._soap_split``, Shampoo's plan;
    ``split_preconditioner_work=False`` makes every replica compute all of
    them). The result is bitwise the unsplit one. Not on the
    JAX and PyTorch backends, where every device computes every basis.

    Numerics: all state (``m``, ``v``, ``L``, ``R``, ``Q``) is kept in float32
    (float64 for float64 variables), also for float16/bfloat16 variables,
    whose eigen-decompositions TensorFlow does not support. The eigenbasis is
    sensitive: where a statistic has repeated eigenvalues (``g @ g.T`` at
    step 1 of a non-square matrix), any basis of that eigenspace is valid and
    different libraries pick different ones, so runs agree to float rounding
    only once the statistics are full rank. ``Q`` starts as the identity, so a
    variable that gets no gradient at step 1 takes Adam steps until its first
    refresh.

    Differences from the references, all deliberate:

    * ``weight_decay`` is SOAP's own, applied after the step as the reference
      does; Keras' decoupled decay (applied before the step) is not applied
      as well. ``exclude_from_weight_decay`` is honoured.
    * ``shampoo_beta=None`` means ``beta_2`` (pytorch-optimizer 4.1.0; the
      authors' code uses a negative value for this).
    * With ``merge_dims``, a variable whose dimensions all merge into one
      becomes one ``n x n`` statistic; pytorch-optimizer 4.1.0's
      ``merge_small_dims`` returns ``[1]`` there and its reshape fails.
    * ``normalize_grads`` divides by ``rms(u) + epsilon`` (pytorch-optimizer
      4.1.0; the authors' code adds 1e-30).
    * Steps are counted by the optimizer's ``iterations`` (shared by all
      variables), not per variable.
    * ``block_size=128`` cuts matrices larger than 128 into tiles; the
      references have no blocks (``block_size=None`` is theirs).

    Args:
      learning_rate: float, ``LearningRateSchedule`` or callable.
      beta_1: decay of the first moment, in [0, 1).
      beta_2: decay of the second moment, in [0, 1).
      shampoo_beta: decay of the statistics ``L``, ``R``, in [0, 1); ``None``
        uses ``beta_2``.
      epsilon: added to the denominator, > 0.
      weight_decay: decoupled weight decay, >= 0 (``None`` means 0); the
        weights are multiplied by ``1 - learning_rate * weight_decay`` after
        each step.
      precondition_frequency: steps between eigenbasis refreshes, >= 1.
      max_precondition_dim: largest dimension given a statistic, >= 1.
      merge_dims: merge small consecutive dimensions before preconditioning.
      precondition_1d: give vectors (biases, norms) a full statistic too.
      normalize_grads: scale each variable's update to unit RMS.
      correct_bias: Adam's bias correction of the step size.
      block_size: largest tile of a matrix, >= 1; ``None`` for no tiles.
      split_preconditioner_work: split the eigenbasis refresh over replicas.
      **kwargs: the Keras optimizer options (``clipnorm``, ``use_ema``,
        ``name``...).

    Reference:
      Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", 2024,
      https://arxiv.org/abs/2409.11321

    Example:
      >>> import keras, tfopt
      >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
      >>> model.compile(optimizer=tfopt.SOAP(3e-3, precondition_frequency=5),
      ...               loss="mse")
      >>> opt = model.optimizer
      >>> opt.build(model.trainable_variables)
      >>> print(*(tuple(q.shape) for q in opt.eigenbases(model.trainable_variables[0])))
      (3, 3) (2, 2)
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule | Callable = 3e-3,
        beta_1: float = 0.95,
        beta_2: float = 0.95,
        shampoo_beta: float | None = None,
        epsilon: float = 1e-8,
        weight_decay: float | None = 0.01,
        precondition_frequency: int = 10,
        max_precondition_dim: int = 10000,
        merge_dims: bool = False,
        precondition_1d: bool = False,
        normalize_grads: bool = False,
        correct_bias: bool = True,
        block_size: int | None = 128,
        split_preconditioner_work: bool = True,
        **kwargs: Any,
    ) -> None:
        check_learning_rate(learning_rate)
        check_unit_interval("beta_1", beta_1)
        check_unit_interval("beta_2", beta_2)
        if shampoo_beta is not None:
            check_unit_interval("shampoo_beta", shampoo_beta)
        check_positive("epsilon", epsilon)
        if weight_decay is not None:
            check_non_negative("weight_decay", weight_decay)
        check_int("precondition_frequency", precondition_frequency, 1)
        check_int("max_precondition_dim", max_precondition_dim, 1)
        if block_size is not None:
            check_int("block_size", block_size, 1)
        for name, value in (
            ("merge_dims", merge_dims),
            ("precondition_1d", precondition_1d),
            ("normalize_grads", normalize_grads),
            ("correct_bias", correct_bias),
            ("split_preconditioner_work", split_preconditioner_work),
        ):
            check_bool(name, value)
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.shampoo_beta = None if shampoo_beta is None else float(shampoo_beta)
        self.epsilon = float(epsilon)
        self.precondition_frequency = int(precondition_frequency)
        self.max_precondition_dim = int(max_precondition_dim)
        self.merge_dims = merge_dims
        self.precondition_1d = precondition_1d
        self.normalize_grads = normalize_grads
        self.correct_bias = correct_bias
        self.block_size = None if block_size is None else int(block_size)
        self.split_preconditioner_work = split_preconditioner_work

    # --- Layout --------------------------------------------------------------

    def preconditioned_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The shape SOAP rotates: ``shape``, or its merged form with ``merge_dims``."""
        shape = tuple(int(d) for d in shape)
        if not self.merge_dims or len(shape) < 2:
            return shape
        merged, product = [], 1
        for d in shape:  # pytorch_optimizer.optimizer.utils.shape.merge_small_dims
            product *= d
            if product > self.max_precondition_dim:
                merged.append(product // d)
                product = d
        merged.append(product)
        return tuple(merged)

    def _rotated_axes(self, shape: Sequence[int]) -> list[bool]:
        """Per dimension of the preconditioned shape: whether it has a statistic."""
        if len(shape) == 0:
            return []
        if len(shape) == 1 and not self.precondition_1d:
            return [False]
        merged = self.preconditioned_shape(shape)
        return [d <= self.max_precondition_dim for d in merged]

    @staticmethod
    def _state_dtype(dtype: str) -> str:
        return "float64" if dtype == "float64" else "float32"

    def _blocks(self, shape: Sequence[int], rotated: Sequence[bool]) -> list[int] | None:
        """Per dimension of a matrix, its tile size; ``None`` if it is not cut."""
        if len(shape) != 2 or self.block_size is None:
            return None
        if not any(r and d > self.block_size for d, r in zip(shape, rotated, strict=True)):
            return None
        return [self.block_size if r else d for d, r in zip(shape, rotated, strict=True)]

    def build(self, var_list: list[Any]) -> None:
        if self.built:
            return
        super().build(var_list)
        # Per variable: `_groups` None (one piece: the whole preconditioned
        # shape), or its tile groups (one piece each, state stacked per group).
        # `_exp_avgs`, `_exp_avg_sqs`, `_statistics`, `_bases`: per variable,
        # per piece; both moments in the rotated space (see _moments_step).
        self._exp_avgs, self._exp_avg_sqs, self._statistics, self._bases = [], [], [], []
        self._shapes, self._groups = [], []
        for var in var_list:
            dtype = self._state_dtype(keras.backend.standardize_dtype(var.dtype))
            shape = self.preconditioned_shape(var.shape)
            rotated = self._rotated_axes(var.shape)
            blocks = self._blocks(shape, rotated)
            groups = None if blocks is None else _soap_blocks.groups(shape, blocks)
            self._shapes.append(shape)
            self._groups.append(groups)
            name = var.name.replace("/", "_").replace(":", "_")
            pieces = [(shape, "")] if groups is None else [
                ((g.count, *g.tile), f"_block{j}") for j, g in enumerate(groups)
            ]  # fmt: skip
            ms, vs, statistics, bases = [], [], [], []
            for piece_shape, suffix in pieces:
                ms.append(self.add_variable(piece_shape, "zeros", dtype, name=f"{name}_exp_avg{suffix}"))
                vs.append(self.add_variable(piece_shape, "zeros", dtype, name=f"{name}_exp_avg_sq{suffix}"))
                batch = piece_shape[:-2] if groups is not None else ()
                dims = piece_shape[len(batch):]
                stats, qs = [], []
                for axis, is_rotated in enumerate(rotated):
                    n = dims[axis]
                    stats.append(self.add_variable(
                        (*batch, n, n), "zeros", dtype, name=f"{name}_statistic_{axis}{suffix}"
                    ) if is_rotated else None)  # fmt: skip
                    qs.append(self.add_variable(
                        (*batch, n, n), _identity, dtype, name=f"{name}_eigenbasis_{axis}{suffix}"
                    ) if is_rotated else None)  # fmt: skip
                statistics.append(stats)
                bases.append(qs)
            self._exp_avgs.append(ms)
            self._exp_avg_sqs.append(vs)
            self._statistics.append(statistics)
            self._bases.append(bases)
        # Decided here, on the Keras variables (which have paths): update_step
        # sees bare per-replica tf.Variables under tf.distribute.
        self._decays = [bool(self.weight_decay) and self._use_weight_decay(v) for v in var_list]

    def eigenbases(self, variable: Any) -> list[Any]:
        """``variable``'s eigenbasis per preconditioned dimension (``None``: not rotated).

        A matrix cut into blocks (``block_size``) has one list per tile group
        instead, each basis stacked ``(tiles, n, n)``.
        """
        index = self._get_variable_index(variable)
        bases = self._bases[index]
        return list(bases[0]) if self._groups[index] is None else [list(b) for b in bases]

    # --- The rule ------------------------------------------------------------

    def _apply_weight_decay(self, variables: list[Any]) -> None:
        # SOAP decays after its step (the reference's order), in update_step;
        # Keras would otherwise decay a second time, before it.
        del variables

    @staticmethod
    def _project(x: Any, bases: Sequence[Any], back: bool = False) -> Any:
        """``Q_0.T (x) Q_1 ...`` (or ``Q_0 (x) Q_1.T ...`` back), one dimension at a time.

        Each step contracts dimension 0 and appends the result last, so after
        every dimension the order is the original one again. ``x`` may carry
        leading batch dimensions when every dimension is a matrix's (2-D), and
        then the bases may too (a stack of tiles, broadcast against ``x``).
        """
        if all(q is None for q in bases):
            return x
        if len(bases) == 2:
            # Matrices, the common case: two matmuls with transpose flags
            # instead of tensordot's transposes and reshapes (a third of the
            # ops of a step that is dispatch-bound on small layers).
            left, right = bases
            if left is not None:
                x = ops.matmul(left if back else _t(left), x)
            if right is not None:
                x = ops.matmul(x, _t(right) if back else right)
            return x
        for q in bases:
            if q is None:
                x = ops.transpose(x, [*range(1, len(x.shape)), 0])
            else:
                x = ops.tensordot(x, q, axes=([0], [1 if back else 0]))
        return x

    @staticmethod
    def _gram(g: Any, axis: int, matrix: bool) -> Any:
        """``g`` contracted with itself over every dimension but ``axis``.

        ``matrix``: ``g`` is a matrix, or a stack of tiles ``(count, p, q)``.
        """
        if matrix:
            return ops.matmul(_t(g), g) if axis == 1 else ops.matmul(g, _t(g))
        others = [i for i in range(len(g.shape)) if i != axis]
        return ops.tensordot(g, g, axes=(others, others))

    def _pieces(self, index: int, x: Any) -> list[Any]:
        """``x`` (of the preconditioned shape) as its pieces: itself, or its tile stacks."""
        groups = self._groups[index]
        return [x] if groups is None else [_soap_blocks.tile(x, g) for g in groups]

    def _assemble(self, index: int, pieces: list[Any]) -> Any:
        groups = self._groups[index]
        return pieces[0] if groups is None else _soap_blocks.untile(pieces, groups)

    def _new_statistics(self, index: int, g_pieces: list[Any]) -> list[list[Any]]:
        """Per piece, the statistics after this step's gradient: ``L + (1 - shampoo_beta) (g g.T - L)``."""
        shampoo_beta = self.beta_2 if self.shampoo_beta is None else self.shampoo_beta
        matrix = len(self._shapes[index]) == 2
        return [
            [None if s is None else s + (1 - shampoo_beta) * (self._gram(g, axis, matrix) - s)
             for axis, s in enumerate(statistics)]
            for g, statistics in zip(g_pieces, self._statistics[index], strict=True)
        ]  # fmt: skip

    def refresh_eigenbasis(self, statistic: Any, basis: Any) -> tuple[Any, Any]:
        """One power iteration and QR: returns ``(new basis, order)``.

        ``order`` sorts the estimated eigenvalues ``diag(Q.T S Q)`` in
        descending order; the second moment is permuted by it. Either one
        ``n x n`` pair or stacks of them ``(count, n, n)`` (then ``order`` is
        ``(count, n)``). This is the unit a sharded refresh distributes (one
        per statistic).
        """
        product = ops.matmul(statistic, basis)
        estimated = ops.sum(basis * product, axis=-2)
        order = ops.argsort(-estimated, axis=-1)
        if len(statistic.shape) == 2:
            power = ops.take(product, order, axis=1)
        else:
            power = ops.take_along_axis(product, _broadcast(order, 2, product.shape), axis=-1)
        basis, _ = ops.qr(power)
        return basis, order

    # Measured off (docs/benchmarks/second_order.md, 2026-12-02): compiled,
    # XLA's CPU matmuls made the 784-wide autoencoder's step 7.5x AdamW's
    # where TF's own took 3.6x, and the digits CNN gained nothing.
    _compile_update = False

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if _compiled.eligible(self):
            # One TF device: the moments and the step compiled with XLA; the
            # eigenbasis (eigh, QR) not, as XLA's CPU eigh and QR are slow loops.
            _compiled.steps(self, self._moments_step)(gradient, variable, learning_rate)
        else:
            self._moments_step(gradient, variable, learning_rate)
        self._basis_step(self._get_variable_index(variable))

    def _moments_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """The statistics, ``m``, ``v`` and ``w`` (which does not move at step 1)."""
        index = self._get_variable_index(variable)
        dtype = self._state_dtype(keras.backend.standardize_dtype(variable.dtype))
        shape = self._shapes[index]
        ms, vs = self._exp_avgs[index], self._exp_avg_sqs[index]
        statistics, bases = self._statistics[index], self._bases[index]
        g = ops.cast(_sparse.densify(gradient), dtype)  # Every row's moments decay.
        g_pieces = self._pieces(index, ops.reshape(g, shape))
        new_statistics = self._new_statistics(index, g_pieces)
        current_w = ops.cast(variable, dtype)

        # Both branches return the new values, written after the cond: JAX
        # traces a cond's branches as pure functions (a write inside one would
        # leak its tracer).
        def initialize() -> tuple[Any, ...]:  # Step 1: statistics only; w does not move.
            return current_w, [ops.convert_to_tensor(m) for m in ms], [ops.convert_to_tensor(v) for v in vs]

        def step() -> tuple[Any, ...]:
            s = ops.cast(self.iterations, dtype)  # The reference's 1-based step, minus 1.
            lr = ops.cast(learning_rate, dtype)
            beta_1, beta_2 = self.beta_1, self.beta_2
            # The reference keeps m in the original space and rotates it each
            # step; the rotation is linear and fixed between refreshes, so m
            # is kept rotated (Q.T (b m + (1 - b) g) Q = b Q.T m Q + (1 - b)
            # Q.T g Q) and re-expressed in the new basis at each refresh: two
            # matmuls a step fewer, the same algebra.
            new_ms, new_vs, us = [], [], []
            for g_piece, m, v, piece_bases in zip(g_pieces, ms, vs, bases, strict=True):
                q = [None if b is None else ops.convert_to_tensor(b) for b in piece_bases]
                g_rotated = self._project(g_piece, q)
                # m, v: m + (1 - beta_1) (g - m), as the reference's lerp.
                new_m = m + (1 - beta_1) * (g_rotated - m)
                new_v = v + (1 - beta_2) * (ops.square(g_rotated) - v)
                us.append(self._project(new_m / (ops.sqrt(new_v) + self.epsilon), q, back=True))
                new_ms.append(new_m)
                new_vs.append(new_v)
            u = self._assemble(index, us)
            if self.normalize_grads:
                u = u / (ops.sqrt(ops.mean(ops.square(u))) + self.epsilon)
            step_size = lr
            if self.correct_bias:
                bias_1 = 1 - ops.power(ops.convert_to_tensor(beta_1, dtype), s)
                bias_2 = 1 - ops.power(ops.convert_to_tensor(beta_2, dtype), s)
                step_size = lr * ops.sqrt(bias_2) / bias_1
            w = current_w - step_size * ops.reshape(u, variable.shape)
            if self._decays[index]:
                w = w * (1 - lr * ops.convert_to_tensor(self.weight_decay, dtype))
            return w, new_ms, new_vs

        new_w, new_ms, new_vs = ops.cond(ops.equal(self.iterations, 0), initialize, step)
        self.assign(variable, ops.cast(new_w, variable.dtype))
        for m, v, new_m, new_v in zip(ms, vs, new_ms, new_vs, strict=True):
            self.assign(m, new_m)
            self.assign(v, new_v)
        for piece, values in zip(statistics, new_statistics, strict=True):
            for statistic, value in zip(piece, values, strict=True):
                if statistic is not None:
                    self.assign(statistic, value)

    # --- Several replicas: the refresh split over them ------------------------

    def _backend_update_step(self, grads: list[Any], trainable_variables: list[Any],
                             learning_rate: Any) -> None:  # fmt: skip
        if keras.backend.backend() != "tensorflow":
            # No tf.distribute replica context: every device refreshes every basis.
            super()._backend_update_step(grads, trainable_variables, learning_rate)
            return
        from tfopt import _soap_split
        from tfopt._sharded_preconditioner import splits

        if not splits(self):
            super()._backend_update_step(grads, trainable_variables, learning_rate)
            return
        variables = [getattr(v, "value", v) for v in trainable_variables]
        # As Keras and Shampoo: SUM of the per-replica gradients; every replica
        # then updates its own copy of the state, and only the bases need a
        # collective.
        pairs = self._all_reduce_sum_gradients(list(zip(grads, variables, strict=True)))
        indices = []
        for grad, variable in pairs:
            if grad is not None:
                self._moments_step(grad, variable, learning_rate)
                indices.append(self._get_variable_index(variable))
        _soap_split.split_basis_steps(self, indices)

    # For `strategies.fit` (and any tool that runs Keras' hooks replica-local,
    # on all-reduced gradients): these overrides are right there too.
    replica_local_hooks = {
        "_apply_weight_decay": "does nothing: the decay is applied in update_step",
        "_backend_update_step": "sums gradients through _all_reduce_sum_gradients, which "
        "strategies replaces with the identity after reducing first; else calls super()",
    }

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "shampoo_beta": self.shampoo_beta,
                "epsilon": self.epsilon,
                "precondition_frequency": self.precondition_frequency,
                "max_precondition_dim": self.max_precondition_dim,
                "merge_dims": self.merge_dims,
                "precondition_1d": self.precondition_1d,
                "normalize_grads": self.normalize_grads,
                "correct_bias": self.correct_bias,
                "block_size": self.block_size,
                "split_preconditioner_work": self.split_preconditioner_work,
            }
        )
        return config


def _identity(shape: Sequence[int], dtype: Any = None) -> Any:
    """The identity matrix, or a stack of them (SOAP's bases before step 1)."""
    return ops.broadcast_to(ops.eye(shape[-1], dtype=dtype), shape)
