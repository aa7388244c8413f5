"""Plain gradient descent."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfopt import _fused, _torch_inplace
from tfopt._registry import register
from tfopt._validation import check_fused, check_learning_rate


@register("gradient_descent")
class GradientDescent(keras.optimizers.Optimizer):
    """Gradient descent: a step against the gradient, nothing else.

    Update rule for a variable ``θ`` with gradient ``g``::

        θ ← θ − learning_rate · g

    This is the founding documents' "梯度下降" (and "随机梯度下降" when the
    gradient comes from a mini-batch): Cauchy (1847); for the stochastic form,
    Robbins & Monro, https://doi.org/10.1214/aoms/1177729586. It is
    ``keras.optimizers.SGD(momentum=0.0)`` without the momentum options.

    Sparse (``tf.IndexedSlices``) gradients are applied with a scatter, which
    is exact because the rule is linear.

    Args:
      learning_rate: a float >= 0, a ``keras.optimizers.schedules.LearningRateSchedule``
        or a callable returning the rate. Defaults to 0.01, as Keras' SGD.
      fused: ``"auto"`` (default) updates with TensorFlow's fused
        ``ResourceApplyGradientDescent`` kernel where it applies (TensorFlow
        backend, float16/float32/float64 variables, no XLA) and with
        ``keras.ops`` elsewhere. ``True`` requires the kernel and raises a
        ``ValueError`` where it cannot be used; ``False`` always uses ``keras.ops``.
        On PyTorch, ``"auto"`` writes the same rule in place (``tfopt/_torch_inplace.py``).
      **kwargs: the base ``keras.optimizers.Optimizer`` options (``name``,
        ``weight_decay``, ``clipnorm``, ``clipvalue``, ``global_clipnorm``,
        ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency``,
        ``loss_scale_factor``, ``gradient_accumulation_steps``).

    Examples:
      >>> import keras, tfopt
      >>> theta = keras.Variable([1.0, 2.0])
      >>> opt = tfopt.GradientDescent(learning_rate=0.1)
      >>> opt.apply([keras.ops.convert_to_tensor([1.0, -1.0])], [theta])
      >>> [round(float(x), 6) for x in theta.numpy()]
      [0.9, 2.1]
    """

    def __init__(
        self,
        learning_rate: Any = 0.01,
        fused: bool | str = "auto",
        **kwargs: Any,
    ) -> None:
        check_learning_rate(learning_rate)
        check_fused(fused)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.fused = fused

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """θ ← θ − learning_rate · g."""
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)

        if _fused.use_fused(self, variable):
            _fused.gradient_descent(variable, lr, gradient)
            return
        if _torch_inplace.applies(self, variable, gradient):
            _torch_inplace.gradient_descent(variable, gradient, lr)
            return

        self.assign_sub(variable, ops.multiply(lr, gradient))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"fused": self.fused})
        return config
