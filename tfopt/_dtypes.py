"""float64 kept float64 through keras.ops on JAX and PyTorch.

:func:`scalar_dtype` is the dtype of an optimizer's step scalars: float32, or
float64 for float64 variables. :func:`maximum` is ``ops.maximum`` that keeps
its inputs' dtype on PyTorch.

Step scalars (``α_t``, ``beta^t``, ``1 − beta``, a trust ratio) are computed
in float32 or wider whatever the variable's dtype: bfloat16 rounds
``beta_2 = 0.999`` to 1, float16 loses ``1 − beta_2^t``'s digits and overflows
in a sum of squares. A float64 variable keeps float64 scalars.

This is not ``keras.backend.result_type(dtype, "float32")``: Keras 3.15.1's
type promotion maps float64 to float32 on every backend but TensorFlow
(``BIT64_TO_BIT32_DTYPE`` in keras/src/backend/common/dtypes.py, "to be
aligned with JAX's default behavior"), even where float64 exists (JAX with
``jax_enable_x64``, PyTorch). A float64 variable then took float32 scalars
on JAX and PyTorch: 2e-10 to 7e-7 relative away from float64 arithmetic
after 20 steps, 2.4e-5 for Shampoo's statistics (tests/tfopt/test_references.py,
test_radam.py; docs/upstream.md).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


def scalar_dtype(dtype: Any) -> str:
    """``"float64"`` for a float64 ``dtype``, else ``"float32"`` (float16, bfloat16, float32)."""
    return "float64" if keras.backend.standardize_dtype(dtype) == "float64" else "float32"


def maximum(x1: Any, x2: Any) -> Any:
    """``ops.maximum(x1, x2)`` for two tensors of one dtype, computed in that dtype.

    Keras 3.15.1's PyTorch ``maximum`` casts both inputs to
    ``result_type(x1.dtype, x2.dtype)``, float32 for two float64 tensors
    (keras/src/backend/torch/numpy.py; keras-team/keras#23223), so AMSGrad's
    ``v̂ ← max(v̂, v)`` lost float64 there. ``where`` casts nothing. A NaN in
    ``x2`` propagates as in ``maximum``; a NaN in ``x1`` alone gives ``x2``.
    """
    if keras.backend.backend() == "torch":
        return ops.where(ops.greater_equal(x1, x2), x1, x2)
    return ops.maximum(x1, x2)
