"""What an optimizer that wraps another one hands through to it.

Shared by :class:`tfopt.Lookahead` and :class:`tfopt.SkipNonFinite`, in the
shape of Keras' own ``LossScaleOptimizer``: the wrapper owns a few variables
of its own, and the learning rate, loss scale, weights and EMA finalization
belong to the inner optimizer.
"""

from __future__ import annotations

from typing import Any


class InnerOptimizerMixin:
    """Delegates to ``self.inner_optimizer``; list it before ``keras.optimizers.Optimizer``."""

    inner_optimizer: Any
    _variables: list[Any]
    built: bool

    @property
    def variables(self) -> list[Any]:
        return self._variables[:] + self.inner_optimizer.variables

    def set_weights(self, weights: list[Any]) -> None:
        if not self.built:
            raise ValueError("Call `optimizer.build(trainable_variables)` before `set_weights()`.")
        for variable, weight in zip(self.variables, weights, strict=True):
            variable.assign(weight)

    @property
    def learning_rate(self) -> Any:
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate: Any) -> None:
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def loss_scale_factor(self) -> float | None:
        inner = getattr(self, "inner_optimizer", None)
        return None if inner is None else inner.loss_scale_factor

    @loss_scale_factor.setter
    def loss_scale_factor(self, value: float | None) -> None:
        # The base constructor sets None before the inner optimizer exists; a
        # LossScaleOptimizer around the wrapper later sets None to take over.
        inner = getattr(self, "inner_optimizer", None)
        if inner is not None:
            inner.loss_scale_factor = value

    def finalize_variable_values(self, var_list: list[Any]) -> None:
        self.inner_optimizer.finalize_variable_values(var_list)
