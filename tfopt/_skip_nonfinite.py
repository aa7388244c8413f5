"""SkipNonFinite: drops, on every replica at once, an update whose gradients hold NaN or Inf."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfopt import _sparse
from tfopt._validation import check_no_options, check_optimizer
from tfopt._wrapper import InnerOptimizerMixin


@keras.saving.register_keras_serializable(package="tfopt")
class SkipNonFinite(InnerOptimizerMixin, keras.optimizers.Optimizer):
    """Wraps any Keras 3 optimizer and skips each step whose gradients are not finite.

    One bad batch (a NaN loss, an overflow, a corrupt record) would otherwise
    write NaN into every weight and every slot, and the run is lost. With this
    wrapper such a step changes nothing: with ``g_r`` the gradients of replica
    ``r`` (before the all-reduce)::

        if isfinite(sum_r sum_i |g_r[i]|):   # one scalar, all-reduced
            optimizer.apply(g)                # the inner step, unchanged
        else:
            skipped_steps += 1                # nothing else changes

    The decision is global: each replica all-reduces one scalar, the L1 norm of
    its gradients, so every replica (and every worker) sees the same value and
    takes the same branch. It is true whenever any replica holds a NaN or an
    Inf, and also when finite gradients are so large that their float32 L1 norm
    overflows, which bounds every element of the aggregated gradient.

    A skipped step is atomic: no variable, no slot and no iteration counter
    changes. As in Keras' ``LossScaleOptimizer``, the inner optimizer's
    ``iterations`` does not advance, so learning-rate schedules and Adam's bias
    correction continue as if the bad batch never came; ``iterations`` here is
    the inner one, and ``iterations + skipped_steps`` counts the calls to
    ``apply``. ``skipped_steps`` is an optimizer variable: checkpoints and
    ``.keras`` files keep it. Add :class:`SkippedSteps` to ``fit``'s callbacks
    to see it as the ``skipped_steps`` entry of the training logs.

    How it fits Keras 3 (the shape of ``LossScaleOptimizer``): the skip is a
    ``cond`` around the inner ``apply``. Where the strategy uses ``merge_call``
    (``MirroredStrategy``), the ``cond`` runs in the cross-replica context,
    because a ``cond`` in a replica may not hold a branch that calls
    ``merge_call``; elsewhere it runs in each replica, which all take the same
    branch. Clipping, weight decay, EMA and loss scaling belong to the inner
    optimizer. On the JAX and PyTorch backends there is no replica context:
    a step (under ``keras.distribution`` too) holds the whole gradient, whose
    own L1 norm decides; a jitted JAX step (``stateless_apply``) returns either
    the inner step's new values or the old ones, as ``LossScaleOptimizer`` does.

    Args:
      optimizer: the optimizer to protect, any ``keras.optimizers.Optimizer``
        (Keras' or tfopt's), not yet built on other variables.
      name: the optimizer's name.

    Examples:
      >>> import keras, tfopt
      >>> opt = tfopt.SkipNonFinite(tfopt.Adam(1e-3))  # or tfopt.get("adam", skip_nonfinite=True)
      >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
      >>> model.compile(optimizer=opt, loss="mse")
      >>> history = model.fit(  # doctest: +SKIP
      ...     x, y, callbacks=[tfopt.SkippedSteps()])  # logs["skipped_steps"]
    """

    def __init__(
        self, optimizer: keras.optimizers.Optimizer, name: str | None = None, **kwargs: Any
    ) -> None:
        check_optimizer(optimizer)
        check_no_options("SkipNonFinite", kwargs)
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer

    def build(self, var_list: list[Any]) -> None:
        if self.built:
            return
        if not self.inner_optimizer.built:
            self.inner_optimizer.build(var_list)
        super().build(var_list)
        # Updated like `iterations`: once per step, whichever replica.
        self._skipped_steps = self.add_variable(
            shape=(), dtype="int", aggregation="only_first_replica", name="skipped_steps"
        )

    def apply(self, grads: list[Any], trainable_variables: list[Any] | None = None) -> None:
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        grads = list(grads)
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
        if keras.backend.backend() != "tensorflow":
            # Eager here (a jitted JAX step calls stateless_apply): decide in Python.
            if bool(ops.convert_to_numpy(self._finite(grads))):
                self.inner_optimizer.apply(grads, trainable_variables)
            else:
                self._count_skip()
            return
        import tensorflow as tf

        # Deciding one branch for all replicas needs the replica context; this
        # wrapper, like LossScaleOptimizer, is where that belongs, not update_step.
        replica_context = tf.distribute.get_replica_context()
        if replica_context is None:
            raise ValueError(
                "SkipNonFinite.apply() must be called in a replica context (inside "
                "strategy.run or model.fit). Received: a cross-replica context."
            )
        finite = self._finite_on_all_replicas(grads, replica_context)

        def apply_inner() -> None:
            self.inner_optimizer.apply(grads, trainable_variables)

        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            ops.cond(finite, apply_inner, self._count_skip)
            return

        def cross_replica(
            distribution: tf.distribute.Strategy, finite: Any, grads: Any, variables: Any
        ) -> None:
            # All-reduced above, so every replica holds the same value.
            finite = distribution.experimental_local_results(finite)[0]
            ops.cond(
                finite,
                lambda: distribution.extended.call_for_each_replica(
                    self.inner_optimizer.apply, args=(grads, variables)
                ),
                self._count_skip,
            )

        # The gradients go through merge_call's arguments, which gathers each
        # replica's own into a PerReplica value; a closure would hand every
        # replica the gradients of the replica that runs `cross_replica`.
        replica_context.merge_call(cross_replica, args=(finite, grads, trainable_variables))

    def stateless_apply(
        self, optimizer_variables: list[Any], grads: list[Any], trainable_variables: list[Any]
    ) -> tuple[list[Any], list[Any]]:
        if keras.backend.backend() == "tensorflow":
            return super().stateless_apply(optimizer_variables, grads, trainable_variables)
        # As LossScaleOptimizer: each branch returns new values, since a jitted
        # JAX cond cannot write variables.
        own, inner = (optimizer_variables[: len(self._variables)],
                      optimizer_variables[len(self._variables):])  # fmt: skip

        def step() -> tuple[list[Any], list[Any]]:
            new_trainable, new_inner = self.inner_optimizer.stateless_apply(
                inner, grads, trainable_variables
            )
            return list(new_trainable), list(own) + list(new_inner)

        def skip() -> tuple[list[Any], list[Any]]:
            mapping = list(zip(self._variables, own, strict=True))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                self._count_skip()
            counted = [scope.get_current_value(v) for v in self._variables]
            return list(trainable_variables), counted + list(inner)

        return ops.cond(self._finite(grads), step, skip)

    @staticmethod
    def _l1(grads: list[Any]) -> Any:
        """The float32 L1 norm of this replica's gradients (sparse ones by their values)."""
        l1 = ops.zeros((), dtype="float32")
        for grad in grads:
            if grad is None:
                continue
            values = grad.values if _sparse.is_sparse(grad) else grad
            l1 = l1 + ops.sum(ops.abs(ops.cast(values, "float32")))
        return l1

    def _finite(self, grads: list[Any]) -> Any:
        return ops.isfinite(self._l1(grads))

    def _finite_on_all_replicas(self, grads: list[Any], replica_context: Any) -> Any:
        import tensorflow as tf

        return ops.isfinite(replica_context.all_reduce(tf.distribute.ReduceOp.SUM, self._l1(grads)))

    def _count_skip(self) -> None:
        self._skipped_steps.assign_add(1)

    @property
    def skipped_steps(self) -> Any:
        """The number of skipped steps, an int64 optimizer variable."""
        if not self.built:
            raise ValueError(
                "SkipNonFinite is not built yet: it counts skipped steps from its "
                "first apply(). Received: built=False."
            )
        return self._skipped_steps

    @property
    def iterations(self) -> Any:
        return self.inner_optimizer.iterations

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "optimizer": keras.optimizers.serialize(self.inner_optimizer)}

    @classmethod
    def from_config(
        cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None
    ) -> SkipNonFinite:
        config = dict(config)
        optimizer = keras.optimizers.deserialize(
            config.pop("optimizer"), custom_objects=custom_objects
        )
        return cls(optimizer, **config)


