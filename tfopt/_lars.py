"""LARS: layer-wise adaptive rate scaling (You et al., 2017), as optax.lars."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

from tfopt import _dtypes, _fused, _native, _sparse, _torch_inplace
from tfopt._exclusion import compile_patterns, is_excluded
from tfopt._registry import register
from tfopt._trust_ratio import trust_ratio
from tfopt._validation import (
    check_bool,
    check_fused,
    check_learning_rate,
    check_non_negative,
    check_positive,
    check_unit_interval,
)

# The kernel multiplies by learning_rate * r in the variable's dtype, where r
# (up to ||w|| / ||g||) can overflow float16; keras.ops it is, there.
_FUSED_DTYPES = ("float32", "float64")


@register("lars")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling, defined as ``optax.lars``.

    Every variable (a "layer") gets its own step size, proportional to the
    norm of its weights over the norm of its gradient, so that large-batch
    SGD (ResNet-50 at batch 32k) stays stable. The definition is optax's
    (``optax/_src/alias.py``: ``add_decayed_weights``, masked
    ``scale_by_trust_ratio``, ``scale_by_learning_rate``, ``trace``), with
    ``g`` the gradient, ``w`` the variable, ``m`` the momentum buffer (zeros
    at the start) and ``||.||`` the norm of the whole variable::

        g = g + weight_decay * w                       # unless excluded
        r = trust_coefficient * ||w|| / (||g|| + eps)  # 1 where a norm is 0,
                                                       # or if excluded
        u = -learning_rate * r * g
        m = momentum * m + u
        w = w + (u + momentum * m if nesterov else m)

    Two kinds of exclusion, mapped onto optax's masks:

    * ``weight_decay_mask``: Keras' own ``exclude_from_weight_decay(var_list=
      ..., var_names=[...])`` method. It must be called before the optimizer
      is built.
    * ``trust_ratio_mask``: ``exclude_from_layer_adaptation``, a list of regexes
      matched with ``re.search`` against each variable's ``path`` (or its
      ``name`` for a plain ``tf.Variable``). Matching variables use ``r = 1``.
      Unlike TF Model Garden's LARS, ``None`` excludes nothing, as in optax.

    ``weight_decay`` is the coupled decay above, inside the trust ratio. It is
    the same constructor argument Keras optimizers inherit, but LARS never also
    applies Keras' decoupled ``w -= learning_rate * weight_decay * w``: the
    decay is applied once, as the LARS paper and optax define it.

    Because ``r`` scales each step to ``learning_rate * trust_coefficient``
    times the weight norm, LARS learning rates are much larger than SGD's
    (the default is 1.0: steps of 0.1% of each weight norm).

    Args:
      learning_rate: float, ``LearningRateSchedule`` or callable.
      momentum: decay of the momentum buffer, in [0, 1).
      weight_decay: coupled L2 decay added to the gradient, >= 0 (``None``
        means 0).
      trust_coefficient: multiplier of the trust ratio, > 0.
      eps: added to the update norm in the trust ratio's denominator, >= 0.
      nesterov: use Nesterov momentum.
      exclude_from_layer_adaptation: regexes of variables that keep ``r = 1``,
        e.g. ``["bias", "batch_normalization"]``.
      fused: ``"auto"`` (default) runs the whole rule in two passes over memory
        with tfopt's native CPU kernel (``tfopt/_native.py``: TensorFlow,
        float32/float64 variables on a CPU, no XLA, the kernel built); where
        only that build is missing or the variable is on an accelerator, it
        takes the last two lines in one pass with TensorFlow's
        ``ResourceApplyKerasMomentum`` kernel (learning rate
        ``learning_rate * r``); elsewhere, and with ``False``, ``keras.ops``.
        ``True`` raises a ``ValueError`` where neither kernel can be used.
        On PyTorch, ``"auto"`` writes the same rule in place (``tfopt/_torch_inplace.py``).
      **kwargs: the Keras optimizer options (``clipnorm``, ``use_ema``,
        ``name``...).

    Reference:
      You et al., "Large Batch Training of Convolutional Networks", 2017,
      https://arxiv.org/abs/1708.03888

    Examples:
      >>> import tfopt
      >>> opt = tfopt.LARS(1.0, weight_decay=1e-4,
      ...                  exclude_from_layer_adaptation=["bias"])
      >>> opt.exclude_from_weight_decay(var_names=["bias"])
      >>> float(opt.trust_coefficient)
      0.001
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule | Callable = 1.0,
        momentum: float = 0.9,
        weight_decay: float | None = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 0.0,
        nesterov: bool = False,
        exclude_from_layer_adaptation: Sequence[str] | None = None,
        fused: bool | str = "auto",
        **kwargs: Any,
    ) -> None:
        check_learning_rate(learning_rate)
        check_unit_interval("momentum", momentum)
        if weight_decay is not None:
            check_non_negative("weight_decay", weight_decay)
        check_positive("trust_coefficient", trust_coefficient)
        check_non_negative("eps", eps)
        check_bool("nesterov", nesterov)
        check_fused(fused)
        adaptation_pattern = compile_patterns(
            "exclude_from_layer_adaptation", exclude_from_layer_adaptation
        )
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self._adaptation_pattern = adaptation_pattern
        self.momentum = float(momentum)
        self.trust_coefficient = float(trust_coefficient)
        self.eps = float(eps)
        self.nesterov = nesterov
        self.fused = fused
        self.exclude_from_layer_adaptation = (
            None if exclude_from_layer_adaptation is None else list(exclude_from_layer_adaptation)
        )

    def build(self, var_list: list[Any]) -> None:
        if self.built:
            return
        super().build(var_list)
        self._momentums = self.add_optimizer_variables(var_list, "momentum")
        # Decided here, on the Keras variables (which have paths): update_step
        # sees bare per-replica tf.Variables under tf.distribute.
        self._decays = [bool(self.weight_decay) and self._use_weight_decay(v) for v in var_list]
        self._adapts = [not is_excluded(v, self._adaptation_pattern) for v in var_list]

    def _apply_weight_decay(self, variables: list[Any]) -> None:
        # Keras would apply `weight_decay` a second time, decoupled, before
        # update_step; LARS applies it once, inside the trust ratio. Keras'
        # Muon overrides this hook the same way.
        del variables

    # For `strategies.fit` (and any tool that runs Keras' hooks replica-local,
    # on all-reduced gradients): this override is right there too.
    replica_local_hooks = {
        "_apply_weight_decay": "does nothing: the decay is applied in update_step",
    }

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        dtype = variable.dtype
        # The trust ratio is float32 or wider: it overflows float16.
        scalar_dtype = _dtypes.scalar_dtype(dtype)
        lr = ops.cast(learning_rate, scalar_dtype)
        # The trust ratio needs the whole-layer gradient norm: densify slices.
        g = ops.cast(_sparse.densify(gradient), dtype)
        momentum = ops.convert_to_tensor(self.momentum, dtype)
        index = self._get_variable_index(variable)
        m = self._momentums[index]

        if _torch_inplace.applies(self, variable, g, m):
            decay = self.weight_decay if self._decays[index] else None
            _torch_inplace.lars(variable, m, g, lr, self.momentum, decay, self._adapts[index],
                                self.trust_coefficient, self.eps, self.nesterov)  # fmt: skip
            return
        if _native.applies(self, variable, m):
            # The whole rule below in two passes over memory (tfopt/_native.py).
            decay = self.weight_decay if self._decays[index] else 0.0
            _native.lars(variable, m, g, lr, self.momentum, decay, self.trust_coefficient,
                         self.eps, self.nesterov, self._adapts[index])  # fmt: skip
            return
        # g = g + weight_decay * w
        if self._decays[index]:
            g = g + ops.convert_to_tensor(self.weight_decay, dtype) * variable
        # r = trust_coefficient * ||w|| / (||g|| + eps)
        if self._adapts[index]:
            lr = lr * trust_ratio(variable, g, self.trust_coefficient, self.eps)
        if _fused.use_fused(self, variable, m, dtypes=_FUSED_DTYPES):
            # m = momentum * m - lr_t * g; w += m (or Nesterov's), lr_t = lr * r.
            _fused.keras_momentum(variable, m, lr, g, self.momentum, self.nesterov)
            return
        # u = -learning_rate * r * g;  m = momentum * m + u
        u = ops.cast(-lr * ops.cast(g, scalar_dtype), dtype)
        self.assign(m, momentum * m + u)
        # w = w + (u + momentum * m  if nesterov else  m)
        if self.nesterov:
            self.assign_add(variable, u + momentum * m)
        else:
            self.assign_add(variable, m)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "trust_coefficient": self.trust_coefficient,
                "eps": self.eps,
                "nesterov": self.nesterov,
                "exclude_from_layer_adaptation": self.exclude_from_layer_adaptation,
                "fused": self.fused,
            }
        )
        return config
