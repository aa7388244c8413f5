"""LazyAdam: Adam that touches only the rows present in a sparse gradient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from tfopt import _fused, _sparse, _torch_inplace
from tfopt._moments import adam_scalars, update_moments
from tfopt._registry import register
from tfopt._validation import check_fused, check_learning_rate, check_positive, check_unit_interval

# As tfopt.Adam: the kernel computes 1 - beta_2 in the variable's dtype, where
# bfloat16 rounds 0.999 to 1.
_FUSED_DTYPES = ("float32", "float64")


@register("lazy_adam")
class LazyAdam(keras.optimizers.Optimizer):
    """Adam whose sparse updates leave absent rows alone.

    With dense gradients this is ``keras.optimizers.Adam`` (without
    ``amsgrad``), in the same form, with ``g`` the gradient, ``w`` the variable,
    ``m`` and ``v`` the moments (zeros at the start) and ``t`` the 1-based step::

        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        w = w - learning_rate * sqrt(1 - beta_2**t) / (1 - beta_1**t)
                * m / (sqrt(v) + epsilon)

    With an ``IndexedSlices`` gradient (an ``Embedding`` lookup), the three
    lines run only on the rows ``i`` listed in ``g.indices``: ``m[i]``, ``v[i]``
    and ``w[i]``. Rows absent from the batch keep their moments and weights.

    How it differs from ``Adam`` on sparse data: ``Adam`` treats an absent row
    as a zero gradient, so every step decays every row's ``m`` and ``v`` and
    keeps moving every row with its stale momentum, at a cost proportional to
    the whole table. ``LazyAdam`` costs a step proportional to the rows
    present, and a row's momentum only decays on the steps that see it. The
    two agree on rows present in every batch, and on dense gradients.
    Duplicate indices (a token seen twice in a batch) are summed first, so
    each row is updated once with its total gradient.

    This is TF-Addons' ``LazyAdam`` (which does not run on TF >= 2.16) for
    Keras 3; unlike it, duplicate indices are handled.

    Args:
      learning_rate: float, ``LearningRateSchedule`` or callable.
      beta_1: decay of the first moment, in [0, 1).
      beta_2: decay of the second moment, in [0, 1).
      epsilon: added to the denominator, > 0 (Keras ``Adam``'s 1e-7).
      fused: ``"auto"`` (default) applies dense gradients with TensorFlow's
        fused ``ResourceApplyAdam`` kernel on float32/float64 variables, as
        ``tfopt.Adam`` does; sparse ones always take the row-wise path above.
        ``False`` always uses ``keras.ops``; ``True`` raises a ``ValueError``
        where the kernel cannot be used.
        On PyTorch, ``"auto"`` writes the same rule in place (``tfopt/_torch_inplace.py``).
      **kwargs: the Keras optimizer options (``clipnorm``, ``weight_decay``,
        ``use_ema``, ``name``...).

    Reference:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", 2014,
      https://arxiv.org/abs/1412.6980

    Examples:
      >>> import keras, tfopt
      >>> model = keras.Sequential([keras.Input((4,), dtype="int32"),
      ...                           keras.layers.Embedding(10_000, 8)])
      >>> model.compile(optimizer=tfopt.LazyAdam(1e-3), loss="mse")
      >>> model.optimizer.get_config()["epsilon"]
      1e-07
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule | Callable = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        fused: bool | str = "auto",
        **kwargs: Any,
    ) -> None:
        check_learning_rate(learning_rate)
        check_unit_interval("beta_1", beta_1)
        check_unit_interval("beta_2", beta_2)
        check_positive("epsilon", epsilon)
        check_fused(fused)
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.fused = fused

    def build(self, var_list: list[Any]) -> None:
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"]
        )

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        s = adam_scalars(self, variable, learning_rate)
        dense = not _sparse.is_sparse(gradient)
        if dense and _fused.use_fused(self, variable, m, v, dtypes=_FUSED_DTYPES):
            _fused.adam(
                variable, m, v, None, s.beta_1_power, s.beta_2_power, s.learning_rate,
                s.beta_1, s.beta_2, self.epsilon, ops.cast(gradient, dtype),
            )  # fmt: skip
            return

        alpha = ops.cast(
            s.learning_rate * ops.sqrt(1 - s.beta_2_power) / (1 - s.beta_1_power), dtype
        )
        epsilon = ops.convert_to_tensor(self.epsilon, dtype)
        if dense and _torch_inplace.applies(self, variable, gradient, m, v):
            _torch_inplace.adam(variable, m, v, None, gradient, alpha, s.beta_1, s.beta_2,
                                self.epsilon)  # fmt: skip
            return
        if dense:
            # m = beta_1 * m + (1 - beta_1) * g;  v = beta_2 * v + (1 - beta_2) * g**2
            update_moments(self, m, v, ops.cast(gradient, dtype), s.beta_1, s.beta_2)
            self.assign_sub(variable, alpha * m / (ops.sqrt(v) + epsilon))
            return

        # A row may appear several times (one id twice in a batch, or once per
        # replica after an all-reduce): update it once, with its summed gradient.
        gradient = _sparse.sum_duplicates(gradient)
        rows = gradient.indices
        # The same two lines, on the rows present only.
        update_moments(self, m, v, ops.cast(gradient.values, dtype), s.beta_1, s.beta_2, rows)
        m_rows, v_rows = ops.take(m, rows, axis=0), ops.take(v, rows, axis=0)
        # self.assign_sub turns IndexedSlices into scatter_sub.
        self.assign_sub(
            variable, _sparse.slices(alpha * m_rows / (ops.sqrt(v_rows) + epsilon), rows)
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "fused": self.fused,
            }
        )
        return config
