"""The fused-kernel check of `launch.device_check`: agreement, step time, memory roof.

For every tfopt optimizer of `launch.bench.optimizers` (gradient descent,
SGD+momentum, dynamic gradient descent, Adagrad, Adam, LARS, LAMB, RAdam,
Lookahead(Adam), LazyAdam), on one float32 variable of ``check.params``
parameters:

* **Agreement.** ``fused=True`` (TensorFlow's ``ResourceApply*`` kernels) and
  ``fused=False`` (the ``keras.ops`` spec) take three steps from the same
  start with the same gradients, and must agree to 1e-6
  (``|a - b| <= 1e-6 + 1e-6 |b|``). LAMB has no fused kernel; it is reported
  as such, not as agreeing.
* **Step time** of tfopt (``fused="auto"``) and of the Keras counterpart where
  one exists, in a ``tf.function`` with XLA off and on.
* **Memory roof**, measured here as `launch.bench.optimizers` does
  (`launch.bench._roof`): an XLA-compiled triad and TensorFlow's fused
  gradient-descent kernel (12 B a parameter each), timed in the same rounds as
  the steps, on arrays of ``check.params`` parameters but at least
  ``ROOF_MIN_PARAMS`` (so that a small quick-profile size measures the
  device's bandwidth, not its per-call overhead); the roof is the faster of
  the two, in bytes moved per second. A step's
  fraction of the roof is (bytes it must move / roof) / its time, with the
  bytes counted as in `launch.bench.optimizers`: each state array read and
  written once, the gradient read once (Adam: 28 B a parameter), plus
  Lookahead's amortized sync.

GPU ops run asynchronously, so every timing enqueues ``calls`` steps and then
waits for the device by fetching one element of the variable written last.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import launch.device_check._catalog as catalog
import tfopt
from launch.bench import _roof

_SYNC_PERIOD = 6
# name -> (tfopt factory taking `fused`, Keras counterpart or None, state arrays):
# every optimizer of launch.bench.optimizers, in its order.
OPTIMIZERS: dict[str, tuple[Callable[[Any], Any], Callable[[], Any] | None, int]] = {
    "gradient_descent": (lambda fused: tfopt.get("gradient_descent", fused=fused),
                         lambda: keras.optimizers.SGD(), 1),
    "sgd_momentum": (lambda fused: tfopt.get("sgd", momentum=0.9, fused=fused),
                     lambda: keras.optimizers.SGD(momentum=0.9), 2),
    "dynamic_gradient_descent": (
        lambda fused: tfopt.get("dynamic_gradient_descent", fused=fused), None, 2),
    "adagrad": (lambda fused: tfopt.get("adagrad", fused=fused), keras.optimizers.Adagrad, 2),
    "adam": (lambda fused: tfopt.get("adam", fused=fused), keras.optimizers.Adam, 3),
    "lars": (lambda fused: tfopt.get("lars", weight_decay=1e-4, fused=fused), None, 2),
    # tfopt.LAMB's only fused kernel is the native CPU one (tfopt/_native.py), none on
    # an accelerator: it runs as "auto" here and is reported as having no fused kernel.
    "lamb": (lambda fused: tfopt.get("lamb", weight_decay=1e-2), keras.optimizers.Lamb, 3),
    "radam": (lambda fused: tfopt.get("radam", fused=fused), None, 3),
    "lookahead": (lambda fused: tfopt.Lookahead(tfopt.get("adam", fused=fused),
                                                sync_period=_SYNC_PERIOD), None, 3),
    "lazy_adam": (lambda fused: tfopt.get("lazy_adam", fused=fused), keras.optimizers.Adam, 3),
}  # fmt: skip
# Bytes per parameter per step beyond the state arrays, amortized: Lookahead
# reads and writes the variable and its slow weights every sync_period steps.
EXTRA_BYTES = {"lookahead": 4 * 4 / _SYNC_PERIOD}
NO_FUSED_KERNEL = {"lamb"}
TOLERANCE = 1e-6
ROOF_MIN_PARAMS = {catalog.FULL: 16 << 20, catalog.QUICK: 1 << 20}
_AGREEMENT_STEPS = 3
# (warm-up calls, timed rounds, calls per round)
_TIMING = {catalog.FULL: (3, 5, 10), catalog.QUICK: (1, 3, 3)}


def _shape(n: int) -> tuple[int, ...]:
    return (n // 1024, 1024) if n % 1024 == 0 else (n,)


def _sync(variable: Any) -> None:
    """Waits for every step enqueued on ``variable``'s device (reads one element)."""
    value = variable.value if isinstance(variable, keras.Variable) else variable
    tf.reshape(value, [-1])[:1].numpy()


def time_calls(fns: list[tuple[Callable[[], Any], Any]], profile: str) -> list[float]:
    """Median seconds per call of each ``(fn, variable_it_writes)``, interleaved per round.

    Every round times each function in turn, so a change in machine load
    touches all of them alike and their ratios hold.
    """
    warmup, rounds, calls = _TIMING[profile]
    for fn, variable in fns:
        for _ in range(warmup):
            fn()
        _sync(variable)
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for (fn, variable), times in zip(fns, samples, strict=True):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            _sync(variable)
            times.append((time.perf_counter() - start) / calls)
    return [statistics.median(t) for t in samples]


