"""Preemption of a 2-worker launch.train run, for real: SIGKILL mid-epoch, SIGTERM, relaunch.

One chain of runs of ``python -m launch.local_cluster --workers=2 -- python -m
launch.train --strategy=multi_worker_mirrored --checkpoint_every_steps=4``
(3 epochs of 10 steps), through `tests/launch/_paused_train.py`, which holds
every worker at a chosen step so that the faults land where the test says:

1. run A is SIGKILLed (every task) while held at step 14, mid-epoch 2; its
   newest checkpoint is step 12;
2. run B resumes at step 12 (epoch 2, step 2), not at the epoch's start or 0;
   held at step 24, worker 1 alone gets SIGTERM: both workers checkpoint at
   the same step, 25, and exit 143 without a traceback;
3. run C resumes at step 25 and finishes: 30 optimizer steps in all, exactly.

Its final weights, optimizer state, evaluation and metrics history are
compared with an uninterrupted run U of the same seed (run side by side with
A): they must be equal, bit for bit (the history to 1e-6, see below). While A is held, the test also reads which
addresses the tasks listen on.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

import tfopt  # noqa: F401  Registers the optimizers that model.keras names.
from launch import local_cluster

pytestmark = [pytest.mark.cluster, pytest.mark.fault]

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 150.0
STEPS, EPOCHS, EVERY = 10, 3, 4


def _command(model_dir: Path, data_dir: str, markers: Path, pause: str) -> list[str]:
    return [sys.executable, "-m", "tests.launch._paused_train", pause, str(markers),
            "--strategy=multi_worker_mirrored", "--model=mlp", "--dataset=digits",
            f"--data_dir={data_dir}", "--batch_size=32", f"--epochs={EPOCHS}",
            f"--steps_per_epoch={STEPS}", f"--checkpoint_every_steps={EVERY}", "--seed=7",
            f"--model_dir={model_dir}", "--cluster_timeout=60"]  # fmt: skip


def _cluster(model_dir: Path, data_dir: str, markers: Path, pause: str = "") -> local_cluster.LocalCluster:
    markers.mkdir(exist_ok=True)
    return local_cluster.LocalCluster(
        _command(model_dir, data_dir, markers, pause), workers=2, timeout=TIMEOUT, output=None,
        cwd=str(REPO), env={"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"})  # fmt: skip


def _tail(cluster: local_cluster.LocalCluster, n: int = 20) -> str:
    return "\n".join(f"[{t.name}] {line}" for t in cluster.tasks for line in list(t.lines)[-n:])


def _hold(cluster: local_cluster.LocalCluster, markers: Path, step: int) -> None:
    """Waits until every worker is held at the end of ``step``."""
    deadline = time.monotonic() + TIMEOUT
    while len(glob.glob(str(markers / f"paused-{step}-*"))) < 2:
        dead = [t.name for t in cluster.tasks if t.process.poll() is not None]
        assert not dead, f"{dead} exited before step {step}:\n{_tail(cluster)}"
        assert time.monotonic() < deadline, f"never reached step {step}:\n{_tail(cluster)}"
        time.sleep(0.1)


def _release(markers: Path, step: int) -> None:
    (markers / f"release-{step}").touch()


def _checkpoints(model_dir: Path) -> list[int]:
    return sorted(int(p.split("ckpt-")[1].split(".")[0])
                  for p in glob.glob(str(model_dir / "checkpoints" / "ckpt-*.index")))  # fmt: skip


def _resumed_line(cluster: local_cluster.LocalCluster) -> str:
    lines = [line for line in cluster.tasks[0].lines if line.startswith("Resuming from")]
    assert len(lines) == 1, _tail(cluster)
    return lines[0]


def _listening(pids: list[int]) -> list[str]:
    """``host:port`` of every listening TCP socket the processes ``pids`` hold."""
    inodes = set()
    for pid in pids:
        for fd in glob.glob(f"/proc/{pid}/fd/*"):
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(_address(fields[1]))
    return found


def _is_wildcard(address: str) -> bool:
    return address.startswith(("0.0.0.0:", f"[{'0' * 32}]:"))


def _address(hex_address: str) -> str:
    host, port = hex_address.split(":")
    if len(host) == 8:
        octets = [str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0)]
        return f"{'.'.join(octets)}:{int(port, 16)}"
    return f"[{host}]:{int(port, 16)}"


def test_preempted_multi_worker_run_resumes_at_its_last_step(tmp_path, digits_dir):
    run, uninterrupted = tmp_path / "run", tmp_path / "uninterrupted"

    # A (killed at step 14) and U (uninterrupted) side by side.
    with _cluster(uninterrupted, digits_dir, tmp_path / "u") as u, \
            _cluster(run, digits_dir, tmp_path / "a", pause="14") as a:  # fmt: skip
        _hold(a, tmp_path / "a", 14)
        assert _checkpoints(run)[-1] == 12, _checkpoints(run)
        sockets = _listening(a.pids)
        a.stop(first_signal=signal.SIGKILL)
        assert all(t.process.returncode == -signal.SIGKILL for t in a.tasks)
        result_u = u.wait()
        assert result_u.returncode == 0, _tail(u)
    # Network exposure: the cluster's addresses are loopback only. TF's gRPC
    # server itself listens on the wildcard address whatever TF_CONFIG says
    # ("0.0.0.0:" + port is hard-coded in grpc_server_lib.cc), so that is the
    # one listener allowed beyond loopback, on exactly the TF_CONFIG ports.
    addresses = [address for job in a.spec.values() for address in job]
    assert all(address.startswith("127.0.0.1:") for address in addresses), a.spec
    tf_ports = {address.rsplit(":", 1)[1] for address in addresses}
    assert sockets, "the workers listen on no TCP port?"
    beyond = [s for s in sockets if not s.startswith("127.0.0.1:")
              and not (_is_wildcard(s) and s.rsplit(":", 1)[1] in tf_ports)]  # fmt: skip
    assert beyond == [], f"listening beyond loopback: {beyond} (TF servers: {tf_ports})"

    # B resumes at step 12; SIGTERM to worker 1 alone while both are held at 24.
    with _cluster(run, digits_dir, tmp_path / "b", pause="24") as b:
        _hold(b, tmp_path / "b", 24)
        assert "at epoch 2, step 2" in _resumed_line(b)  # Step 12, not 10 (epoch start) or 0.
        os.killpg(b.tasks[1].pid, signal.SIGTERM)
        _release(tmp_path / "b", 24)
        result_b = b.wait()
    assert result_b.returncode == 143, _tail(b)
    codes = [t.process.returncode for t in b.tasks]
    assert codes == [143, 143], f"{codes}\n{_tail(b, 8)}"  # Both stopped, by themselves.
    assert _checkpoints(run)[-1] == 25, _checkpoints(run)  # One step after the notice, on both.
    for task in b.tasks:
        stderr_like = "\n".join(task.lines)
        assert "Traceback" not in stderr_like, _tail(b)
        assert any("preempted" in line for line in task.lines), _tail(b)

    # C resumes at step 25 and completes the 30 steps, each once.
    with _cluster(run, digits_dir, tmp_path / "c") as c:
        result_c = c.wait()
    assert result_c.returncode == 0, _tail(c)
    assert "at epoch 3, step 5" in _resumed_line(c)
    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    assert int(model.optimizer.iterations.numpy()) == STEPS * EPOCHS

    # Killed, preempted and resumed twice, it is still the uninterrupted run:
    # the same weights and optimizer state, bit for bit (strategies.training._resume).
    reference_model = keras.saving.load_model(uninterrupted / "model.keras", safe_mode=True)
    for kind, got, want in (("weight", model.weights, reference_model.weights),
                            ("optimizer variable", model.optimizer.variables,
                             reference_model.optimizer.variables)):  # fmt: skip
        assert len(got) == len(want)
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            delta = float(np.max(np.abs(np.asarray(a.numpy(), np.float64) - np.asarray(b.numpy(), np.float64))))
            assert delta == 0.0, f"{kind} {i} ({b.name}) differs by up to {delta}"
    final = json.loads((run / "summary.json").read_text())
    reference = json.loads((uninterrupted / "summary.json").read_text())
    assert final["eval"] == reference["eval"]
    assert final["steps"] == reference["steps"] == STEPS * EPOCHS
    # Each epoch's training metrics: the resumed epochs' restored sums are split
    # over the replicas and summed again, in another order (1e-6, not bitwise).
    assert final["history"].keys() == reference["history"].keys()
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(final["history"][key], reference["history"][key], rtol=1e-6, err_msg=key)


def _ps_cluster(model_dir: Path, data_dir: str, markers: Path, pause: str = "") -> local_cluster.LocalCluster:
    markers.mkdir(exist_ok=True)
    command = _command(model_dir, data_dir, markers, pause)
    command[command.index("--strategy=multi_worker_mirrored")] = "--strategy=parameter_server"
    return local_cluster.LocalCluster(
        command, workers=2, ps=1, chief=True, timeout=TIMEOUT, output=None, cwd=str(REPO),
        env={"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"})  # fmt: skip


def _task(cluster: local_cluster.LocalCluster, name: str) -> local_cluster.Task:
    return next(t for t in cluster.tasks if t.name == name)


def _wait_chief(cluster: local_cluster.LocalCluster, markers: Path, step: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not (markers / f"paused-{step}-chief0").exists():
        chief = _task(cluster, "chief 0")
        assert chief.process.poll() is None, f"the chief exited before step {step}:\n{_tail(cluster)}"
        assert time.monotonic() < deadline, f"never reached step {step}:\n{_tail(cluster)}"
        time.sleep(0.1)


def test_parameter_server_survives_a_lost_worker_and_a_restarted_chief(tmp_path, digits_dir):
    run, markers = tmp_path / "run", tmp_path / "m1"
    with _ps_cluster(run, digits_dir, markers, pause="8,28") as first:
        _wait_chief(first, markers, 8)
        worker = _task(first, "worker 1")
        os.killpg(worker.pid, signal.SIGKILL)
        _release(markers, 8)
        # The coordinator re-runs worker 1's steps on worker 0 and goes on.
        _wait_chief(first, markers, 28)
        assert worker.process.poll() == -signal.SIGKILL
        assert _checkpoints(run)[-1] == 24, _checkpoints(run)
        os.killpg(_task(first, "chief 0").pid, signal.SIGKILL)
        assert first.wait().failed == "chief 0"  # local_cluster then stops every task.

    with _ps_cluster(run, digits_dir, tmp_path / "m2") as second:
        result = second.wait()
    assert result.returncode == 0, _tail(second)
    chief_lines = result.output["chief 0"]
    assert any(line.startswith("Resuming from") and "at epoch 3, step 4" in line
               for line in chief_lines), _tail(second)  # fmt: skip
    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    assert int(model.optimizer.iterations.numpy()) == STEPS * EPOCHS  # Every scheduled step, once.
