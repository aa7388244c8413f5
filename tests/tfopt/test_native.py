"""tfopt's native LARS/LAMB kernels (tfopt/_native.py): numerics, determinism, build, fallback.

The kernels are built once per cache directory; every test here shares the
build of the session's cache (``$XDG_CACHE_HOME/tfopt``). The build must
succeed on this machine: a missing compiler fails these tests, it does not
skip them. test_fused.py checks the kernels against the keras.ops path (dense
and sparse gradients, float32/float64, Keras' options, MirroredStrategy).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tests.tfopt.references import assert_trajectories_close
from tests.tfopt.test_lamb import lamb
from tests.tfopt.test_lars import lars
from tfopt import _native

pytestmark = pytest.mark.tensorflow_only("the native kernels are TensorFlow custom ops")

NAMES = ("dense/kernel", "dense/bias")


@pytest.fixture(autouse=True)
def _fresh_answer():
    # Tests below change the environment; every test starts and ends with this
    # process's answer recomputed (the library itself stays cached on disk).
    _native.reset()
    yield
    _native.reset()


def _problem(dtype, steps=6, seed=3):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=(40, 30)), 0.1 * rng.normal(size=30)]
    grads = [[rng.normal(size=(40, 30)), rng.normal(size=30)] for _ in range(steps)]
    return [p.astype(dtype) for p in params], [[g.astype(dtype) for g in s] for s in grads]


def _run(optimizer, params, grads, dtype):
    variables = [
        keras.Variable(p, dtype=dtype, name=n.split("/")[-1])
        for p, n in zip(params, NAMES, strict=True)
    ]
    step = tf.function(lambda gs: optimizer.apply(gs, variables))
    out = []
    for step_grads in grads:
        step([tf.constant(g) for g in step_grads])
        out.append([v.numpy() for v in variables])
    return out, step


def _op_types(step, grads):
    graph = step.get_concrete_function([tf.constant(g) for g in grads[0]]).graph
    return {op.type for op in graph.get_operations()}


# float64 runs against the float64 NumPy reference to 1e-12: every scalar is
# float64 except the learning rate, which Keras keeps in a floatx (float32)
# variable for every optimizer, its own included; the reference takes it
# rounded the same way (keras_lr). float32: the suites' usual 2e-5.
TOLERANCES = {"float64": dict(rtol=1e-12, atol=1e-12), "float32": dict(rtol=2e-5, atol=1e-6)}


def keras_lr(hparams):
    """``hparams`` with the learning rate rounded to float32, as Keras stores it."""
    return {**hparams, "learning_rate": float(np.float32(hparams["learning_rate"]))}

LARS_CASES = {
    "defaults": dict(learning_rate=1.0),
    "nesterov": dict(learning_rate=0.5, momentum=0.8, nesterov=True),
    "decay-and-eps": dict(learning_rate=2.0, weight_decay=0.01, trust_coefficient=0.02, eps=1e-3),
    "no-momentum": dict(learning_rate=0.3, momentum=0.0, weight_decay=0.1),
}
LAMB_CASES = {
    "defaults": dict(learning_rate=1e-2),
    "decay": dict(learning_rate=5e-2, beta_1=0.8, beta_2=0.99, epsilon=1e-4, weight_decay=0.1),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", LARS_CASES)
def test_lars_matches_the_numpy_reference(case, dtype):
    params, grads = _problem(dtype)
    got, step = _run(tfopt.LARS(**LARS_CASES[case]), params, grads, dtype)
    assert "TfoptLarsUpdate" in _op_types(step, grads)
    expected = lars(params, grads, **keras_lr(LARS_CASES[case]))
    assert_trajectories_close(got, expected, **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", LAMB_CASES)
def test_lamb_matches_the_numpy_reference(case, dtype):
    params, grads = _problem(dtype)
    got, step = _run(tfopt.LAMB(**LAMB_CASES[case]), params, grads, dtype)
    assert "TfoptLambUpdate" in _op_types(step, grads)
    expected = lamb(params, grads, **keras_lr(LAMB_CASES[case]))
    assert_trajectories_close(got, expected, **TOLERANCES[dtype])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_exclusions(dtype):
    params, grads = _problem(dtype)
    masks = dict(decay_mask=[True, False], adapt_mask=[True, False])
    hparams = dict(learning_rate=1.0, weight_decay=0.05, trust_coefficient=0.01, nesterov=True)
    opt = tfopt.LARS(**hparams, exclude_from_layer_adaptation=["bias$"])
    opt.exclude_from_weight_decay(var_names=["bias"])
    got, _ = _run(opt, params, grads, dtype)
    assert_trajectories_close(got, lars(params, grads, **hparams, **masks), **TOLERANCES[dtype])

    hparams = dict(learning_rate=1e-2, weight_decay=0.3)
    opt = tfopt.LAMB(**hparams, exclude_from_layer_adaptation=["bias"])
    opt.exclude_from_weight_decay(var_names=["bias"])
    got, _ = _run(opt, params, grads, dtype)
    expected = lamb(params, grads, **keras_lr(hparams), **masks)
    assert_trajectories_close(got, expected, **TOLERANCES[dtype])


def test_lamb_scratch_arrays_are_leased_to_one_op_at_a_time():
    """LAMB keeps u between its passes in arrays leased from one process-wide list.

    Eight variables of mixed sizes in one step: TensorFlow runs their update
    ops concurrently, and the arrays grow as larger variables come. An array
    shared by two ops at once, or one too short, would mix their updates.
    """
    rng = np.random.default_rng(11)
    shapes = [(3,), (70_001,), (17, 5), (250, 130), (1,), (9_999,), (40_000,), (2, 3)]
    params = [rng.normal(size=s) for s in shapes]
    grads = [[rng.normal(size=s) for s in shapes] for _ in range(3)]
    variables = [keras.Variable(p, dtype="float64") for p in params]
    optimizer = tfopt.LAMB(1e-2, weight_decay=1e-2)
    step = tf.function(lambda gs: optimizer.apply(gs, variables))
    got = []
    for step_grads in grads:
        step([tf.constant(g) for g in step_grads])
        got.append([v.numpy() for v in variables])
    assert "TfoptLambUpdate" in _op_types(step, grads)
    expected = lamb(params, grads, **keras_lr(dict(learning_rate=1e-2, weight_decay=1e-2)))
    assert_trajectories_close(got, expected, **TOLERANCES["float64"])


def test_zero_norms_fall_back_to_a_ratio_of_one():
    # A zero bias, and a zero gradient: optax's safe ratio, in the kernel.
    bias = keras.Variable(np.zeros(5, np.float32))
    g = np.array([1.0, -2.0, 0.5, 0.0, 3.0], np.float32)
    tfopt.LARS(0.1).apply([tf.constant(g)], [bias])
    np.testing.assert_allclose(bias.numpy(), -0.1 * g, rtol=1e-6)
    w = keras.Variable(np.ones(5, np.float32))
    tfopt.LAMB(0.1).apply([tf.constant(np.zeros(5, np.float32))], [w])
    np.testing.assert_array_equal(w.numpy(), np.ones(5, np.float32))


# Several chunks of the kernels' 16384 elements, and a ragged last one.
_DETERMINISM_RUN = textwrap.dedent(
    """
    def determinism_run():
        import keras
        import numpy as np
        import tensorflow as tf

        import tfopt

        rng = np.random.default_rng(7)
        w0 = rng.normal(size=(300, 1111)).astype("float32")
        out = []
        for opt in (tfopt.LARS(1.0, weight_decay=1e-3), tfopt.LAMB(1e-2, weight_decay=1e-2)):
            w = keras.Variable(w0)
            for _ in range(3):
                opt.apply([tf.constant(rng.normal(size=w0.shape).astype("float32"))], [w])
            out.append(w.numpy())
        return np.stack(out)
    """
)


def test_bitwise_deterministic_whatever_the_thread_count(tmp_path):
    """Fixed chunks, partial sums added in order: 1 thread and this process' many agree bitwise.

    The one-thread run is a subprocess (~10 s): TensorFlow fixes its thread
    count when it starts, so no other way exists to change it.
    """
    scope = {}
    exec(_DETERMINISM_RUN, scope)  # noqa: S102 -- the same code in both processes.
    here = scope["determinism_run"]()
    assert tf.config.threading.get_intra_op_parallelism_threads() in (0, os.cpu_count())
    script = tmp_path / "run.py"
    script.write_text(
        "import sys\nimport numpy as np\nimport tensorflow as tf\n"
        "tf.config.threading.set_intra_op_parallelism_threads(1)\n"
        + _DETERMINISM_RUN
        + "np.save(sys.argv[1], determinism_run())\n"
    )
    path = tmp_path / "one_thread.npy"
    subprocess.run([sys.executable, str(script), str(path)], check=True, timeout=300)
    assert np.load(path).tobytes() == here.tobytes()
    assert not np.array_equal(here[0], here[1])  # Two distinct runs.


def test_not_on_a_parameter_server_or_an_accelerator():
    assert _native._job("/job:ps/replica:0/task:0/device:CPU:0") == "ps"
    assert _native._job(tf.Variable([1.0]).handle.device) == "localhost"
    assert not _native._on_cpu("/job:localhost/replica:0/task:0/device:GPU:0")
    assert _native._on_cpu("/job:worker/replica:0/task:1/device:CPU:0")


def test_xla_takes_the_keras_ops_path():
    params, grads = _problem("float32", steps=3)
    variables = [keras.Variable(p) for p in params]
    opt = tfopt.LAMB(1e-2)
    step = tf.function(lambda gs: opt.apply(gs, variables), jit_compile=True)
    for step_grads in grads:
        step([tf.constant(g) for g in step_grads])
    expected = lamb(params, grads, learning_rate=1e-2)[-1]
    assert_trajectories_close([[v.numpy() for v in variables]], [expected])
    with pytest.raises(ValueError, match="compiled with XLA.*Received: fused=True"):
        strict = tfopt.LAMB(1e-2, fused=True)
        tf.function(lambda gs: strict.apply(gs, variables), jit_compile=True)(
            [tf.constant(g) for g in grads[0]]
        )


# --- Fallback: never a crash ------------------------------------------------


@pytest.mark.parametrize(
    "env, reason",
    [
        ({"TFOPT_NATIVE": "0"}, "TFOPT_NATIVE=0"),
        ({"TFOPT_CXX": "/nonexistent/c++"}, "no C++ compiler '/nonexistent/c++'"),
        ({"TFOPT_CXX": "false"}, "false exited with 1"),
    ],
    ids=["disabled", "no-compiler", "failed-build"],
)
def test_falls_back_with_one_log_line(env, reason, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # Nothing cached for this compiler.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    params, grads = _problem("float64", steps=3)
    with caplog.at_level("INFO"):
        lars_run, lars_step = _run(tfopt.LARS(1.0, weight_decay=0.01), params, grads, "float64")
        lamb_run, lamb_step = _run(tfopt.LAMB(1e-2), params, grads, "float64")
    assert reason in _native.unavailable_reason()
    logged = [r.getMessage() for r in caplog.records if "native LARS/LAMB" in r.getMessage()]
    assert len(logged) == 1 and reason in logged[0]
    # LARS falls back to TF's momentum kernel, LAMB to keras.ops; same rules.
    assert "ResourceApplyKerasMomentum" in _op_types(lars_step, grads)
    assert not {"TfoptLarsUpdate", "TfoptLambUpdate"} & _op_types(lamb_step, grads)
    exact = TOLERANCES["float64"]
    assert_trajectories_close(lars_run, lars(params, grads, weight_decay=0.01), **exact)
    assert_trajectories_close(lamb_run, lamb(params, grads, **keras_lr({"learning_rate": 1e-2})), **exact)
    with pytest.raises(ValueError, match=f"{re.escape(reason)}.*Received: fused=True"):
        tfopt.LAMB(1e-2, fused=True).apply([tf.constant(grads[0][1])], [keras.Variable(params[1])])


def test_concurrent_builds_compile_once(tmp_path):
    """Four racing builders: one compiles (under the lock), all find the library."""
    calls = tmp_path / "calls"
    compiler = tmp_path / "fake-cxx"
    # Records each call, takes a while, then writes its -o argument.
    compiler.write_text(
        f'#!/bin/sh\necho x >> "{calls}"\nsleep 0.5\nfor a; do out="$a"; done\n'
        'echo library > "$out"\n'
    )
    compiler.chmod(0o755)
    library = tmp_path / "cache" / "ops.so"
    errors = []

    def build():
        try:
            _native._build([str(compiler), "source.cc"], library)
        except Exception as error:  # noqa: BLE001 -- reported below.
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert calls.read_text().count("x") == 1
    assert library.read_text() == "library\n"
    assert sorted(p.name for p in library.parent.iterdir()) == ["ops.so", "ops.so.lock"]


def test_the_cache_is_keyed_and_under_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _native.cache_dir() == tmp_path / "tfopt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _native.cache_dir() == __import__("pathlib").Path.home() / ".cache" / "tfopt"
