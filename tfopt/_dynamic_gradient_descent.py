"""The founding documents' "dynamic gradient descent" (动态梯度下降)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfopt import _dtypes, _fused, _torch_inplace
from tfopt._registry import register
from tfopt._validation import (
    check_fused,
    check_learning_rate,
    check_positive,
    check_rejected,
    check_unit_interval,
)

_RESERVED = {
    "decay": "DynamicGradientDescent's step decay is `learning_rate_decay` (Keras reserves "
    "`decay` and ignores it).",
}


@register("dynamic_gradient_descent")
class DynamicGradientDescent(keras.optimizers.Optimizer):
    """Gradient sums under a geometrically decaying step: momentum with β = 1.

    Update rule for a variable ``θ`` with gradient ``g``, at step ``t = 0, 1, …``
    (``optimizer.iterations``), with ``v`` zero at the start::

        α_t = learning_rate · learning_rate_decay^t      (learning_rate(t) · … for a schedule)
        v   ← v + g
        θ   ← θ − α_t · v

    This is the rule of the founding documents' ``dgd_loss`` example. ``v`` is
    the plain sum of all gradients so far: momentum with β = 1, whose
    oscillations never die out on their own, damped only by the geometric decay
    of the step. Writing ``u_t = α_t · v_t`` shows that, for a constant
    ``learning_rate``, it is exactly heavy-ball momentum (Polyak, 1964,
    https://doi.org/10.1016/0041-5553(64)90137-5) with
    ``momentum = learning_rate_decay`` and a step decaying geometrically::

        u ← learning_rate_decay · u + α_t · g;   θ ← θ − u

    i.e. ``keras.optimizers.SGD(ExponentialDecay(learning_rate, 1, learning_rate_decay),
    momentum=learning_rate_decay)``.

    When it converges. With ``learning_rate_decay < 1`` the steps sum to
    ``Σ α_t = learning_rate / (1 − learning_rate_decay)``: with bounded
    gradients the iterates always come to rest, but not necessarily at a
    minimum, and nothing can be recovered once ``α_t`` has decayed. On a convex
    quadratic, a direction of curvature ``h`` is stable while
    ``α_t · h < 2 · (1 + learning_rate_decay)``, and its error shrinks overall by
    roughly ``exp(−learning_rate · h / (1 − learning_rate_decay)²)`` when the
    motion is overdamped. So flat directions need ``learning_rate_decay`` close
    to 1: the founding documents' 0.9 leaves only ``100 · learning_rate`` of
    total "step budget". With ``learning_rate_decay = 1`` it is undamped
    momentum and does not converge on a quadratic at all.

    Args:
      learning_rate: ``α_0``: a float >= 0, a
        ``keras.optimizers.schedules.LearningRateSchedule`` or a callable
        returning the rate. Defaults to 0.001, so that the first steps move
        ``learning_rate / (1 − learning_rate_decay) = 0.1`` per unit gradient,
        as ``SGD(0.01, momentum=0.9)`` does.
      learning_rate_decay: the factor ``α`` is multiplied by after every step,
        in (0, 1]. Defaults to 0.99. (Keras 3 reserves ``decay``, and ignores
        it with a warning; here it is an error.)
      fused: ``"auto"`` (default) updates with TensorFlow's fused
        ``ResourceApplyMomentum`` kernel (momentum = 1 is exactly this rule)
        where it applies: TensorFlow backend, float16/float32/float64
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
      >>> opt = tfopt.DynamicGradientDescent(learning_rate=0.1, learning_rate_decay=0.5)
      >>> for _ in range(2):
      ...     opt.apply([keras.ops.convert_to_tensor([1.0])], [theta])
      >>> round(float(theta.numpy()[0]), 6)  # 1 - 0.1*1 - 0.05*2
      0.8
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        learning_rate_decay: float = 0.99,
        fused: bool | str = "auto",
        **kwargs: Any,
    ) -> None:
        # Keras would warn and ignore `decay`: not for a decaying rule.
        check_rejected(kwargs, _RESERVED)
        check_learning_rate(learning_rate)
        check_positive("learning_rate_decay", learning_rate_decay)
        check_unit_interval("learning_rate_decay", learning_rate_decay, closed_right=True)
        check_fused(fused)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.learning_rate_decay = float(learning_rate_decay)
        self.fused = fused

    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        self._velocities = self.add_optimizer_variables(variables, "velocity")

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """One step of the rule in the class docstring."""
        gradient = ops.cast(gradient, variable.dtype)
        # α_t in float32 or wider: bfloat16 would round 0.99 to 0.98828125.
        scalar_dtype = _dtypes.scalar_dtype(variable.dtype)
        t = ops.cast(self.iterations, scalar_dtype)
        decay = ops.convert_to_tensor(self.learning_rate_decay, scalar_dtype)
        # α_t = learning_rate · learning_rate_decay^t
        alpha = ops.cast(
            ops.multiply(ops.cast(learning_rate, scalar_dtype), ops.power(decay, t)),
            variable.dtype,
        )
        v = self._velocities[self._get_variable_index(variable)]

        if _fused.use_fused(self, variable, v):
            _fused.accumulated_momentum(variable, v, alpha, gradient)
            return
        if _torch_inplace.applies(self, variable, gradient, v):
            _torch_inplace.accumulated_momentum(variable, v, gradient, alpha)
            return

        # v ← v + g   (a scatter for sparse g: repeated rows add up, as they should)
        self.assign_add(v, gradient)
        # θ ← θ − α_t · v
        self.assign_sub(variable, ops.multiply(alpha, v))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"learning_rate_decay": self.learning_rate_decay, "fused": self.fused})
        return config
