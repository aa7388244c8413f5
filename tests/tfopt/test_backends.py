"""Every tfopt optimizer takes the same steps on the JAX and PyTorch backends as on TensorFlow.

A Keras backend is chosen when Keras is imported, so each backend trains in
its own process (tests/tfopt/backend_run.py): every optimizer registered in
``tfopt.available()``, plus the ``SkipNonFinite`` wrapper, trains the same
small model from the same weights on the same 8 batches. The TensorFlow run is
this process's own (the suite runs on TensorFlow). The final weights must
agree with TensorFlow's within 1e-5 of the distance TensorFlow's weights moved,
and importing tfopt on the other backend must not load TensorFlow.

On JAX each optimizer also trains in a custom jitted loop that calls
``optimizer.stateless_apply``, as a JAX user's own loop does.

One test per backend, so that under ``pytest -n`` each backend's process runs
once. The backends come from the ``backends`` extra (``pip install -e
'.[backends]'``); a missing one is a skip that says how to install it.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np
import pytest

from tests.tfopt import backend_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOLERANCE = 1e-5  # Of the motion: max |w_backend - w_tf| / max |w_tf - w_start|.

# Optimizers that do not run on a backend yet, and why; the test fails if one
# of them starts to pass, so that it leaves this table.
NOT_YET: dict[str, dict[str, str]] = {}


def _load(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


@functools.cache
def _tensorflow_run() -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        backend_run.main(os.path.join(tmp, "tensorflow.npz"), [])
        return _load(os.path.join(tmp, "tensorflow.npz"))


def _backend_run(backend: str) -> dict[str, np.ndarray]:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, f"{backend}.npz")
        process = subprocess.run(
            [sys.executable, "-m", "tests.tfopt.backend_run", out],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=540,
        )  # fmt: skip
        assert process.returncode == 0, process.stderr[-3000:]
        return _load(out)


def deviations(reference: dict[str, np.ndarray], run: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per optimizer name: its relative deviation from ``reference``, or its error text."""
    names = sorted({key.split("/")[0] for key in reference if "/" in key})
    result: dict[str, Any] = {}
    for name in names:
        assert f"{name}/error" not in reference, str(reference[f"{name}/error"])
        if f"{name}/error" in run:
            lines = str(run[f"{name}/error"]).strip().splitlines()
            result[name] = next((x for x in reversed(lines) if "Error" in x), lines[-1]).strip()
            continue
        count = sum(1 for key in reference if key.startswith(f"{name}/end/"))
        motion, gap = 0.0, 0.0
        for i in range(count):
            start = reference[f"{name}/start/{i}"]
            np.testing.assert_array_equal(run[f"{name}/start/{i}"], start)
            expected = reference[f"{name}/end/{i}"]
            motion = max(motion, float(np.max(np.abs(expected - start))))
            gap = max(gap, float(np.max(np.abs(run[f"{name}/end/{i}"] - expected))))
        assert motion > 0, f"{name} did not move on TensorFlow"
        result[name] = gap / motion
    return result


def _stateless(run: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``run`` with the stateless loop's weights (or its error) as each name's result."""
    view = {key: value for key, value in run.items() if "/start/" in key}
    for key, value in run.items():
        name, _, rest = key.partition("/")
        if rest == "stateless_error":
            view[f"{name}/error"] = value
        elif rest.startswith("stateless/"):
            view[f"{name}/end/{rest.split('/')[1]}"] = value
    return view


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_every_optimizer_matches_tensorflow(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"the {backend} backend is not installed: pip install -e '.[backends]'")
    run = _backend_run(backend)
    for result in (_tensorflow_run(), run):  # The NaN batch was skipped, once, on each.
        assert int(result[f"{backend_run.NAN_BATCH}/skipped_steps"]) == 1
        assert int(result["skip_nonfinite/skipped_steps"]) == 0
    assert not run["tensorflow_at_import"], f"import tfopt loaded TensorFlow on {backend}"
    found = deviations(_tensorflow_run(), run)
    if backend == "jax":  # A custom jitted loop through optimizer.stateless_apply, too.
        for name, value in deviations(_tensorflow_run(), _stateless(run)).items():
            found[f"{name} (stateless_apply)"] = value
    assert {name.split(" ")[0] for name in found} == set(backend_run.names())  # Every name ran.
    failing = {name: value for name, value in found.items()
               if isinstance(value, str) or not value <= TOLERANCE}
    expected = NOT_YET.get(backend, {})
    report = "\n".join(f"  {name}: {value}" for name, value in sorted(found.items()))
    print(f"{backend} vs tensorflow (max |Δw| / max motion):\n{report}")
    assert set(failing) == set(expected), f"{backend} vs tensorflow:\n{report}"
