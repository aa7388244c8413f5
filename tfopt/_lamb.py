"""LAMB: layer-wise adaptive moments (You et al., 2019), as optax.lamb."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

from tfopt import _dtypes, _native, _sparse, _torch_inplace
from tfopt._exclusion import compile_patterns, is_excluded
from tfopt._moments import adam_scalars, update_moments
from tfopt._registry import register
from tfopt._trust_ratio import trust_ratio
from tfopt._validation import (
    check_fused,
    check_learning_rate,
    check_non_negative,
    check_positive,
    check_unit_interval,
)


@register("lamb")
class LAMB(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Moments for Batch training, defined as ``optax.lamb``.

    Adam's update, decayed, then rescaled per variable so that its norm is
    the weight norm times ``learning_rate``. The definition is optax's
    (``optax/_src/alias.py``: ``scale_by_adam``, ``add_decayed_weights``,
    ``scale_by_trust_ratio``, ``scale_by_learning_rate``), with ``g`` the
    gradient, ``w`` the variable, ``m`` and ``v`` the moments (zeros at the
    start) and ``t`` the 1-based step::

        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        u = (m / (1 - beta_1**t)) / (sqrt(v / (1 - beta_2**t)) + epsilon)
        u = u + weight_decay * w             # unless excluded from decay
        r = ||w|| / ||u||                    # 1 where a norm is 0, or if
                                             # excluded from adaptation
        w = w - learning_rate * r * u

    How it differs from ``keras.optimizers.Lamb`` (Keras 3.15):

    * the weight decay is inside the trust ratio, as in the LAMB paper, optax
      and TF Model Garden; Keras' ``Lamb`` applies its inherited ``weight_decay``
      decoupled, outside the ratio (``w -= learning_rate * weight_decay * w``);
    * variables can be excluded from layer adaptation
      (``exclude_from_layer_adaptation``) and from weight decay (Keras'
      ``exclude_from_weight_decay(var_names=[...])``, honoured here);
    * ``epsilon`` defaults to optax's 1e-6 (Keras: 1e-7).

    Exclusion lists are regexes matched with ``re.search`` against each
    variable's ``path`` (or its ``name`` for a plain ``tf.Variable``). LAMB
    never also applies Keras' decoupled weight decay: ``weight_decay`` is
    applied once, inside the ratio.

    Args:
      learning_rate: float, ``LearningRateSchedule`` or callable.
      beta_1: decay of the first moment, in [0, 1).
      beta_2: decay of the second moment, in [0, 1).
      epsilon: added to the denominator, > 0.
      weight_decay: decay added to the Adam update before the trust ratio, >= 0
        (``None`` means 0).
      exclude_from_layer_adaptation: regexes of variables that keep ``r = 1``,
        e.g. ``["bias", "LayerNorm"]``.
      fused: ``"auto"`` (default) runs the whole rule in two passes over
        memory with tfopt's native CPU kernel (``tfopt/_native.py``:
        TensorFlow, float32/float64 variables on a CPU, no XLA, the kernel
        built); elsewhere, and with ``False``, ``keras.ops``. ``True`` raises
        a ``ValueError`` where the native kernel cannot be used.
        On PyTorch, ``"auto"`` writes the same rule in place (``tfopt/_torch_inplace.py``).
      **kwargs: the Keras optimizer options (``clipnorm``, ``use_ema``,
        ``name``...).

    Reference:
      You et al., "Large Batch Optimization for Deep Learning: Training BERT
      in 76 minutes", 2019, https://arxiv.org/abs/1904.00962

    Examples:
      >>> import tfopt
      >>> opt = tfopt.LAMB(1e-3, weight_decay=0.01,
      ...                  exclude_from_layer_adaptation=["bias", "norm"])
      >>> opt.exclude_from_weight_decay(var_names=["bias", "norm"])
      >>> opt.get_config()["exclude_from_layer_adaptation"]
      ['bias', 'norm']
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule | Callable = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-6,
        weight_decay: float | None = 0.0,
        exclude_from_layer_adaptation: Sequence[str] | None = None,
        fused: bool | str = "auto",
        **kwargs: Any,
    ) -> None:
        check_learning_rate(learning_rate)
        check_unit_interval("beta_1", beta_1)
        check_unit_interval("beta_2", beta_2)
        check_positive("epsilon", epsilon)
        if weight_decay is not None:
            check_non_negative("weight_decay", weight_decay)
        check_fused(fused)
        adaptation_pattern = compile_patterns(
            "exclude_from_layer_adaptation", exclude_from_layer_adaptation
        )
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self._adaptation_pattern = adaptation_pattern
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.fused = fused
        self.exclude_from_layer_adaptation = (
            None if exclude_from_layer_adaptation is None else list(exclude_from_layer_adaptation)
        )

    def build(self, var_list: list[Any]) -> None:
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"]
        )
        # Decided here, on the Keras variables (which have paths): update_step
        # sees bare per-replica tf.Variables under tf.distribute.
        self._decays = [bool(self.weight_decay) and self._use_weight_decay(v) for v in var_list]
        self._adapts = [not is_excluded(v, self._adaptation_pattern) for v in var_list]

    def _apply_weight_decay(self, variables: list[Any]) -> None:
        # Keras would apply `weight_decay` a second time, decoupled and outside
        # the trust ratio, before update_step. Keras' Muon overrides this hook
        # the same way.
        del variables

    # For `strategies.fit` (and any tool that runs Keras' hooks replica-local,
    # on all-reduced gradients): this override is right there too.
    replica_local_hooks = {
        "_apply_weight_decay": "does nothing: the decay is applied in update_step",
    }

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        dtype = variable.dtype
        # Scalars in float32 or wider: bfloat16 rounds beta_2 = 0.999 to 1, and
        # the trust ratio overflows float16.
        scalar_dtype = _dtypes.scalar_dtype(dtype)
        s = adam_scalars(self, variable, learning_rate)
        lr = s.learning_rate
        # The trust ratio needs the whole-layer update norm: densify slices.
        g = ops.cast(_sparse.densify(gradient), dtype)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        bias_1 = ops.cast(1 - s.beta_1_power, dtype)
        bias_2 = ops.cast(1 - s.beta_2_power, dtype)
        epsilon = ops.convert_to_tensor(self.epsilon, dtype)

        if _torch_inplace.applies(self, variable, g, m, v):
            decay = self.weight_decay if self._decays[index] else None
            _torch_inplace.lamb(variable, m, v, g, lr, s.beta_1, s.beta_2, bias_1, bias_2,
                                self.epsilon, decay, self._adapts[index])  # fmt: skip
            return
        if _native.applies(self, variable, m, v, required=self.fused is True):
            # The whole rule below in two passes over memory (tfopt/_native.py).
            decay = self.weight_decay if self._decays[index] else 0.0
            _native.lamb(variable, m, v, g, lr, s.beta_1, s.beta_2, bias_1, bias_2,
                         self.epsilon, decay, self._adapts[index])  # fmt: skip
            return
        # m = beta_1 * m + (1 - beta_1) * g;  v = beta_2 * v + (1 - beta_2) * g**2
        update_moments(self, m, v, g, s.beta_1, s.beta_2)
        # u = m_hat / (sqrt(v_hat) + epsilon) + weight_decay * w
        update = (m / bias_1) / (ops.sqrt(v / bias_2) + epsilon)
        if self._decays[index]:
            update = update + ops.convert_to_tensor(self.weight_decay, dtype) * variable
        # w = w - learning_rate * r * u
        if self._adapts[index]:
            lr = lr * trust_ratio(variable, update)
        self.assign_sub(variable, ops.cast(lr * ops.cast(update, scalar_dtype), dtype))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "exclude_from_layer_adaptation": self.exclude_from_layer_adaptation,
                "fused": self.fused,
            }
        )
        return config
