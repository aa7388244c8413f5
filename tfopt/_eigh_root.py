"""Inverse p-th roots by eigendecomposition: ``tfopt.Shampoo(root_method="eigh")``.

optax-shampoo's coupled Newton iteration (``_matrix_functions``) costs about
5 matmuls an iteration for ``p = 4``, and gradient statistics, low-rank with a
ridge of 1e-6 of their largest eigenvalue, take it 18-20 iterations: about
100 ``n³`` multiply-adds a root. An eigendecomposition costs about ``9 n³``.
Measured on this project's 2-core CPU (2026-12-02, docs/benchmarks/second_order.md):
66 statistics of 128x128, TensorFlow's batched ``eigh`` 52-70 ms against the
batched Newton loop's 460-880 ms under XLA.

XLA's own CPU ``eigh`` (a Jacobi loop) took 9-10 s on the same batch, so the
compiled Shampoo step runs this refresh outside XLA (``tfopt._shampoo_step``).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


def eigh_inverse_pth_root(
    matrices: Any, p: int, ridge_epsilon: float, relative_matrix_epsilon: bool
) -> tuple[Any, Any]:
    """``(A + eps I)^(-1/p)`` of each symmetric PSD ``A`` of ``matrices`` (``... x n x n``).

    ``A = V diag(λ) Vᵀ``, root ``= V diag((max(λ, 0) + eps)^(-1/p)) Vᵀ``, with
    ``eps = ridge_epsilon * max(λ_max, 1e-6)`` if ``relative_matrix_epsilon``
    (``λ_max`` exact here, where the Newton path estimates it by power
    iteration), else ``ridge_epsilon``. Eigenvalues below zero can only be
    rounding of a PSD matrix; they are taken as zero, so that ``λ + eps > 0``.

    Returns the roots and an error per matrix: 0 where the root is finite, NaN
    where it is not (a non-finite input), so that Shampoo's failure test keeps
    the previous root as it does for a failed Newton iteration.
    """
    dtype = keras.backend.standardize_dtype(matrices.dtype)
    finite = ops.all(ops.isfinite(matrices), axis=(-2, -1))
    # A NaN input would reach LAPACK-style code that may not return; decompose I instead.
    identity = ops.eye(matrices.shape[-1], dtype=dtype)
    safe = ops.where(finite[..., None, None], matrices, identity)
    eigenvalues, vectors = ops.eigh(safe)
    eigenvalues = ops.maximum(eigenvalues, ops.zeros((), dtype))
    if relative_matrix_epsilon:
        largest = ops.maximum(eigenvalues[..., -1:], ops.convert_to_tensor(1e-6, dtype))
        ridge = ridge_epsilon * largest
    else:
        ridge = ops.convert_to_tensor(ridge_epsilon, dtype)
    scale = ops.power(eigenvalues + ridge, ops.convert_to_tensor(-1.0 / p, dtype))
    roots = ops.matmul(vectors * scale[..., None, :], ops.swapaxes(vectors, -1, -2))
    ok = ops.logical_and(finite, ops.all(ops.isfinite(roots), axis=(-2, -1)))
    errors = ops.where(ok, ops.zeros((), dtype), ops.full_like(ok, float("nan"), dtype=dtype))
    return roots, errors