def _apply_fn(optimizer: Any, variable: Any, jit_compile: bool) -> Callable[[Any], Any]:
    # A closure, not default arguments: tf.function would trace those as inputs.
    return tf.function(lambda g: optimizer.apply([g], [variable]), jit_compile=jit_compile)


@functools.cache
def _roof_kernels(n: int) -> list[tuple[Callable[[], Any], Any]]:
    """`launch.bench._roof`'s triad and TF kernel on ``n`` float32s, built once per size."""
    gradient = tf.random.normal(_shape(n), seed=5)
    return [(functools.partial(fn, gradient), v) for fn, v in _roof.kernels(_shape(n))]


def _agreement(name: str, n: int) -> dict[str, Any]:
    make, _, _ = OPTIMIZERS[name]
    if name in NO_FUSED_KERNEL:
        return {"fused_kernel": False, "ok": None}
    shape = _shape(n)
    start = tf.random.normal(shape, stddev=0.1, seed=1)
    grads = [tf.random.normal(shape, stddev=0.01, seed=10 + k) for k in range(_AGREEMENT_STEPS)]
    finals = []
    for fused in (True, False):
        variable = keras.Variable(start)
        optimizer = make(fused)
        optimizer.build([variable])
        step = _apply_fn(optimizer, variable, jit_compile=False)
        for g in grads:
            step(g)
        finals.append(variable.value)
    fused_w, ops_w = finals
    error = tf.abs(fused_w - ops_w)
    excess = float(tf.reduce_max(error - TOLERANCE * tf.abs(ops_w)))
    finite = bool(tf.reduce_all(tf.math.is_finite(fused_w)))
    return {
        "fused_kernel": True,
        "max_abs_difference": float(tf.reduce_max(error)),
        "ok": finite and excess <= TOLERANCE,
        "finite": finite,
    }


def _step_times(name: str, n: int, xla: bool, profile: str) -> dict[str, Any]:
    make, make_keras, state_arrays = OPTIMIZERS[name]
    impls = [("tfopt", lambda: make("auto"))]
    if make_keras is not None:
        impls.append(("keras", make_keras))
    shape = _shape(n)
    gradient = tf.random.normal(shape, stddev=0.01, seed=2)
    fns, variables = [], []
    for _, factory in impls:
        variable = keras.Variable(tf.random.normal(shape, stddev=0.1, seed=1))
        optimizer = factory()
        optimizer.build([variable])
        step = _apply_fn(optimizer, variable, jit_compile=xla)
        fns.append((functools.partial(step, gradient), variable))
        variables.append(variable)
    roof_n = max(n, ROOF_MIN_PARAMS[profile])
    seconds = time_calls([*fns, *_roof_kernels(roof_n)], profile)
    triad_s, kernel_s = seconds[-2:]
    roof_bw = 1e9 * _roof.gb_per_s(roof_n, triad_s, kernel_s)
    step_bytes = 4 * n * (2 * state_arrays + 1) + EXTRA_BYTES.get(name, 0.0) * n
    row: dict[str, Any] = {"roof_params": roof_n, "roof_gb_per_s": roof_bw / 1e9,
                           "triad_gb_per_s": _roof.BYTES_PER_PARAM * roof_n / triad_s / 1e9,
                           "tf_kernel_gb_per_s": _roof.BYTES_PER_PARAM * roof_n / kernel_s / 1e9,
                           "bytes_per_step": step_bytes}  # fmt: skip
    for (impl, _), t, variable in zip(impls, seconds[: len(impls)], variables, strict=True):
        if not bool(tf.reduce_all(tf.math.is_finite(variable.value))):
            raise FloatingPointError(f"{impl} {name} (XLA {'on' if xla else 'off'}) "
                                     "produced non-finite weights")  # fmt: skip
        row[f"{impl}_ms"] = 1e3 * t
        row[f"{impl}_fraction_of_roof"] = step_bytes / roof_bw / t
    return row


def fused_kernels(check: catalog.Check, context: Any) -> dict[str, Any]:
    """Runs the check on ``check.params`` parameters; see the module docstring."""
    n = int(check.params)
    rows, problems = [], []
    for name in OPTIMIZERS:
        agreement = _agreement(name, n)
        if agreement["ok"] is False:
            problems.append(f"{name}: fused and keras.ops differ by up to "
                            f"{agreement['max_abs_difference']:.3g} (finite: {agreement['finite']})")  # fmt: skip
        for xla in (False, True):
            row = {"optimizer": name, "params": n, "xla": xla, **agreement,
                   **_step_times(name, n, xla, context.profile)}  # fmt: skip
            rows.append(row)
    roof = float(np.median([r["roof_gb_per_s"] for r in rows]))
    status = catalog.FAILED if problems else catalog.PASS
    agreeing = sum(1 for name in OPTIMIZERS if name not in NO_FUSED_KERNEL)
    reason = "; ".join(problems) if problems else (
        f"{agreeing} fused kernels agree with keras.ops to {TOLERANCE:g} (LAMB has none); "
        f"memory roof {roof:.1f} GB/s")  # fmt: skip
    return {"status": status, "reason": reason, "metrics": {"roof_gb_per_s": roof, "rows": rows}}
