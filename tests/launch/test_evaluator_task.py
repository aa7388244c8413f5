"""launch.train as a side-car evaluator: after a single-process run, and beside a multi-worker cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from launch import _data
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
    assert "evaluator done: 1 checkpoint(s) evaluated, the last at step 20" in capsys.readouterr().out
    (record,) = _records(model_dir)
    # The final checkpoint's weights on the whole test split: fit's own last validation.
    assert record["metrics"]["accuracy"] == pytest.approx(_summary(model_dir)["eval"]["accuracy"], abs=1e-6)
    assert os.listdir(os.path.join(model_dir, "logs", "eval"))


def test_evaluator_task_without_model_dir_exits_2(digits_dir, monkeypatch, capsys):
    monkeypatch.setenv("TF_CONFIG", EVALUATOR_TF_CONFIG)
    assert run_main([*SMALL, f"--data_dir={digits_dir}"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("launch.train: error:")]
    assert len(errors) == 1 and "--model_dir is required for the evaluator" in errors[0]


@pytest.mark.cluster
def test_evaluator_beside_a_multi_worker_cluster(digits_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    result = subprocess.run(
        [sys.executable, "-m", "launch.local_cluster", "--workers=2", "--evaluator", "--timeout=300", "--",
         sys.executable, "-m", "launch.train", "--strategy=multi_worker_mirrored", *SMALL,
         f"--data_dir={digits_dir}", f"--model_dir={model_dir}", "--evaluator_timeout=240"],
        cwd=REPO, capture_output=True, text=True, timeout=360,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[evaluator 0] launch.train: evaluator done" in result.stdout
    records = _records(model_dir)
    assert records[-1]["step"] == 20 and [r["step"] for r in records] == sorted({r["step"] for r in records})
    summary = _summary(model_dir)
    assert "MultiWorkerMirroredStrategy" in summary["strategy"]
    assert records[-1]["metrics"]["accuracy"] == pytest.approx(summary["eval"]["accuracy"], abs=1e-6)
