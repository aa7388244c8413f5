"""PyTorch's fast path: tfopt's update rules written in place.

On the PyTorch backend ``keras.ops`` runs eagerly, one op at a time: every
``ops.multiply``/``ops.subtract`` of Adam's step allocates a new tensor (a
fresh ``mmap`` that the first write faults in, page by page, for a large
variable) and ``assign`` copies it back, so a step costs several times the
memory traffic of the update. Keras' PyTorch backend replaces its own Adam,
SGD and Adagrad for that reason (``TorchParallelOptimizer`` subclasses in
``keras/src/backend/torch/optimizers/``, updating in place with
``torch._foreach_*``).

Each function here is one optimizer's rule, the same lines as its
``keras.ops`` code in ``update_step`` (which stays the readable spec), written
with PyTorch's in-place ops (``mul_``, ``add_(x, alpha=a)``, ``lerp_``,
``addcmul_``, ``addcdiv_``) on the variables' own tensors: at most one
temporary per variable. The rule is the same; the rounding is not always bit
for bit, because ``add_(x, alpha=a)`` and its kin compute ``y + a·x`` with
one rounding (a fused multiply-add on CPU) where ``keras.ops`` rounds twice,
exactly as Keras' own PyTorch optimizers do (tests/tfopt/test_torch_inplace.py
checks every function against the ``keras.ops`` path to 1e-6 of the motion).

:func:`applies` decides, per variable: PyTorch backend, float32/float64, and
the variable's tensor is its own storage (not a ``StatelessScope`` value, nor
an autocast copy, where an in-place write would be lost or land in a caller's
tensor). ``fused=False`` on an optimizer that has the argument keeps its
``keras.ops`` path. Everything else takes the ``keras.ops`` path. PyTorch is
imported only on that backend.
"""

from __future__ import annotations

from typing import Any

import keras

if keras.backend.backend() == "torch":
    import torch

# float16/bfloat16 keep the keras.ops path, whose scalars are float32.
_DTYPES = ("float32", "float64")


def applies(optimizer: Any, variable: Any, gradient: Any, *slots: Any) -> bool:
    """Whether ``variable``'s step may be written in place with PyTorch."""
    if keras.backend.backend() != "torch" or getattr(optimizer, "fused", "auto") is False:
        return False
    if keras.backend.standardize_dtype(variable.dtype) not in _DTYPES:
        return False
    if not isinstance(gradient, torch.Tensor) or gradient.dtype != _tensor(variable).dtype:
        return False
    # A Keras variable's `value` is another tensor in a StatelessScope or
    # under autocast: writing into it would not update the variable.
    return all(getattr(v, "_value", None) is _tensor(v) for v in (variable, *slots))


def _tensor(variable: Any) -> Any:
    return variable.value


def _float(x: Any) -> float:
    return float(x)


def gradient_descent(variable: Any, gradient: Any, learning_rate: Any) -> None:
    """``θ ← θ − learning_rate · g``."""
    with torch.no_grad():
        _tensor(variable).add_(gradient, alpha=-_float(learning_rate))


def sgd(
    variable: Any, velocity: Any, gradient: Any, learning_rate: Any, momentum: float,
    nesterov: bool,
) -> None:  # fmt: skip
    """``u ← momentum · u − learning_rate · g``; ``θ ← θ + u`` (or Nesterov's)."""
    lr, u, w = _float(learning_rate), _tensor(velocity), _tensor(variable)
    momentum = _float(torch.tensor(momentum, dtype=w.dtype))  # As keras.ops rounds it.
    with torch.no_grad():
        u.mul_(momentum).add_(gradient, alpha=-lr)
        if nesterov:
            # θ ← θ + momentum · u − learning_rate · g
            w.add_(gradient, alpha=-lr).add_(u, alpha=momentum)
        else:
            w.add_(u)


def accumulated_momentum(variable: Any, velocity: Any, gradient: Any, alpha: Any) -> None:
    """``v ← v + g``; ``θ ← θ − alpha · v`` (DynamicGradientDescent)."""
    with torch.no_grad():
        _tensor(velocity).add_(gradient)
        _tensor(variable).add_(_tensor(velocity), alpha=-_float(alpha))


def adagrad(variable: Any, accumulator: Any, gradient: Any, learning_rate: Any) -> None:
    """``s ← s + g²``; ``θ ← θ − learning_rate · g / √s`` (``s`` holds ``+ epsilon``)."""
    s = _tensor(accumulator)
    with torch.no_grad():
        s.addcmul_(gradient, gradient)
        _tensor(variable).addcdiv_(gradient, torch.sqrt(s), value=-_float(learning_rate))


