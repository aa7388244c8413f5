"""TensorFlow's fused training kernels: a fast path for tfopt's update steps.

An optimizer step is memory-bound. Written with ``keras.ops``, Adam's step is
a dozen element-wise ops, each of which reads and writes whole tensors; without
XLA (which Keras switches off under every ``tf.distribute`` strategy and on
CPU) that costs about 3x the memory traffic of the update itself. TensorFlow
ships one-pass C++/CUDA kernels for the classic rules (``ResourceApplyAdam``
and friends, the kernels behind TF1's ``tf.compat.v1.train`` optimizers): each
reads every operand once and writes every result once.

Each tfopt optimizer keeps its ``keras.ops`` code as the readable spec and, in
``update_step``, asks :func:`use_fused` whether it may call the matching
function here instead. The functions compute the *same* rule as that spec
(tests/tfopt/test_fused.py checks it to 1e-6, on one device and under
``MirroredStrategy``).

Under XLA (``jit_compile=True``, TPUs) the ``keras.ops`` path is used: XLA
fuses it into one pass already, and two of the kernels have no XLA lowering.

Why this is safe under ``tf.distribute``: Keras' TF optimizer calls
``update_step`` once per replica inside ``strategy.extended.update``. There,
a mirrored variable's ``.handle`` is the handle of *this* replica's copy, and
the gradient is this replica's all-reduced gradient, so the kernels update the
local copies exactly as ``self.assign*`` would.
"""

from __future__ import annotations

from typing import Any

import keras

from tfopt import _sparse

if keras.backend.backend() == "tensorflow":
    # The kernels are TensorFlow's. On another Keras backend use_fused() is
    # False before any of them is reached, and TF is never imported.
    import tensorflow as tf

# TensorFlow registers every kernel used here for these dtypes on CPU and GPU;
# bfloat16 only on some devices, so bfloat16 variables take the keras.ops path.
FUSED_DTYPES = ("float16", "float32", "float64")


def unsupported_reason(
    variable: Any, *slots: Any, dtypes: tuple[str, ...] = FUSED_DTYPES
) -> str | None:
    """Why no fused kernel can update ``variable`` (and its ``slots``), or None."""
    backend = keras.backend.backend()
    if backend != "tensorflow":
        return f"the Keras backend is {backend!r}"
    if tf.__internal__.get_enclosing_xla_context() is not None:
        # jit_compile=True, or a TPU: XLA fuses the keras.ops path into one
        # pass itself, and has no lowering for AMSGrad's or sparse Adagrad's kernel.
        return "the step is compiled with XLA, which fuses the keras.ops path itself"
    dtype = keras.backend.standardize_dtype(variable.dtype)
    if dtype not in dtypes:
        return f"its dtype is {dtype}, and the fused path supports {', '.join(dtypes)}"
    for v in (variable, *slots):
        try:
            v.handle  # noqa: B018 -- only its availability matters here.
        except (AttributeError, ValueError) as error:
            # A DistributedVariable raises ValueError outside an update context.
            return f"{type(v).__name__} {_name(v)!r} has no resource handle here ({error})"
    return None


def use_fused(
    optimizer: Any, variable: Any, *slots: Any, dtypes: tuple[str, ...] = FUSED_DTYPES
) -> bool:
    """Whether ``optimizer.update_step`` should take the fused path for ``variable``.

    Decided in Python while tracing, per variable. ``fused="auto"`` falls back
    to the ``keras.ops`` path where no kernel applies; ``fused=True`` raises there.

    Args:
      optimizer: the calling optimizer; its ``fused`` attribute is read.
      variable: the model variable being updated.
      *slots: the optimizer variables the kernel updates with it.
      dtypes: the variable dtypes this optimizer's kernel handles correctly.
    """
    if optimizer.fused is False:
        return False
    reason = unsupported_reason(variable, *slots, dtypes=dtypes)
    if reason is None:
        return True
    if optimizer.fused is True:
        raise ValueError(
            f"{type(optimizer).__name__}(fused=True) cannot use a fused TensorFlow kernel "
            f"for variable {_name(variable)!r}: {reason}. Pass fused='auto' to fall back to "
            "the keras.ops path. Received: fused=True."
        )
    return False


def gradient_descent(variable: Any, learning_rate: Any, gradient: Any) -> None:
    """``variable -= learning_rate * gradient``."""
    lr = _scalar(learning_rate, variable)
    if _sparse.is_sparse(gradient):
        # Scatter-subtract is linear, so repeated indices add up as they should.
        tf.raw_ops.ResourceScatterSub(
            resource=variable.handle, indices=gradient.indices, updates=lr * gradient.values
        )
        return
    tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=lr, delta=gradient)