def find_skip_nonfinite(optimizer: Any) -> SkipNonFinite | None:
    """The `SkipNonFinite` in a chain of wrappers (LossScale, Lookahead), or None."""
    while optimizer is not None and not isinstance(optimizer, SkipNonFinite):
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return optimizer


class SkippedSteps(keras.callbacks.Callback):
    """Adds ``skipped_steps`` (of the model's `SkipNonFinite`) to the training logs.

    The count is cumulative over the run, resumed runs included (it is an
    optimizer variable). It appears in the progress bar, in ``History`` and in
    every callback listed after this one (TensorBoard, CSVLogger).

    Examples:
      >>> model.fit(x, y, callbacks=[tfopt.SkippedSteps()])  # doctest: +SKIP
    """

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._optimizer = find_skip_nonfinite(self.model.optimizer)
        if self._optimizer is None:
            raise ValueError(
                "SkippedSteps needs a model compiled with a tfopt.SkipNonFinite "
                "optimizer (tfopt.get(name, skip_nonfinite=True)). Received: "
                f"optimizer={type(self.model.optimizer).__name__}."
            )

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None and self._optimizer.built:
            # A tensor, not a number: reading it here must not stall the step.
            logs["skipped_steps"] = ops.convert_to_tensor(self._optimizer.skipped_steps)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None and self._optimizer.built:
            logs["skipped_steps"] = int(ops.convert_to_numpy(self._optimizer.skipped_steps))
