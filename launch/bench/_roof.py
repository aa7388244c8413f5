"""The memory roof an optimizer step is measured against, in bytes per second.

An optimizer step is memory-bound, so its yardstick is the bandwidth this
machine reaches on the same arrays. The roof is the faster of two kernels of
one shape, timed in the same rounds as the steps it judges:

* an XLA-compiled STREAM triad, ``a = 0.5 * a + g`` (read two arrays, write
  one: 12 B a float32 parameter);
* TensorFlow's fused gradient-descent kernel, ``ResourceApplyGradientDescent``
  (``a -= 0.5 * g``: the same 12 B), the kernel family the fused optimizer
  paths use.

Both move the same bytes, so the roof is ``12 n / min(triad time, kernel
time)``. Every optimizer row of a size is divided by the same two kernels,
which keeps the roof stable from row to row; an earlier roof that updated
each optimizer's own state arrays in one XLA function varied with the number
of arrays (XLA's CPU backend runs multi-output loops slower than one triad).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

# Bytes each roof kernel moves per float32 parameter: two reads, one write.
BYTES_PER_PARAM = 12
NAMES = ("xla_triad", "tf_gradient_descent")


def kernels(shape: tuple[int, ...]) -> list[tuple[Callable[[Any], Any], tf.Variable]]:
    """``[(fn(g), variable_it_writes)]`` for the triad and the TF kernel, on ``shape``."""
    triad_state = tf.Variable(tf.random.normal(shape, seed=3))
    kernel_state = tf.Variable(tf.random.normal(shape, seed=4))

    @tf.function(jit_compile=True)
    def xla_triad(g: Any) -> None:
        triad_state.assign(triad_state * 0.5 + g)

    @tf.function
    def tf_gradient_descent(g: Any) -> None:
        tf.raw_ops.ResourceApplyGradientDescent(
            var=kernel_state.handle, alpha=tf.constant(0.5, kernel_state.dtype), delta=g
        )

    return [(xla_triad, triad_state), (tf_gradient_descent, kernel_state)]


def gb_per_s(n: int, triad_s: float, kernel_s: float) -> float:
    """The roof in GB/s, from the two kernels' times (seconds) on ``n`` parameters."""
    return BYTES_PER_PARAM * n / min(triad_s, kernel_s) / 1e9