def moments(m: Any, v: Any, gradient: Any, beta_1: Any, beta_2: Any) -> None:
    """``m ← m + (1 − beta_1)(g − m)``; ``v ← beta_2 · v + (1 − beta_2) · g²``.

    ``1 − beta_*`` is rounded to the moments' dtype first, as ``update_moments``
    rounds it.
    """
    m, v = _tensor(m), _tensor(v)
    one_minus_1 = _float(torch.tensor(1 - _float(beta_1), dtype=m.dtype))
    one_minus_2 = _float(torch.tensor(1 - _float(beta_2), dtype=v.dtype))
    with torch.no_grad():
        m.lerp_(gradient, one_minus_1)
        v.mul_(1 - one_minus_2).addcmul_(gradient, gradient, value=one_minus_2)


def adam(
    variable: Any, m: Any, v: Any, v_hat: Any | None, gradient: Any, alpha: Any, beta_1: Any,
    beta_2: Any, epsilon: float,
) -> None:  # fmt: skip
    """Adam's step (AMSGrad with ``v_hat``): ``θ ← θ − alpha · m / (√v + epsilon)``."""
    moments(m, v, gradient, beta_1, beta_2)
    denominator = _tensor(v)
    with torch.no_grad():
        if v_hat is not None:
            # v̂ ← max(v̂, v)
            denominator = torch.maximum(_tensor(v_hat), denominator, out=_tensor(v_hat))
        denominator = torch.sqrt(denominator).add_(epsilon)
        _tensor(variable).addcdiv_(_tensor(m), denominator, value=-_float(alpha))


def radam(
    variable: Any, m: Any, v: Any, gradient: Any, beta_1: Any, beta_2: Any,
    rectified: Any, adaptive_rate: Any, step_size: Any, bias_2: Any, epsilon: float,
) -> None:  # fmt: skip
    """RAdam: ``θ ← θ − adaptive_rate · m / (√(v / bias_2) + epsilon)`` or ``− step_size · m``."""
    moments(m, v, gradient, beta_1, beta_2)
    with torch.no_grad():
        if bool(rectified):
            denominator = torch.div(_tensor(v), _float(bias_2)).sqrt_().add_(epsilon)
            _tensor(variable).addcdiv_(_tensor(m), denominator, value=-_float(adaptive_rate))
        else:
            _tensor(variable).add_(_tensor(m), alpha=-_float(step_size))


def _norm(x: Any) -> Any:
    return torch.linalg.vector_norm(x)


def _trust_ratio(param: Any, update: Any, trust_coefficient: float, eps: float) -> float:
    """``trust_coefficient · ‖param‖ / (‖update‖ + eps)``, 1 on a zero norm (see _trust_ratio)."""
    param_norm, update_norm = _float(_norm(param)), _float(_norm(update))
    if param_norm == 0 or update_norm == 0:
        return 1.0
    return trust_coefficient * param_norm / (update_norm + eps)


def lamb(
    variable: Any, m: Any, v: Any, gradient: Any, learning_rate: Any, beta_1: Any, beta_2: Any,
    bias_1: Any, bias_2: Any, epsilon: float, weight_decay: float | None, adapt: bool,
) -> None:  # fmt: skip
    """LAMB: ``u = m̂ / (√v̂ + epsilon) + weight_decay · w``; ``w ← w − learning_rate · r · u``."""
    moments(m, v, gradient, beta_1, beta_2)
    w = _tensor(variable)
    with torch.no_grad():
        update = torch.div(_tensor(v), _float(bias_2)).sqrt_().add_(epsilon)
        # (m / bias_1) / d, written as m / d / bias_1 to reuse the one temporary.
        torch.div(_tensor(m), update, out=update).div_(_float(bias_1))
        if weight_decay:
            update.add_(w, alpha=weight_decay)
        rate = _float(learning_rate)
        if adapt:
            rate *= _trust_ratio(w, update, 1.0, 0.0)
        w.add_(update, alpha=-rate)


def lars(
    variable: Any, m: Any, gradient: Any, learning_rate: Any, momentum: float,
    weight_decay: float | None, adapt: bool, trust_coefficient: float, eps: float,
    nesterov: bool,
) -> None:  # fmt: skip
    """LARS: ``u = −learning_rate · r · (g + weight_decay · w)``; ``m ← momentum · m + u``; ``w += m``."""
    w, buf = _tensor(variable), _tensor(m)
    momentum = _float(torch.tensor(momentum, dtype=w.dtype))
    with torch.no_grad():
        g = torch.add(gradient, w, alpha=weight_decay) if weight_decay else gradient
        rate = _float(learning_rate)
        if adapt:
            rate *= _trust_ratio(w, g, trust_coefficient, eps)
        buf.mul_(momentum).add_(g, alpha=-rate)
        if nesterov:
            # w = w + u + momentum · m
            w.add_(g, alpha=-rate).add_(buf, alpha=momentum)
        else:
            w.add_(buf)
