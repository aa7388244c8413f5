"""Stochastic gradient descent with heavy-ball or Nesterov momentum."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfopt import _fused, _sparse, _torch_inplace
from tfopt._registry import register
from tfopt._validation import check_fused, check_learning_rate, check_unit_interval


@register("sgd")
class SGD(keras.optimizers.Optimizer):
    """SGD with optional heavy-ball or Nesterov momentum, with Keras' semantics.

    Update rule for a variable ``θ`` with gradient ``g`` and velocity ``u``
    (zero at the start)::

        momentum = 0:     θ ← θ − learning_rate · g
        otherwise:        u ← momentum · u − learning_rate · g
                          θ ← θ + u                                  (nesterov=False)
                          θ ← θ + momentum · u − learning_rate · g   (nesterov=True)

    The learning rate sits inside the velocity, as in Keras and TF1's
    ``KerasMomentum`` kernel, so changing it mid-run does not rescale the
    velocity already accumulated. Heavy ball: Polyak (1964),
    https://doi.org/10.1016/0041-5553(64)90137-5; Nesterov's form as in
    Sutskever et al. (2013), https://proceedings.mlr.press/v28/sutskever13.html.

    The founding documents' "动量法" is this rule with ``nesterov=False``.
    With momentum, a sparse (``tf.IndexedSlices``) gradient is applied as its
    dense value: the velocity of every row decays on every step.

    Args:
      learning_rate: a float >= 0, a ``keras.optimizers.schedules.LearningRateSchedule``
        or a callable returning the rate. Defaults to 0.01, as Keras.
      momentum: the velocity's decay, in [0, 1). 0 is plain gradient descent.
        Defaults to 0.0.
      nesterov: whether to apply Nesterov momentum. Defaults to False.
      fused: ``"auto"`` (default) updates with TensorFlow's fused kernels
        (``ResourceApplyKerasMomentum``, or ``ResourceApplyGradientDescent``
        when ``momentum`` is 0) where they apply: TensorFlow backend,
        float16/float32/float64 variables, no XLA; elsewhere with
        ``keras.ops``.
        ``True`` raises a ``ValueError`` where the kernel cannot be used;
        ``False`` always uses ``keras.ops``.
        On PyTorch, ``"auto"`` writes the same rule in place (``tfopt/_torch_inplace.py``).
      **kwargs: the base ``keras.optimizers.Optimizer`` options (``name``,
        ``weight_decay``, ``clipnorm``, ``clipvalue``, ``global_clipnorm``,
        ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency``,
        ``loss_scale_factor``, ``gradient_accumulation_steps``).

    Examples:
      >>> import keras, tfopt
      >>> theta = keras.Variable([1.0])
      >>> opt = tfopt.SGD(learning_rate=0.1, momentum=0.9)
      >>> for _ in range(2):
      ...     opt.apply([keras.ops.convert_to_tensor([1.0])], [theta])
      >>> round(float(theta.numpy()[0]), 6)  # 1 - 0.1 - (0.9*0.1 + 0.1)
      0.71
    """

    def __init__(
        self,
        learning_rate: Any = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        fused: bool | str = "auto",
        **kwargs: Any,
    ) -> None:
        check_learning_rate(learning_rate)
        check_unit_interval("momentum", momentum)
        check_fused(fused)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.fused = fused

    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        # Plain SGD keeps no state, as Keras' SGD (same variable count on save).
        self._velocities = []
        if self.momentum != 0:
            self._velocities = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """One step of the rule in the class docstring."""
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)

        if self.momentum == 0:
            if _fused.use_fused(self, variable):
                _fused.gradient_descent(variable, lr, gradient)
                return
            if _torch_inplace.applies(self, variable, gradient):
                _torch_inplace.gradient_descent(variable, gradient, lr)
                return
            # θ ← θ − learning_rate · g
            self.assign_sub(variable, ops.multiply(lr, gradient))
            return

        # Every row's velocity decays, so a sparse gradient acts as its dense value.
        gradient = _sparse.densify(gradient)
        u = self._velocities[self._get_variable_index(variable)]
        if _fused.use_fused(self, variable, u):
            _fused.keras_momentum(variable, u, lr, gradient, self.momentum, self.nesterov)
            return
        if _torch_inplace.applies(self, variable, gradient, u):
            _torch_inplace.sgd(variable, u, gradient, lr, self.momentum, self.nesterov)
            return

        momentum = ops.convert_to_tensor(self.momentum, variable.dtype)
        # u ← momentum · u − learning_rate · g
        self.assign(u, ops.subtract(ops.multiply(momentum, u), ops.multiply(lr, gradient)))
        if self.nesterov:
            # θ ← θ + momentum · u − learning_rate · g
            self.assign_add(
                variable, ops.subtract(ops.multiply(momentum, u), ops.multiply(lr, gradient))
            )
        else:
            # θ ← θ + u
            self.assign_add(variable, u)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"momentum": self.momentum, "nesterov": self.nesterov, "fused": self.fused})
        return config
