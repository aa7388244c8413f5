"""``tf.IndexedSlices`` gradients, made safe for non-linear update rules.

An ``Embedding`` (any ``tf.gather``) produces an ``IndexedSlices`` gradient
whose ``indices`` repeat when an id appears twice in a batch; its dense value
is the *sum* of the repeated rows. Linear rules (``θ -= lr·g``) can scatter
such slices as they are, but any rule that squares or otherwise transforms
``g`` row by row must first sum the duplicates, or it computes
``g₁² + g₂²`` where the dense rule computes ``(g₁ + g₂)²``. (Keras 3.15's
``Adagrad`` and ``Adam`` do exactly that on the TensorFlow backend.)
"""

from __future__ import annotations

import sys
from typing import Any


def is_sparse(gradient: Any) -> bool:
    """Whether ``gradient`` is a ``tf.IndexedSlices``."""
    # Only TensorFlow makes IndexedSlices: where it is not loaded (another
    # Keras backend), every gradient is dense, and TF stays unimported.
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(gradient, tf.IndexedSlices)


def slices(values: Any, indices: Any) -> Any:
    """``tf.IndexedSlices(values, indices)``: rows of a variable, for ``assign*``."""
    import tensorflow as tf  # Sparse gradients, hence rows, exist only on TensorFlow.

    return tf.IndexedSlices(values, indices)


def sum_duplicates(gradient: Any) -> Any:
    """Returns ``gradient`` with one row per index (duplicates summed).

    Dense gradients are returned unchanged. The result has the same dense
    value as the input.
    """
    if not is_sparse(gradient):
        return gradient
    import tensorflow as tf  # Loaded already: is_sparse said so.

    unique_indices, positions = tf.unique(gradient.indices)
    values = tf.math.unsorted_segment_sum(gradient.values, positions, tf.shape(unique_indices)[0])
    return tf.IndexedSlices(values, unique_indices, gradient.dense_shape)


def densify(gradient: Any) -> Any:
    """Returns the dense value of ``gradient`` (a no-op for dense tensors).

    For rules that update every row on every step (momentum decay, Adam's
    moments), a sparse gradient is just a dense one with zero rows.
    """
    if not is_sparse(gradient):
        return gradient
    import tensorflow as tf  # Loaded already: is_sparse said so.

    return tf.convert_to_tensor(gradient)
