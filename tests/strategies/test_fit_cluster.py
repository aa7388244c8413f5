"""strategies.fit on real local clusters: 2-worker MultiWorkerMirrored, parameter servers, SIGKILL.

Every task is a process on 127.0.0.1 started by launch.local_cluster and runs
tests/strategies/fit_programs.py; each cluster is bounded by a timeout and
leaves no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import strategies
from launch import local_cluster
from tests.strategies import fit_programs

pytestmark = pytest.mark.cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 150.0


def _command(mode: str, out_dir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tests.strategies.fit_programs", mode, str(out_dir), *extra]


def _env() -> dict[str, str]:
    return {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}


def _tail(result: local_cluster.Result, lines: int = 15) -> str:
    return "\n".join(f"[{name}] {line}" for name, output in result.output.items()
                     for line in output[-lines:])


def _run(mode: str, out_dir, *extra: str, **shape) -> local_cluster.Result:
    result = local_cluster.run_cluster(_command(mode, out_dir, *extra), timeout=TIMEOUT,
                                       env=_env(), output=None, cwd=ROOT, **shape)
    assert result.returncode == 0, f"{result.reason}\n{_tail(result)}"
    return result


def _read(out_dir, name: str) -> dict:
    with open(os.path.join(out_dir, name)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def equivalence_run(tmp_path_factory):
    """All variants trained by ONE pair of worker processes (1 CPU replica each)."""
    out_dir = tmp_path_factory.mktemp("equivalence")
    _run("equivalence", out_dir, workers=2)
    assert _read(out_dir, "equivalence-worker0.json")["replicas"] == 2
    return out_dir


@pytest.mark.parametrize("variant", list(fit_programs.VARIANTS))
def test_multi_worker_mirrored_equals_one_device(equivalence_run, variant):
    reference = strategies.fit(lambda: fit_programs.model_fn(variant), fit_programs.dataset(),
                               strategy=tf.distribute.OneDeviceStrategy("CPU:0"),
                               epochs=fit_programs.EPOCHS, verbose=0).model.get_weights()
    for worker in ("worker0", "worker1"):
        with np.load(os.path.join(equivalence_run, f"{variant}-{worker}.npz")) as saved:
            weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        for expected, got in zip(reference, weights, strict=True):
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=worker)


def test_parameter_server_learns_and_counts_every_step(tmp_path):
    result = _run("parameter_server", tmp_path, workers=2, ps=1, chief=True)
    found = _read(tmp_path, "parameter_server-chief0.json")
    assert found["epochs_run"] == [0, 1, 2]
    assert found["loss"][-1] < 0.05, found["loss"]  # y = 3x + 1 (+ noise of variance 0.0025)
    # Scheduled steps: 3 epochs x 30. Keras' own counter loses increments here.
    assert found["iterations"] == 90
    assert any("examples/s" in line for line in result.output["chief 0"])
    assert os.path.exists(tmp_path / "run" / "model.keras")
    keras.saving.load_model(tmp_path / "run" / "model.keras", safe_mode=True)


def _wait_for(paths: list[str], cluster: local_cluster.LocalCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(p) for p in paths):
        dead = [t.name for t in cluster.tasks if t.process.poll() is not None]
        assert not dead, f"{dead} exited early:\n" + "\n".join(
            line for t in cluster.tasks for line in list(t.lines)[-15:])
        assert time.monotonic() < deadline, f"no {paths} after {timeout} s"
        time.sleep(0.2)


def _kill_while_hanging(tmp_path, *args: str) -> None:
    hanging = [os.path.join(tmp_path, f"hanging-worker{i}.json") for i in range(2)]
    cluster = local_cluster.LocalCluster(_command("resume", tmp_path, *args), workers=2,
                                         timeout=TIMEOUT, env=_env(), output=None, cwd=ROOT)
    with cluster:
        _wait_for(hanging, cluster, TIMEOUT)
        cluster.stop(first_signal=signal.SIGKILL)
        assert all(t.process.returncode == -signal.SIGKILL for t in cluster.tasks)


def test_sigkilled_multi_worker_run_resumes_from_its_checkpoint(tmp_path):
    _kill_while_hanging(tmp_path, "--hang")  # Epoch 0 done and checkpointed everywhere.
    result = _run("resume", tmp_path, workers=2)
    for worker in ("worker0", "worker1"):
        found = _read(tmp_path, f"resume-{worker}.json")
        assert found["epochs_run"] == [1, 2], found  # Resumed at the second epoch, not at 0.
        assert found["epochs"] == [0, 1, 2], found  # The history still has the first one.
        assert found["iterations"] == 3 * fit_programs.STEPS
    assert any("at epoch 2, step 0" in line for line in result.output["worker 0"])


def test_multi_worker_run_killed_after_an_epochs_last_step_finishes_its_plan(tmp_path):
    # Checkpoints every 2 steps: one is due on epoch 0's last step (4). The kill lands
    # after that step and before the epoch's end; the restart must train exactly the
    # 12 planned steps (it once trained without end, issue 24).
    _kill_while_hanging(tmp_path, "--hang_at_last_step", "--every=2")
    result = _run("resume", tmp_path, "--every=2", workers=2)
    for worker in ("worker0", "worker1"):
        found = _read(tmp_path, f"resume-{worker}.json")
        assert found["epochs"] == [0, 1, 2], found
        assert found["iterations"] == 3 * fit_programs.STEPS, found
    # The step-4 checkpoint is the epoch-end one, taken after the epoch's logs: it was
    # not written before the kill, so the run resumed from step 2 of epoch 0.
    assert any("at epoch 1, step 2" in line for line in result.output["worker 0"]), _tail(result)


def test_parameter_server_trains_from_a_dataset_like_one_device(tmp_path):
    # One process: in-process worker and ps servers, this program the coordinator.
    from tests.strategies import ps_dataset_program as program

    result = subprocess.run([sys.executable, "-m", "tests.strategies.ps_dataset_program", str(tmp_path)],
                            cwd=ROOT, env={**os.environ, **_env()}, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    for case, (data, steps) in program.CASES.items():
        reference = strategies.fit(program.model_fn, data(), strategy=tf.distribute.get_strategy(),
                                   epochs=program.EPOCHS, steps_per_epoch=steps, verbose=0)
        found = _read(tmp_path, f"{case}.json")
        assert found["iterations"] == program.EPOCHS * (steps or program.BATCHES), case
        np.testing.assert_allclose(found["loss"], reference.history["loss"], rtol=1e-5, err_msg=case)
        with np.load(os.path.join(tmp_path, f"{case}.npz")) as saved:
            weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        for expected, got in zip(reference.model.get_weights(), weights, strict=True):
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=case)
