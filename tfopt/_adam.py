"""Adam (and AMSGrad), with bias correction as Keras applies it."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfopt import _dtypes, _fused, _sparse, _torch_inplace
from tfopt._moments import adam_scalars, update_moments
from tfopt._registry import register
from tfopt._validation import (
    check_fused,
    check_learning_rate,
    check_non_negative,
    check_unit_interval,
)

# The fused Adam kernels compute 1 − beta_2 in the variable's dtype, where
# bfloat16 rounds 0.999 to 1 (and float16 to 0.99902); keras.ops it is, there.
_ADAM_FUSED_DTYPES = ("float32", "float64")


@register("adam")
class Adam(keras.optimizers.Optimizer):
    """Adam (Kingma & Ba, 2015), optionally AMSGrad (Reddi et al., 2018).

    Update rule for a variable ``θ`` with gradient ``g`` at step
    ``t = iterations + 1``, with ``m``, ``v`` and ``v̂`` zero at the start::

        m ← beta_1 · m + (1 − beta_1) · g
        v ← beta_2 · v + (1 − beta_2) · g²
        v̂ ← max(v̂, v)                                        (amsgrad only)
        α_t = learning_rate · √(1 − beta_2^t) / (1 − beta_1^t)
        θ ← θ − α_t · m / (√v + epsilon)                      (√v̂ with amsgrad)

    The bias correction is folded into ``α_t`` ("epsilon hat" in the paper's
    §2), exactly as ``keras.optimizers.Adam`` and TensorFlow's
    ``ResourceApplyAdam`` kernel do. Papers: https://arxiv.org/abs/1412.6980,
    https://openreview.net/forum?id=ryQu7f-RZ.

    The founding documents' "Adam" code keeps no moments and no bias
    correction: it sums raw squared gradients, which is Adagrad (see
    :class:`tfopt.Adagrad`).

    Both moments decay on every row at every step, so a sparse
    (``tf.IndexedSlices``) gradient is applied as its dense value; for the
    rows-present-only variant, use LazyAdam. (Keras 3.15's Adam squares
    repeated sparse rows separately, which is not the dense result.) For
    float16/bfloat16 variables the scalars (``α_t``, ``1 − beta_*``) are
    computed in float32, because bfloat16 rounds ``beta_2 = 0.999`` to 1.

    Args:
      learning_rate: a float >= 0, a ``keras.optimizers.schedules.LearningRateSchedule``
        or a callable returning the rate. Defaults to 0.001, as Keras.
      beta_1: decay of the first moment, in [0, 1). Defaults to 0.9.
      beta_2: decay of the second moment, in [0, 1). Defaults to 0.999.
      epsilon: >= 0, added to ``√v``. Defaults to 1e-7, as Keras.
      amsgrad: whether to divide by the running maximum ``v̂`` of ``v``.
        Defaults to False.
      fused: ``"auto"`` (default) updates with TensorFlow's fused
        ``ResourceApplyAdam`` / ``ResourceApplyAdamWithAmsgrad`` kernels where
        they apply: TensorFlow backend, float32/float64 variables (which
        includes ``mixed_float16`` training), no XLA; elsewhere with ``keras.ops``.
        ``True`` raises a ``ValueError`` where the kernel cannot be used;
        ``False`` always uses ``keras.ops``.
        On PyTorch, ``"auto"`` writes the same rule in place (``tfopt/_torch_inplace.py``).
      **kwargs: the base ``keras.optimizers.Optimizer`` options (``name``,
        ``weight_decay``, ``clipnorm``, ``clipvalue``, ``global_clipnorm``,
        ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency``,
        ``loss_scale_factor``, ``gradient_accumulation_steps``).

    Examples:
      >>> import keras, tfopt
      >>> theta = keras.Variable([1.0, 1.0])
      >>> opt = tfopt.Adam(learning_rate=0.1)
      >>> opt.apply([keras.ops.convert_to_tensor([5.0, -0.5])], [theta])
      >>> [round(float(x), 4) for x in theta.numpy()]  # the first step is ±learning_rate
      [0.9, 1.1]
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        fused: bool | str = "auto",
        **kwargs: Any,
    ) -> None:
        check_learning_rate(learning_rate)
        check_unit_interval("beta_1", beta_1)
        check_unit_interval("beta_2", beta_2)
        check_non_negative("epsilon", epsilon)
        check_fused(fused)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.amsgrad = bool(amsgrad)
        self.fused = fused

    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        # Same names and order as keras.optimizers.Adam.
        self._momentums, self._velocities = self.add_optimizer_variables(
            variables, ["momentum", "velocity"]
        )
        self._velocity_hats = []
        if self.amsgrad:
            self._velocity_hats = self.add_optimizer_variables(variables, "velocity_hat")

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """One step of the rule in the class docstring."""
        dtype = variable.dtype
        # Every row's moments decay, so a sparse gradient acts as its dense value.
        g = _sparse.densify(ops.cast(gradient, dtype))
        s = adam_scalars(self, variable, learning_rate)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        v_hat = self._velocity_hats[index] if self.amsgrad else None

        slots = (m, v) if v_hat is None else (m, v, v_hat)
        if _fused.use_fused(self, variable, *slots, dtypes=_ADAM_FUSED_DTYPES):
            _fused.adam(
                variable, m, v, v_hat, s.beta_1_power, s.beta_2_power, s.learning_rate,
                s.beta_1, s.beta_2, self.epsilon, g,
            )  # fmt: skip
            return

        # α_t = learning_rate · √(1 − beta_2^t) / (1 − beta_1^t)
        alpha = ops.cast(
            s.learning_rate * ops.sqrt(1 - s.beta_2_power) / (1 - s.beta_1_power), dtype
        )
        if _torch_inplace.applies(self, variable, g, *slots):
            _torch_inplace.adam(variable, m, v, v_hat, g, alpha, s.beta_1, s.beta_2, self.epsilon)
            return
        # m ← beta_1 · m + (1 − beta_1) · g;  v ← beta_2 · v + (1 − beta_2) · g²
        update_moments(self, m, v, g, s.beta_1, s.beta_2)
        if v_hat is not None:
            # v̂ ← max(v̂, v)
            self.assign(v_hat, _dtypes.maximum(v_hat, v))
            v = v_hat
        # θ ← θ − α_t · m / (√v + epsilon)
        epsilon = ops.convert_to_tensor(self.epsilon, dtype)
        self.assign_sub(variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), epsilon)))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "amsgrad": self.amsgrad,
                "fused": self.fused,
            }
        )
        return config
