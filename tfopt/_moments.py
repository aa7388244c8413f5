"""The Adam family's shared rule: the two moving moments and their step scalars.

Adam, LazyAdam, RAdam and LAMB differ in how they turn the moments into a
step, not in the moments themselves. With ``g`` the gradient, ``m`` and ``v``
zeros at the start and ``t`` the 1-based step::

    m ← beta_1 · m + (1 − beta_1) · g
    v ← beta_2 · v + (1 − beta_2) · g²

:func:`update_moments` writes these two lines, once, for all of them (the
fused ``ResourceApplyAdam`` kernel, where an optimizer takes it, computes the
same lines inside the kernel). :func:`adam_scalars` computes the step's scalars
(``beta_1^t``, ``beta_2^t``...) in the dtype every member needs.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras
from keras import ops

from tfopt import _dtypes, _sparse


class AdamScalars(NamedTuple):
    """One step's scalars, in float32 or wider (see :func:`adam_scalars`)."""

    learning_rate: Any
    beta_1: Any
    beta_2: Any
    t: Any  # The 1-based step, iterations + 1.
    beta_1_power: Any  # beta_1^t
    beta_2_power: Any  # beta_2^t


def adam_scalars(
    optimizer: keras.optimizers.Optimizer, variable: Any, learning_rate: Any
) -> AdamScalars:
    """``learning_rate``, ``beta_1``, ``beta_2``, ``t`` and ``beta_*^t`` for ``variable``'s step.

    In float32 or wider, whatever the variable's dtype: bfloat16 rounds
    ``beta_2 = 0.999`` to 1 (and float16 loses ``1 − beta_2^t``'s digits).
    ``1 − beta_2`` and ``beta_2^t`` then come from the same rounded ``beta_2``,
    as in the fused kernel, so that the bias correction cancels exactly.

    Args:
      optimizer: the calling optimizer; its ``beta_1``, ``beta_2`` and
        ``iterations`` are read.
      variable: the variable being updated.
      learning_rate: the rate Keras passes to ``update_step``.
    """
    scalar_dtype = _dtypes.scalar_dtype(variable.dtype)
    beta_1 = ops.convert_to_tensor(optimizer.beta_1, scalar_dtype)
    beta_2 = ops.convert_to_tensor(optimizer.beta_2, scalar_dtype)
    t = ops.cast(optimizer.iterations + 1, scalar_dtype)
    return AdamScalars(
        learning_rate=ops.cast(learning_rate, scalar_dtype),
        beta_1=beta_1,
        beta_2=beta_2,
        t=t,
        beta_1_power=ops.power(beta_1, t),
        beta_2_power=ops.power(beta_2, t),
    )


def update_moments(
    optimizer: keras.optimizers.Optimizer,
    m: Any,
    v: Any,
    g: Any,
    beta_1: Any,
    beta_2: Any,
    rows: Any | None = None,
) -> None:
    """``m ← beta_1 · m + (1 − beta_1) · g``;  ``v ← beta_2 · v + (1 − beta_2) · g²``.

    Written through ``optimizer.assign_add``, as the increments
    ``(g − m)(1 − beta_1)`` and ``(g² − v)(1 − beta_2)`` (Keras' own Adam form).

    Args:
      optimizer: the calling optimizer, whose ``assign_add`` writes.
      m: the first-moment variable.
      v: the second-moment variable.
      g: the gradient, dense, in ``m``'s dtype; with ``rows``, the values of
        those rows only.
      beta_1: decay of ``m`` (a float32-or-wider scalar, from :func:`adam_scalars`).
      beta_2: decay of ``v``.
      rows: ``None`` (every row), or distinct row indices: then only those rows
        of ``m`` and ``v`` change (LazyAdam), with a scatter-add.
    """
    dtype = m.dtype
    m_now = m if rows is None else ops.take(m, rows, axis=0)
    v_now = v if rows is None else ops.take(v, rows, axis=0)
    m_step = ops.multiply(ops.subtract(g, m_now), ops.cast(1 - beta_1, dtype))
    v_step = ops.multiply(ops.subtract(ops.square(g), v_now), ops.cast(1 - beta_2, dtype))
    if rows is not None:
        # Keras' TF optimizer turns these slices into a scatter-add.
        m_step, v_step = _sparse.slices(m_step, rows), _sparse.slices(v_step, rows)
    optimizer.assign_add(m, m_step)
    optimizer.assign_add(v, v_step)