def keras_momentum(
    variable: Any,
    velocity: Any,
    learning_rate: Any,
    gradient: Any,
    momentum: float,
    nesterov: bool,
) -> None:
    """Keras' SGD with momentum: ``velocity = momentum*velocity - lr*g; variable += ...``."""
    # ResourceSparseApplyKerasMomentum would decay `velocity` only on the rows
    # present in the gradient (a "lazy" rule); the dense rule decays every row.
    tf.raw_ops.ResourceApplyKerasMomentum(
        var=variable.handle,
        accum=velocity.handle,
        lr=_scalar(learning_rate, variable),
        grad=_sparse.densify(gradient),
        momentum=_scalar(momentum, variable),
        use_nesterov=bool(nesterov),
    )


def accumulated_momentum(variable: Any, velocity: Any, step_size: Any, gradient: Any) -> None:
    """``velocity += g; variable -= step_size * velocity`` (TF1 momentum with momentum=1)."""
    # Dense: `variable` moves on every row, including rows absent from a sparse g.
    tf.raw_ops.ResourceApplyMomentum(
        var=variable.handle,
        accum=velocity.handle,
        lr=_scalar(step_size, variable),
        grad=_sparse.densify(gradient),
        momentum=_scalar(1.0, variable),
        use_nesterov=False,
    )


def adagrad(variable: Any, accumulator: Any, learning_rate: Any, gradient: Any) -> None:
    """``accumulator += g**2; variable -= lr * g / sqrt(accumulator)``.

    The kernel's own epsilon sits outside the square root; tfopt's Adagrad
    keeps Keras' epsilon inside it by storing it in ``accumulator``, so the
    kernel's epsilon is 0 here.
    """
    lr = _scalar(learning_rate, variable)
    zero = _scalar(0.0, variable)
    if _sparse.is_sparse(gradient):
        # Rows absent from g do not change under Adagrad, so the sparse kernel
        # is exact once repeated indices are summed.
        gradient = _sparse.sum_duplicates(gradient)
        tf.raw_ops.ResourceSparseApplyAdagradV2(
            var=variable.handle,
            accum=accumulator.handle,
            lr=lr,
            epsilon=zero,
            grad=gradient.values,
            indices=gradient.indices,
        )
        return
    tf.raw_ops.ResourceApplyAdagradV2(
        var=variable.handle, accum=accumulator.handle, lr=lr, epsilon=zero, grad=gradient
    )


def adam(
    variable: Any,
    m: Any,
    v: Any,
    v_hat: Any | None,
    beta_1_power: Any,
    beta_2_power: Any,
    learning_rate: Any,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    gradient: Any,
) -> None:
    """Adam (AMSGrad when ``v_hat`` is given), bias-corrected as Keras does.

    ``lr_t = lr * sqrt(1 - beta_2_power) / (1 - beta_1_power)``;
    ``m += (g - m)*(1 - beta_1)``; ``v += (g**2 - v)*(1 - beta_2)``;
    ``v_hat = max(v_hat, v)``; ``variable -= lr_t * m / (sqrt(v or v_hat) + epsilon)``.
    """
    kwargs = dict(
        var=variable.handle,
        m=m.handle,
        v=v.handle,
        beta1_power=_scalar(beta_1_power, variable),
        beta2_power=_scalar(beta_2_power, variable),
        lr=_scalar(learning_rate, variable),
        beta1=_scalar(beta_1, variable),
        beta2=_scalar(beta_2, variable),
        epsilon=_scalar(epsilon, variable),
        # Adam's moments decay on every row, so a sparse g is applied densely.
        grad=_sparse.densify(gradient),
    )
    if v_hat is None:
        tf.raw_ops.ResourceApplyAdam(**kwargs)
    else:
        tf.raw_ops.ResourceApplyAdamWithAmsgrad(vhat=v_hat.handle, **kwargs)


def _scalar(value: Any, variable: Any) -> tf.Tensor:
    # The kernels require every scalar operand in the variable's dtype.
    if isinstance(value, (int, float)):
        # tf.cast would round a Python float through float32 first.
        return tf.constant(value, variable.dtype)
    return tf.cast(value, variable.dtype)


def _name(variable: Any) -> str:
    return str(getattr(variable, "path", None) or getattr(variable, "name", variable))
