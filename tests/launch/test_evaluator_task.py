"""launch.train as a side-car evaluator: after a single-process run, and beside a multi-worker cluster."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
import time

import pytest
import tensorflow as tf

from launch import _data, local_cluster
from tests.launch.test_train import REPO, _summary, run_main

SMALL = ["--model=mlp", "--epochs=2", "--steps_per_epoch=10"]
EVALUATOR_TF_CONFIG = json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                                  "task": {"type": "evaluator", "index": 0}})


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setattr(_data, "network_reachable", lambda timeout=0: False)


def _records(model_dir):
    with open(os.path.join(model_dir, "eval.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_evaluator_task_evaluates_the_final_checkpoint(digits_dir, tmp_path, monkeypatch, capsys):
    model_dir = str(tmp_path / "run")
    argv = [*SMALL, f"--data_dir={digits_dir}", f"--model_dir={model_dir}"]
    assert run_main(argv) == 0
    monkeypatch.setenv("TF_CONFIG", EVALUATOR_TF_CONFIG)  # As Vertex writes it: outside the cluster.
    capsys.readouterr()
    assert run_main([*argv, "--strategy=multi_worker_mirrored"]) == 0  # Never built: it joins nothing.
    # Both kept checkpoints (each epoch's), oldest first; the last is the final one.
    assert "evaluator done: 2 checkpoint(s) evaluated, the last at step 20" in capsys.readouterr().out
    records = _records(model_dir)
    assert [r["step"] for r in records] == [10, 20]
    record = records[-1]
    # The final checkpoint's weights on the whole test split: fit's own last validation.
    assert record["metrics"]["accuracy"] == pytest.approx(_summary(model_dir)["eval"]["accuracy"], abs=1e-6)
    assert os.listdir(os.path.join(model_dir, "logs", "eval"))


def test_evaluator_task_without_model_dir_exits_2(digits_dir, monkeypatch, capsys):
    monkeypatch.setenv("TF_CONFIG", EVALUATOR_TF_CONFIG)
    assert run_main([*SMALL, f"--data_dir={digits_dir}"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("launch.train: error:")]
    assert len(errors) == 1 and "--model_dir is required for the evaluator" in errors[0]


@pytest.mark.cluster
def test_evaluator_beside_a_multi_worker_cluster_survives_a_sigkill(digits_dir, tmp_path, monkeypatch):
    """The evaluator row of the fault table, short: SIGKILLed mid-run, it is restarted alone under
    --max_restarts, the workers never are, and the restarted one records the final checkpoint (the
    measured row, with time lost and the uninterrupted run's accuracy, is `launch.chaos --kill=evaluator`)."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    model_dir = str(tmp_path / "run")
    out = io.StringIO()
    cluster = local_cluster.LocalCluster(
        [sys.executable, "-m", "launch.train", "--strategy=multi_worker_mirrored", *SMALL,
         "--checkpoint_every_steps=5", f"--data_dir={digits_dir}", f"--model_dir={model_dir}",
         "--evaluator_timeout=240"],
        workers=2, evaluator=True, max_restarts=1, timeout=300, output=out, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    result = {}
    with cluster:
        waiter = threading.Thread(target=lambda: result.setdefault("r", cluster.wait()), daemon=True)
        waiter.start()
        deadline = time.monotonic() + 240
        # The first checkpoint (step 5 of 20) is committed: training is mid-run, the evaluator not done.
        while (tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")) is None
               and waiter.is_alive() and time.monotonic() < deadline):
            time.sleep(0.05)
        evaluator = next(t for t in cluster.tasks if t.type == "evaluator")
        assert waiter.is_alive() and evaluator.process.poll() is None, out.getvalue()[-3000:]
        os.killpg(evaluator.process.pid, signal.SIGKILL)
        waiter.join(timeout=300)
    assert result["r"].returncode == 0, out.getvalue()[-3000:]
    assert cluster.restarts == {"evaluator 0": 1}, out.getvalue()[-3000:]  # The workers went on.
    assert "restart 1 of 1 for evaluator 0: restarting it." in out.getvalue()
    assert "[evaluator 0] launch.train: evaluator done" in out.getvalue()
    records = _records(model_dir)
    assert records[-1]["step"] == 20 and [r["step"] for r in records] == sorted({r["step"] for r in records})
    summary = _summary(model_dir)
    assert "MultiWorkerMirroredStrategy" in summary["strategy"] and summary["steps"] == 20
    assert records[-1]["metrics"]["accuracy"] == pytest.approx(summary["eval"]["accuracy"], abs=1e-6)
