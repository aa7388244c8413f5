"""Shampoo: block Kronecker-factored preconditioning (Anil et al., 2020), as optax-shampoo."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from tfopt import _compiled, _dtypes, _sparse
from tfopt._eigh_root import eigh_inverse_pth_root
from tfopt._matrix_functions import BlockLayout, matrix_inverse_pth_root
from tfopt._registry import register
from tfopt._shampoo_step import ShampooStep
from tfopt._validation import (
    check_bool,
    check_int,
    check_learning_rate,
    check_non_negative,
    check_one_of,
    check_positive,
    check_rejected,
    check_unit_interval,
)

GRAFT_TYPES = ("sgd", "adagrad", "rmsprop", "rmsprop_normalized", "sqrt_n")
ROOT_METHODS = ("newton", "eigh")
_DIAGONAL_GRAFTS = ("adagrad", "rmsprop", "rmsprop_normalized")

# optax_shampoo.distributed_shampoo arguments with another name here.
RENAMED = {
    "beta1": "beta_1",
    "beta2": "beta_2",
    "preconditioning_compute_steps": "precondition_frequency",
}
# optax_shampoo.distributed_shampoo arguments outside this implementation.
UNSUPPORTED = (
    "statistics_compute_steps", "exponent_override", "batch_axis_name",
    "statistics_partition_spec", "preconditioner_partition_spec", "num_devices_for_pjit",
    "shard_optimizer_states", "best_effort_memory_usage_reduction",
    "moving_average_for_momentum", "clip_by_scaled_gradient_norm", "precision",
    "tensordot_precision", "lobpcg_topk_precondition", "lobpcg_max_iter",
    "precondtioner_type", "decoupled_learning_rate", "decoupled_weight_decay",
    "generate_training_metrics",
)  # fmt: skip


# What to say when one of them is passed.
_OPTAX_NAMES = {
    **{name: f"optax-shampoo's `{name}` is `{ours}` in tfopt.Shampoo."
       for name, ours in RENAMED.items()},
    **{name: f"optax-shampoo's `{name}` is not supported by tfopt.Shampoo (see the mapping "
       "table in its docstring and docs/shampoo.md)." for name in UNSUPPORTED},
    "decoupled_weight_decay": "optax-shampoo's `decoupled_weight_decay` has no switch in "
    "tfopt.Shampoo: its True is Keras' `weight_decay`, its default False is "
    "`coupled_weight_decay`.",
}  # fmt: skip


@register("shampoo")
class Shampoo(ShampooStep, keras.optimizers.Optimizer):
    """Distributed Shampoo, defined as ``optax_shampoo.distributed_shampoo`` (0.0.6).

    Each variable is reshaped (``best_effort_shape_interpretation`` merges
    neighbouring dimensions up to ``merge_small_dims_block_size``) and cut into
    blocks of at most ``block_size`` per dimension. A block ``G`` of rank ``k``
    keeps one statistic per axis ``i`` and its inverse ``2k``-th root. With
    ``g`` the gradient, ``w`` the variable, ``t`` the 0-based step, ``G_(i)``
    the block's slices along axis ``i`` as rows, ``m`` and ``d`` the Shampoo
    and grafting momenta (zeros), ``S_i`` starting at ``matrix_epsilon * I``
    and ``P_i`` at ``I``::

        S_i = beta_2 * S_i + (1 - beta_2) * G_(i) G_(i)ᵀ     # (1 - beta_2) -> 1 if beta_2 == 1
        if t % precondition_frequency == 0:
            eps = matrix_epsilon * max(λ_max(S_i), 1e-6)      # matrix_epsilon if not relative
            R, error = (S_i + eps I)^(-1/(2k))                # by root_method (below)
            P_i = R unless error >= inverse_failure_threshold or NaN (keep the old P_i)
        u = graft(g)          # sgd: g; adagrad: g / (sqrt(Σ g²) + diagonal_epsilon);
                              # rmsprop: EMA of g² (beta_2) instead of Σ; *_normalized:
                              # g / (||g|| + 1e-16) first; sqrt_n: sign(g)
        p = G ×_1 P_1 ... ×_k P_k per block (p = u for skipped variables)
        s = p * ||u|| / (||p|| + 1e-16)                       # grafted to u's norm
        s, u = s + coupled_weight_decay * w, u + coupled_weight_decay * w
        m = beta_1 * m + s;  d = beta_1 * d + u
        v, n = (s, m) if t >= start_preconditioning_step else (u, d)
        w = w - learning_rate * (v + beta_1 * n if nesterov else n)

    A variable is not preconditioned (``p = u``, no statistics) when its rank
    is below ``skip_preconditioning_rank_lt`` or one of its dimensions exceeds
    ``skip_preconditioning_dim_size_gt``: the diagonal fallback. Roots are
    refreshed on schedule from step 0, as optax does, also before
    ``start_preconditioning_step``. Statistics and roots are kept in float32
    (float64 for float64 variables).

    **Split over replicas.** Under a multi-replica strategy (Mirrored,
    MultiWorkerMirrored, TPU), in a replica context, each replica computes the
    roots of about ``1/N`` of the statistics (balanced by ``n**3``) and the
    roots are shared with one all-reduce per refresh
    (``tfopt._sharded_preconditioner``; ``split_preconditioner_work=False``
    makes every replica compute all of them). Only there: on the JAX and
    PyTorch backends (``keras.distribution`` included) there is no
    ``tf.distribute`` replica context, and every device computes all of its
    roots. The split lives in an override
    of Keras' ``_backend_update_step`` hook, declared in the class attribute
    ``replica_local_hooks`` (the convention by which an optimizer tells a
    distribution layer such as ``strategies.fit`` that an override is right
    when that layer sums the gradients first and makes the
    ``_all_reduce_sum_gradients`` it calls the identity). Weight decay is Keras' own,
    decoupled: ``w = w - learning_rate * weight_decay * w`` before the step.

    Arguments, one to one with optax-shampoo's (any other optax argument
    raises ``ValueError``):

    ===============================  ===================================
    tfopt.Shampoo                    optax_shampoo.distributed_shampoo
    ===============================  ===================================
    learning_rate                    learning_rate
    block_size=128                   block_size (required there)
    beta_1=0.9                       beta1
    beta_2=0.999                     beta2
    diagonal_epsilon=1e-10           diagonal_epsilon
    matrix_epsilon=1e-6              matrix_epsilon
    relative_matrix_epsilon=True     relative_matrix_epsilon
    start_preconditioning_step=5     start_preconditioning_step
    precondition_frequency=1         preconditioning_compute_steps
    graft_type="sgd"                 graft_type=GraftingType.SGD (etc.)
    nesterov=True                    nesterov
    inverse_failure_threshold=0.1    inverse_failure_threshold
    skip_preconditioning_dim_size_gt skip_preconditioning_dim_size_gt
    skip_preconditioning_rank_lt=1   skip_preconditioning_rank_lt
    best_effort_shape_interpretation best_effort_shape_interpretation
    merge_small_dims_block_size      merge_small_dims_block_size
    weight_decay (Keras)             weight_decay / learning_rate, with
                                     decoupled_weight_decay=True
    coupled_weight_decay=0           weight_decay, with
                                     decoupled_weight_decay=False
    split_preconditioner_work=True   (batch_axis_name under pmap)
    root_method="eigh"               (none: its only root is "newton")
    ===============================  ===================================

    **The inverse root.** ``root_method="eigh"`` (the default) computes each
    root from an eigendecomposition (``tfopt._eigh_root``: ``λ_max`` exact
    rather than by power iteration, the error 0 unless the root is not
    finite): the same root as optax's up to its Newton tolerance and float
    rounding, about 10x cheaper on a CPU, and the same steps to target in
    ``launch.bench.convergence``. On the compiled one-device step it runs
    outside XLA, whose CPU ``eigh`` is far slower. ``root_method="newton"``
    is optax-shampoo's coupled Newton iteration, for its numbers to float
    rounding (and a failed iteration keeps the old root, as there). A config
    saved before ``root_method`` existed (every key of ``get_config`` then but
    this one) loads as ``"newton"``, the method that run used.

    Args:
      learning_rate: float, ``LearningRateSchedule`` or callable.
      block_size: largest block dimension; 0 disables blocking.
      beta_1: momentum, in [0, 1).
      beta_2: statistics decay, in [0, 1]; 1 sums them.
      diagonal_epsilon: added to the grafting denominator, >= 0.
      matrix_epsilon: ridge added before the inverse root, >= 0.
      relative_matrix_epsilon: scale the ridge by the largest eigenvalue.
      start_preconditioning_step: first 0-based step that takes the Shampoo
        direction; earlier steps take the grafting one.
      precondition_frequency: steps between root refreshes, >= 1.
      graft_type: one of ``"sgd"``, ``"adagrad"``, ``"rmsprop"``,
        ``"rmsprop_normalized"``, ``"sqrt_n"``.
      nesterov: Nesterov momentum.
      inverse_failure_threshold: a root whose Newton error reaches this keeps
        the previous root.
      skip_preconditioning_dim_size_gt: variables with a larger dimension are
        not preconditioned.
      skip_preconditioning_rank_lt: variables of lower rank are not
        preconditioned (2 gives vectors the diagonal fallback).
      best_effort_shape_interpretation: merge small dimensions first.
      merge_small_dims_block_size: the largest merged dimension.
      split_preconditioner_work: split the root computation over replicas.
      root_method: ``"eigh"`` (an eigendecomposition; the default) or
        ``"newton"`` (optax-shampoo's coupled Newton iteration); see above.
      coupled_weight_decay: optax-shampoo's default weight decay, added to
        both directions before the momenta (``exclude_from_weight_decay``
        applies), >= 0. Keras' ``weight_decay`` is the decoupled one.
      **kwargs: the Keras optimizer options (``clipnorm``, ``weight_decay``,
        ``use_ema``, ``name``...).

    Reference:
      Anil et al., "Scalable Second Order Optimization for Deep Learning",
      2020, https://arxiv.org/abs/2002.09018

    Example:
      >>> import numpy as np, keras, tfopt
      >>> opt = tfopt.Shampoo(0.1, block_size=2, graft_type="adagrad",
      ...                     best_effort_shape_interpretation=False)
      >>> w = keras.Variable(np.ones((3, 2), "float32"))
      >>> opt.apply([np.full((3, 2), 0.5, "float32")], [w])
      >>> print(*[tuple(v.shape) for v in opt.variables if "statistic" in v.path])
      (2, 2) (2, 2) (1, 1) (2, 2)
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule | Callable = 1e-3,
        block_size: int = 128,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        diagonal_epsilon: float = 1e-10,
        matrix_epsilon: float = 1e-6,
        relative_matrix_epsilon: bool = True,
        start_preconditioning_step: int = 5,
        precondition_frequency: int = 1,
        graft_type: str = "sgd",
        nesterov: bool = True,
        inverse_failure_threshold: float = 0.1,
        skip_preconditioning_dim_size_gt: int = 4096,
        skip_preconditioning_rank_lt: int = 1,
        best_effort_shape_interpretation: bool = True,
        merge_small_dims_block_size: int = 4096,
        split_preconditioner_work: bool = True,
        coupled_weight_decay: float = 0.0,
        root_method: str = "eigh",
        **kwargs: Any,
    ) -> None:
        check_rejected(kwargs, _OPTAX_NAMES)
        check_learning_rate(learning_rate)
        check_int("block_size", block_size, 0)
        check_unit_interval("beta_1", beta_1)
        check_unit_interval("beta_2", beta_2, closed_right=True)
        check_non_negative("diagonal_epsilon", diagonal_epsilon)
        check_non_negative("matrix_epsilon", matrix_epsilon)
        check_non_negative("coupled_weight_decay", coupled_weight_decay)
        check_int("start_preconditioning_step", start_preconditioning_step, 0)
        check_int("precondition_frequency", precondition_frequency, 1)
        check_one_of("graft_type", graft_type, GRAFT_TYPES)
        check_one_of("root_method", root_method, ROOT_METHODS)
        check_positive("inverse_failure_threshold", inverse_failure_threshold)
        check_int("skip_preconditioning_dim_size_gt", skip_preconditioning_dim_size_gt, 0)
        check_int("skip_preconditioning_rank_lt", skip_preconditioning_rank_lt, 0)
        check_int("merge_small_dims_block_size", merge_small_dims_block_size, 1)
        for name, value in (
            ("relative_matrix_epsilon", relative_matrix_epsilon),
            ("nesterov", nesterov),
            ("best_effort_shape_interpretation", best_effort_shape_interpretation),
            ("split_preconditioner_work", split_preconditioner_work),
        ):
            check_bool(name, value)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.block_size = block_size
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.diagonal_epsilon = float(diagonal_epsilon)
        self.matrix_epsilon = float(matrix_epsilon)
        self.relative_matrix_epsilon = relative_matrix_epsilon
        self.start_preconditioning_step = start_preconditioning_step
        self.precondition_frequency = precondition_frequency
        self.graft_type = graft_type
        self.nesterov = nesterov
        self.inverse_failure_threshold = float(inverse_failure_threshold)
        self.skip_preconditioning_dim_size_gt = skip_preconditioning_dim_size_gt
        self.skip_preconditioning_rank_lt = skip_preconditioning_rank_lt
        self.best_effort_shape_interpretation = best_effort_shape_interpretation
        self.merge_small_dims_block_size = merge_small_dims_block_size
        self.split_preconditioner_work = split_preconditioner_work
        self.coupled_weight_decay = float(coupled_weight_decay)
        self.root_method = root_method

    # --- State ----------------------------------------------------------------

    def _skips(self, shape: tuple[int, ...]) -> bool:
        return len(shape) < self.skip_preconditioning_rank_lt or any(
            d > self.skip_preconditioning_dim_size_gt for d in shape
        )

    def build(self, var_list: list[Any]) -> None:
        if self.built:
            return
        super().build(var_list)
        self._layouts, self._statistics, self._roots = [], [], []
        self._momentums, self._graft_momentums, self._diagonals = [], [], []
        merge_to = self.merge_small_dims_block_size if self.best_effort_shape_interpretation else None
        for var in var_list:
            shape = tuple(var.shape)
            dtype = _dtypes.scalar_dtype(var.dtype)
            name = var.path.replace("/", "_") if hasattr(var, "path") else var.name
            layout = None if self._skips(shape) else BlockLayout(shape, self.block_size, merge_to)
            self._layouts.append(layout)
            sizes = layout.statistics_sizes if layout else []
            self._statistics.append([
                self.add_variable((n, n), keras.initializers.Identity(self.matrix_epsilon),
                                  dtype, name=f"{name}_statistic_{k}")
                for k, n in enumerate(sizes)
            ])  # fmt: skip
            self._roots.append([
                self.add_variable((n, n), keras.initializers.Identity(1.0), dtype,
                                  name=f"{name}_root_{k}")
                for k, n in enumerate(sizes)
            ])  # fmt: skip
            self._momentums.append(self.add_variable(shape, dtype=dtype, name=f"{name}_momentum"))
            self._graft_momentums.append(
                self.add_variable(shape, dtype=dtype, name=f"{name}_graft_momentum")
            )
            self._diagonals.append(
                self.add_variable(shape, dtype=dtype, name=f"{name}_graft_accumulator")
                if self.graft_type in _DIAGONAL_GRAFTS
                else None
            )

    # --- The three phases of a step ------------------------------------------

    def _gradient(self, gradient: Any, index: int) -> Any:
        return ops.cast(_sparse.densify(gradient), self._momentums[index].dtype)

    def _update_statistics(self, index: int, g: Any) -> list[Any]:
        """S_i = beta_2 S_i + (1 - beta_2) G_(i) G_(i)ᵀ; returns the new values."""
        layout = self._layouts[index]
        if layout is None:
            return []
        w2 = 1.0 if self.beta_2 == 1.0 else 1.0 - self.beta_2
        new = []
        for statistic, block_gram in zip(self._statistics[index], layout.grams(g), strict=True):
            value = self.beta_2 * statistic + w2 * block_gram
            self.assign(statistic, value)
            new.append(value)
        return new

    def _root_fn(self, index: int) -> Callable[[Any], Any]:
        """The inverse root of one statistic; NaNs where it failed (the caller keeps the old)."""
        p = 2 * self._layouts[index].rank

        def root(statistic: Any) -> Any:
            if self.root_method == "eigh":
                values, errors = eigh_inverse_pth_root(
                    statistic[None], p, self.matrix_epsilon, self.relative_matrix_epsilon
                )
                value, error = values[0], errors[0]
            else:
                value, error = matrix_inverse_pth_root(
                    statistic, p, self.matrix_epsilon, self.relative_matrix_epsilon
                )
            failed = ops.logical_or(ops.isnan(error), error >= self.inverse_failure_threshold)
            return ops.where(failed, ops.full_like(value, float("nan")), value)

        return root

    def _refresh(self) -> Any:
        return ops.equal(self.iterations % self.precondition_frequency, 0)

    def _assign_roots(self, roots: list[Any], new_values: list[Any]) -> list[Any]:
        out = []
        for root, value in zip(roots, new_values, strict=True):
            value = ops.where(ops.all(ops.isfinite(value)), value, ops.convert_to_tensor(root))
            self.assign(root, value)
            out.append(value)
        return out

    def _precondition(self, index: int, g: Any, roots: list[Any]) -> Any:
        """``G ×_1 P_1 ... ×_k P_k``, block by block (batched per block shape)."""
        return self._layouts[index].precondition(g, roots)

    def _apply(self, index: int, g: Any, variable: Any, learning_rate: Any,
               roots: list[Any]) -> None:  # fmt: skip
        """Grafting, preconditioning, momentum and the step."""
        dtype = g.dtype
        lr = ops.cast(learning_rate, dtype)
        beta_1 = ops.convert_to_tensor(self.beta_1, dtype)
        # u = graft(g)
        if self.graft_type == "sgd":
            graft = g
        elif self.graft_type == "sqrt_n":
            graft = ops.ones_like(g) * ops.sign(g)
        else:
            scaled = g
            if self.graft_type == "rmsprop_normalized":
                scaled = g / (_norm(g) + 1e-16)
            diagonal = self._diagonals[index]
            if self.graft_type == "adagrad":
                new_diagonal = diagonal + ops.square(scaled)
            else:
                w2 = 1.0 if self.beta_2 == 1.0 else 1.0 - self.beta_2
                new_diagonal = self.beta_2 * diagonal + w2 * ops.square(scaled)
            self.assign(diagonal, new_diagonal)
            graft = scaled / (ops.sqrt(new_diagonal) + self.diagonal_epsilon)
        # p = G ×_1 P_1 ... ×_k P_k;  s = p * ||u|| / (||p|| + 1e-16)
        layout = self._layouts[index]
        preconditioned = graft if layout is None else self._precondition(index, g, roots)
        shampoo = preconditioned * (_norm(graft) / (_norm(preconditioned) + 1e-16))
        if self.coupled_weight_decay and self._use_weight_decay(variable):
            # optax-shampoo's decoupled_weight_decay=False: into both directions,
            # after grafting, before the momenta.
            decay = self.coupled_weight_decay * ops.cast(variable, dtype)
            shampoo, graft = shampoo + decay, graft + decay
        # m = beta_1 m + s;  d = beta_1 d + u
        momentum, graft_momentum = self._momentums[index], self._graft_momentums[index]
        new_momentum = momentum * beta_1 + shampoo
        new_graft_momentum = graft_momentum * beta_1 + graft
        run_shampoo = self.iterations >= self.start_preconditioning_step
        step_momentum = ops.where(run_shampoo, new_momentum, new_graft_momentum)
        update = step_momentum
        if self.nesterov:
            update = ops.where(run_shampoo, shampoo, graft) + beta_1 * step_momentum
        self.assign(momentum, new_momentum)
        self.assign(graft_momentum, new_graft_momentum)
        self.assign_sub(variable, ops.cast(lr * update, variable.dtype))

    # --- One device, or every replica computing every root --------------------

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        index = self._get_variable_index(variable)
        g = self._gradient(gradient, index)
        statistics = self._update_statistics(index, g)
        roots = self._roots[index]
        if statistics:
            root = self._root_fn(index)
            new_values = ops.cond(
                self._refresh(),
                lambda: [root(s) for s in statistics],
                lambda: [ops.convert_to_tensor(r) for r in roots],
            )
            roots = self._assign_roots(roots, list(new_values))
        self._apply(index, g, variable, learning_rate, roots)

    # --- How the step runs over every variable: tfopt._shampoo_step -----------

    def _backend_update_step(self, grads: list[Any], trainable_variables: list[Any],
                             learning_rate: Any) -> None:  # fmt: skip
        if keras.backend.backend() != "tensorflow":
            # No tf.distribute replica context: every device computes all of the roots.
            super()._backend_update_step(grads, trainable_variables, learning_rate)
            return
        from tfopt._sharded_preconditioner import splits

        if _compiled.eligible(self) and not self.gradient_accumulation_steps:
            # One device: every variable's step in one XLA-compiled function.
            self._compiled_step(grads, trainable_variables, learning_rate)
            return
        if not splits(self):
            super()._backend_update_step(grads, trainable_variables, learning_rate)
            return
        self._split_step(grads, trainable_variables, learning_rate)

    # For `strategies.fit`, which runs this hook replica-local and, having
    # all-reduced the gradients first, replaces the `_all_reduce_sum_gradients`
    # called above with the identity (the gradients arrive summed, as here).
    replica_local_hooks = {
        "_backend_update_step": "sums gradients through _all_reduce_sum_gradients, which "
        "strategies replaces with the identity after reducing first; else calls super()",
    }

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "block_size": self.block_size,
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "diagonal_epsilon": self.diagonal_epsilon,
                "matrix_epsilon": self.matrix_epsilon,
                "relative_matrix_epsilon": self.relative_matrix_epsilon,
                "start_preconditioning_step": self.start_preconditioning_step,
                "precondition_frequency": self.precondition_frequency,
                "graft_type": self.graft_type,
                "nesterov": self.nesterov,
                "inverse_failure_threshold": self.inverse_failure_threshold,
                "skip_preconditioning_dim_size_gt": self.skip_preconditioning_dim_size_gt,
                "skip_preconditioning_rank_lt": self.skip_preconditioning_rank_lt,
                "best_effort_shape_interpretation": self.best_effort_shape_interpretation,
                "merge_small_dims_block_size": self.merge_small_dims_block_size,
                "split_preconditioner_work": self.split_preconditioner_work,
                "coupled_weight_decay": self.coupled_weight_decay,
                "root_method": self.root_method,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None) -> Shampoo:
        if "root_method" not in config and _BEFORE_ROOT_METHOD <= set(config):
            # Written by get_config before root_method existed, when every root
            # was Newton's: load the same optimizer, not today's default.
            config = {**config, "root_method": "newton"}
        return super().from_config(config, custom_objects=custom_objects)


# The keys get_config has written since tfopt.Shampoo's first version (710f4ac),
# before coupled_weight_decay (3146436) and root_method (c795aa1) joined them.
_BEFORE_ROOT_METHOD = frozenset({
    "block_size", "beta_1", "beta_2", "diagonal_epsilon", "matrix_epsilon",
    "relative_matrix_epsilon", "start_preconditioning_step", "precondition_frequency",
    "graft_type", "nesterov", "inverse_failure_threshold", "skip_preconditioning_dim_size_gt",
    "skip_preconditioning_rank_lt", "best_effort_shape_interpretation",
    "merge_small_dims_block_size", "split_preconditioner_work",
})  # fmt: skip


def _norm(x: Any) -> Any:
    """The Euclidean norm of all of ``x``'s entries (``tf.norm``'s default)."""
    return ops.sqrt(ops.sum(ops.square(x)))
