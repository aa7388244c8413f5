"""The layer-wise trust ratio shared by LARS and LAMB.

This is ``optax.scale_by_trust_ratio(min_norm=0, trust_coefficient, eps)``
(optax/_src/transform.py), written with ``keras.ops``::

    trust_ratio = trust_coefficient * ||param|| / (||update|| + eps)
    trust_ratio = 1   where ||param|| == 0 or ||update|| == 0

The fallback is 1, not ``trust_coefficient``: a zero-initialized bias takes
a plain ``learning_rate``-sized step on its first update, exactly as in optax.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

# Norms of float16/bfloat16 tensors are summed in float32: a sum of squares
# overflows float16 (max 65504) already for ~60k unit-sized weights.
_LOW_PRECISION = ("float16", "bfloat16")


def l2_norm(x: Any) -> Any:
    """Frobenius norm of a whole tensor, accumulated in at least float32."""
    if ops.dtype(x) in _LOW_PRECISION:
        x = ops.cast(x, "float32")
    if _one_pass():
        # One read of x: TensorFlow's Euclidean-norm kernel squares and sums in
        # one multi-threaded pass, where square, sum and sqrt below are three
        # kernels that write the squares out first (3x the memory traffic).
        import tensorflow as tf

        return tf.math.reduce_euclidean_norm(x)
    squares = ops.square(x)
    if len(x.shape) > 1:
        # Rows first: XLA's CPU backend runs a full reduction on one thread
        # (about 3x slower on 64M values), but splits row reductions.
        squares = ops.sum(squares, axis=-1)
    return ops.sqrt(ops.sum(squares))


def _one_pass() -> bool:
    # Under XLA the keras.ops form fuses by itself, and its row-first sum
    # suits XLA's CPU reductions (see above); on JAX/PyTorch it is the only form.
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.__internal__.get_enclosing_xla_context() is None


def trust_ratio(param: Any, update: Any, trust_coefficient: float = 1.0, eps: float = 0.0) -> Any:
    """Scalar ``trust_coefficient * ||param|| / (||update|| + eps)``, 1 on zero norms.

    Returned in float32 or wider, never float16: near convergence ``||update||``
    gets tiny and the ratio overflows float16 (65504), while the scaled update
    ``ratio * update`` (norm ``||param||``) does not. Multiply in this dtype.
    """
    param_norm = l2_norm(param)
    update_norm = l2_norm(update)
    ratio = trust_coefficient * param_norm / (update_norm + ops.cast(eps, param_norm.dtype))
    zero_norm = ops.logical_or(ops.equal(param_norm, 0.0), ops.equal(update_norm, 0.0))
    return ops.where(zero_norm, ops.ones_like(ratio), ratio)
