"""Adagrad: per-coordinate steps scaled by the root of the summed squared gradients."""

from __future__ import annotations

import functools
from typing import Any

import keras
import numpy as np
from keras import ops

from tfopt import _fused, _sparse, _torch_inplace
from tfopt._registry import register
from tfopt._validation import check_fused, check_learning_rate, check_non_negative


@register("adagrad")
class Adagrad(keras.optimizers.Optimizer):
    """Adagrad (Duchi, Hazan & Singer, 2011), with Keras' placement of epsilon.

    Update rule for a variable ``θ`` with gradient ``g``::

        accumulator ← accumulator + g²          (starts at initial_accumulator_value)
        θ ← θ − learning_rate · g / √(accumulator + epsilon)

    Paper: https://jmlr.org/papers/v12/duchi11a.html. This is
    ``keras.optimizers.Adagrad``'s rule (``epsilon`` inside the square root).
    The optimizer variable stores ``accumulator + epsilon``, so that both the
    ``keras.ops`` path and TensorFlow's fused kernel (whose own epsilon sits
    outside the root) compute exactly this rule.

    The founding documents' "Adam" example is this rule with
    ``initial_accumulator_value = 0``, ``epsilon`` moved outside the root, and a
    learning rate decayed by a constant factor every step.

    Sparse (``tf.IndexedSlices``) gradients update only their rows, which is
    exact for Adagrad; repeated indices are summed first. (Keras 3.15's Adagrad
    squares repeated rows separately, which is not the dense result.)

    Args:
      learning_rate: a float >= 0, a ``keras.optimizers.schedules.LearningRateSchedule``
        or a callable returning the rate. Defaults to 0.001, as Keras.
      initial_accumulator_value: the accumulator's start, >= 0. Defaults to 0.1.
      epsilon: >= 0, added to the accumulator under the square root. Defaults to 1e-7.
      fused: ``"auto"`` (default) updates with TensorFlow's fused
        ``ResourceApplyAdagradV2`` / ``ResourceSparseApplyAdagradV2`` kernels
        where they apply: TensorFlow backend, float16/float32/float64
        variables, no XLA; elsewhere with ``keras.ops``. ``True`` raises a
        ``ValueError`` where the kernel cannot be used; ``False`` always uses
        ``keras.ops``.
        On PyTorch, ``"auto"`` writes the same rule in place (``tfopt/_torch_inplace.py``).
      **kwargs: the base ``keras.optimizers.Optimizer`` options (``name``,
        ``weight_decay``, ``clipnorm``, ``clipvalue``, ``global_clipnorm``,
        ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency``,
        ``loss_scale_factor``, ``gradient_accumulation_steps``).

    Examples:
      >>> import keras, tfopt
      >>> theta = keras.Variable([1.0])
      >>> opt = tfopt.Adagrad(learning_rate=0.1, initial_accumulator_value=0.0, epsilon=0.0)
      >>> opt.apply([keras.ops.convert_to_tensor([3.0])], [theta])
      >>> round(float(theta.numpy()[0]), 6)  # 1 - 0.1 * 3 / sqrt(9)
      0.9
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-7,
        fused: bool | str = "auto",
        **kwargs: Any,
    ) -> None:
        check_learning_rate(learning_rate)
        check_non_negative("initial_accumulator_value", initial_accumulator_value)
        check_non_negative("epsilon", epsilon)
        check_fused(fused)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.initial_accumulator_value = float(initial_accumulator_value)
        self.epsilon = float(epsilon)
        self.fused = fused

    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        # Stores accumulator + epsilon (see the class docstring). Built with
        # NumPy in the variable's dtype: keras.initializers.Constant casts a
        # Python float through float32 on TensorFlow (tf.cast of a float32
        # tensor), which put 1e-9-relative float32 rounding into float64 runs.
        start = functools.partial(_constant, self.initial_accumulator_value + self.epsilon)
        self._accumulators = self.add_optimizer_variables(
            variables, "accumulator", initializer=start
        )

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """One step of the rule in the class docstring."""
        lr = ops.cast(learning_rate, variable.dtype)
        # The update squares g row by row: repeated sparse rows must be summed first.
        gradient = _sparse.sum_duplicates(ops.cast(gradient, variable.dtype))
        # s = accumulator + epsilon
        s = self._accumulators[self._get_variable_index(variable)]

        if _fused.use_fused(self, variable, s):
            _fused.adagrad(variable, s, lr, gradient)
            return
        if _torch_inplace.applies(self, variable, gradient, s):
            _torch_inplace.adagrad(variable, s, gradient, lr)
            return

        # accumulator ← accumulator + g²
        self.assign_add(s, ops.square(gradient))
        # θ ← θ − learning_rate · g / √(accumulator + epsilon)
        self.assign_sub(variable, ops.divide(ops.multiply(lr, gradient), ops.sqrt(s)))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon,
                "fused": self.fused,
            }
        )
        return config


def _constant(value: float, shape: Any, dtype: Any = None) -> np.ndarray:
    """``value`` everywhere, rounded once, to ``dtype``."""
    return np.full(shape, value, dtype=keras.backend.standardize_dtype(dtype))
