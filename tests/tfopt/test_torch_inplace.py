"""PyTorch's in-place path (tfopt/_torch_inplace.py) computes the keras.ops path's rule.

On the PyTorch backend each optimizer's step is trained twice from the same
weights on the same gradients: once as it runs (in place), once with
``_torch_inplace.applies`` switched off (the ``keras.ops`` code, the spec).
They differ only by rounding (fused multiply-adds): within 1e-5 of the
weights' motion in float32, 1e-7 in float64. Each run also checks that the
in-place path was taken for every variable, so the comparison cannot pass by
running the same code twice. Shampoo and SOAP have no in-place path; Lookahead
and LazyAdam's dense steps take their inner/Adam path.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import tfopt
from tfopt import _torch_inplace

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="the in-place path is PyTorch's (KERAS_BACKEND=torch)"
)

STEPS = 8
SHAPES = [(8, 5), (5,), (3,)]  # The last starts at zero: LARS/LAMB's zero-norm fallback.

CASES = {
    "gradient_descent": lambda: tfopt.GradientDescent(0.1),
    "sgd": lambda: tfopt.SGD(0.1),
    "sgd_momentum": lambda: tfopt.SGD(0.1, momentum=0.9),
    "sgd_nesterov": lambda: tfopt.SGD(0.1, momentum=0.9, nesterov=True),
    "dynamic_gradient_descent": lambda: tfopt.DynamicGradientDescent(0.05),
    "adagrad": lambda: tfopt.Adagrad(0.1),
    "adam": lambda: tfopt.Adam(0.01),
    "amsgrad": lambda: tfopt.Adam(0.01, amsgrad=True),
    "lazy_adam": lambda: tfopt.LazyAdam(0.01),
    "radam": lambda: tfopt.RAdam(0.01),  # Steps 1-5 momentum, then rectified.
    "lamb": lambda: tfopt.LAMB(0.01),
    "lamb_decay": lambda: tfopt.LAMB(0.01, weight_decay=0.1,
                                     exclude_from_layer_adaptation=["variable_2"]),
    "lars": lambda: tfopt.LARS(1.0, weight_decay=1e-3),
    "lars_nesterov": lambda: tfopt.LARS(1.0, nesterov=True,
                                        exclude_from_layer_adaptation=["variable_1"]),
    "lookahead_adam": lambda: tfopt.Lookahead(tfopt.Adam(0.01), sync_period=3),
}  # fmt: skip


def _train(case, dtype, inplace, monkeypatch):
    rng = np.random.default_rng(0)
    start = [rng.normal(size=s).astype(dtype) for s in SHAPES[:-1]] + [np.zeros(SHAPES[-1], dtype)]
    grads = [[rng.normal(size=s).astype(dtype) for s in SHAPES] for _ in range(STEPS)]
    taken, real = [], _torch_inplace.applies

    def applies(*args):
        taken.append(inplace and real(*args))
        return taken[-1]

    with monkeypatch.context() as patch:
        patch.setattr(_torch_inplace, "applies", applies)
        # Keras names a model's variables variable, variable_1... (the exclusion lists' targets).
        variables = [keras.Variable(w, name=f"variable_{i}") for i, w in enumerate(start)]
        optimizer = CASES[case]()
        for step in grads:
            optimizer.apply([keras.ops.convert_to_tensor(g) for g in step], variables)
    assert taken and all(taken) == inplace, taken
    return start, [keras.ops.convert_to_numpy(v) for v in variables]


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float64", 1e-7)])
@pytest.mark.parametrize("case", CASES)
def test_inplace_matches_keras_ops(case, dtype, tolerance, monkeypatch):
    start, fast = _train(case, dtype, True, monkeypatch)
    _, spec = _train(case, dtype, False, monkeypatch)
    motion = max(np.abs(w - s).max() for w, s in zip(spec, start, strict=True))
    assert motion > 1e-3
    for got, want in zip(fast, spec, strict=True):
        assert got.dtype == dtype
        np.testing.assert_array_less(np.abs(got - want).max(), tolerance * motion)


def test_fused_false_keeps_keras_ops():
    """``fused=False`` means the keras.ops code, on PyTorch as on TensorFlow."""
    variable = keras.Variable(np.ones(3, "float32"))
    assert not _torch_inplace.applies(tfopt.Adam(fused=False), variable, variable.value)
    assert _torch_inplace.applies(tfopt.Adam(), variable, variable.value)


def test_low_precision_and_stateless_keep_keras_ops():
    """float16 (float32 scalars) and StatelessScope values (not the variable's storage)."""
    half = keras.Variable(np.ones(3, "float16"))
    assert not _torch_inplace.applies(tfopt.Adam(), half, half.value)
    variable, optimizer = keras.Variable(np.ones(3, "float32")), tfopt.Adam()
    assert _torch_inplace.applies(optimizer, variable, keras.ops.zeros(3))
    with keras.StatelessScope(state_mapping=[(variable, keras.ops.zeros(3))]):
        assert not _torch_inplace.applies(optimizer, variable, keras.ops.zeros(3))
