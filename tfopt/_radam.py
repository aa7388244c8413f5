"""RAdam: rectified Adam (Liu et al., 2019), as optax.radam."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from tfopt import _dtypes, _fused, _sparse, _torch_inplace
from tfopt._moments import adam_scalars, update_moments
from tfopt._registry import register
from tfopt._validation import (
    check_fused,
    check_greater_than,
    check_learning_rate,
    check_positive,
    check_unit_interval,
)

# As tfopt.Adam: the kernel computes 1 - beta_2 in the variable's dtype, where
# bfloat16 rounds 0.999 to 1.
_FUSED_DTYPES = ("float32", "float64")


@register("radam")
class RAdam(keras.optimizers.Optimizer):
    """Rectified Adam, defined as ``optax.radam``.

    Early in training Adam's second-moment estimate rests on few samples and
    its adaptive step has a large variance. RAdam takes plain momentum steps
    until the estimate is tractable (``rho_t >= threshold``), then Adam steps
    scaled by a rectification factor ``r_t < 1`` that tends to 1. The
    definition is optax's (``optax/_src/transform.py: scale_by_radam`` with
    ``eps_root=0``, then ``scale_by_learning_rate``), with ``g`` the gradient,
    ``w`` the variable, ``m`` and ``v`` the moments (zeros at the start) and
    ``t`` the 1-based step::

        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        m_hat = m / (1 - beta_1**t);  v_hat = v / (1 - beta_2**t)
        rho_inf = 2 / (1 - beta_2) - 1
        rho_t = rho_inf - 2 * t * beta_2**t / (1 - beta_2**t)
        if rho_t >= threshold:
            r_t = sqrt((rho_t - 4) (rho_t - 2) rho_inf
                       / ((rho_inf - 4) (rho_inf - 2) rho_t))
            w = w - learning_rate * r_t * m_hat / (sqrt(v_hat) + epsilon)
        else:
            w = w - learning_rate * m_hat

    ``threshold`` defaults to optax's 5.0; the paper (and PyTorch's RAdam)
    rectify once ``rho_t > 4``. With ``beta_2 = 0.999``, ``rho_t`` is about
    ``t`` for small ``t``, so the first four steps are momentum steps.
    ``IndexedSlices`` gradients are applied densely: every row's moments decay,
    as in Keras' ``Adam``.

    Args:
      learning_rate: float, ``LearningRateSchedule`` or callable.
      beta_1: decay of the first moment, in [0, 1).
      beta_2: decay of the second moment, in [0, 1).
      epsilon: added to the denominator, > 0.
      threshold: smallest ``rho_t`` at which adaptive steps start, > 4 (below
        4, ``r_t`` would be the square root of a negative number).
      fused: ``"auto"`` (default) takes the rectified steps with TensorFlow's
        fused ``ResourceApplyAdam`` kernel (rate ``learning_rate * r_t``,
        epsilon ``epsilon * sqrt(1 - beta_2**t)``, the same rule) on
        float32/float64 variables. ``False`` always uses ``keras.ops``;
        ``True`` raises a ``ValueError`` where the kernel cannot be used.
        On PyTorch, ``"auto"`` writes the same rule in place (``tfopt/_torch_inplace.py``).
      **kwargs: the Keras optimizer options (``clipnorm``, ``weight_decay``,
        ``use_ema``, ``name``...).

    Reference:
      Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond",
      2019, https://arxiv.org/abs/1908.03265

    Examples:
      >>> import keras, tfopt
      >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
      >>> model.compile(optimizer=tfopt.RAdam(1e-3), loss="mse")
      >>> float(model.optimizer.threshold)
      5.0
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule | Callable = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        threshold: float = 5.0,
        fused: bool | str = "auto",
        **kwargs: Any,
    ) -> None:
        check_learning_rate(learning_rate)
        check_unit_interval("beta_1", beta_1)
        check_unit_interval("beta_2", beta_2)
        check_positive("epsilon", epsilon)
        check_positive("threshold", threshold)
        check_greater_than(
            "threshold", threshold, 4,
            "the rectification factor takes the square root of (rho_t - 4)",
        )  # fmt: skip
        check_fused(fused)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.fused = fused
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.threshold = float(threshold)

    def build(self, var_list: list[Any]) -> None:
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"]
        )

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        dtype = variable.dtype
        # Every row's moments decay, so a sparse gradient acts as its dense value.
        g = ops.cast(_sparse.densify(gradient), dtype)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]

        # Step-dependent scalars in float32 or wider: in float16, rho_t and
        # 1 - beta_2**t lose their digits, and bfloat16 rounds 0.999 to 1.
        s = adam_scalars(self, variable, learning_rate)
        lr, beta_1, beta_2, t = s.learning_rate, s.beta_1, s.beta_2, s.t
        beta_1_power, beta_2_power = s.beta_1_power, s.beta_2_power
        rho_inf = 2 / (1 - beta_2) - 1
        rho_t = rho_inf - 2 * t * beta_2_power / (1 - beta_2_power)
        rectified = ops.greater_equal(rho_t, self.threshold)
        # Clamped so the untaken branch never takes the root of a negative.
        zero = ops.zeros((), rho_t.dtype)
        r_t = ops.sqrt(
            _dtypes.maximum(rho_t - 4, zero)
            * _dtypes.maximum(rho_t - 2, zero)
            * rho_inf
            / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        )
        step_size = lr / (1 - beta_1_power)  # learning_rate * m_hat / m
        epsilon = ops.convert_to_tensor(self.epsilon, dtype)

        def momentum_step() -> None:  # rho_t < threshold: w = w - learning_rate * m_hat
            # m = beta_1 * m + (1 - beta_1) * g;  v = beta_2 * v + (1 - beta_2) * g**2
            update_moments(self, m, v, g, beta_1, beta_2)
            self.assign_sub(variable, ops.cast(step_size, dtype) * m)

        if _fused.use_fused(self, variable, m, v, dtypes=_FUSED_DTYPES):
            # The Adam kernel folds the bias correction into its rate:
            #   r_t * m_hat / (sqrt(v_hat) + epsilon)
            #     = r_t sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (sqrt(v) + epsilon'),
            # epsilon' = epsilon * sqrt(1 - beta_2**t): ResourceApplyAdam, rate lr * r_t.
            def rectified_step() -> None:
                _fused.adam(
                    variable, m, v, None, beta_1_power, beta_2_power, lr * r_t, beta_1, beta_2,
                    self.epsilon * ops.sqrt(1 - beta_2_power), g,
                )  # fmt: skip

            ops.cond(rectified, rectified_step, momentum_step)
            return

        if _torch_inplace.applies(self, variable, g, m, v):
            _torch_inplace.radam(
                variable, m, v, g, beta_1, beta_2, rectified, ops.cast(r_t * step_size, dtype),
                ops.cast(step_size, dtype), ops.cast(1 - beta_2_power, dtype), self.epsilon,
            )  # fmt: skip
            return
        # w = w - learning_rate * (r_t * m_hat / (sqrt(v_hat) + epsilon)  or  m_hat)
        # m = beta_1 * m + (1 - beta_1) * g;  v = beta_2 * v + (1 - beta_2) * g**2
        update_moments(self, m, v, g, beta_1, beta_2)
        bias_2 = ops.cast(1 - beta_2_power, dtype)
        adaptive = ops.cast(r_t * step_size, dtype) * m / (ops.sqrt(v / bias_2) + epsilon)
        self.assign_sub(variable, ops.where(rectified, adaptive, ops.cast(step_size, dtype) * m))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "threshold": self.threshold,
                "fused": self.fused,
            }
        )
        return config
