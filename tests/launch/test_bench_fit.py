"""launch.bench.fit: a tiny real run through the command line, and its JSON.

A subprocess, so that the command line itself is what is tested; the
``--epochs`` and ``--steps_per_epoch`` flags are launch.train's too
(`launch._flags`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_small_run_reports_both_sides_and_their_ratio(tmp_path):
    output = tmp_path / "bench_fit.json"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
    done = subprocess.run(
        [sys.executable, "-m", "launch.bench.fit",
         "--comparisons=one_device,mirrored_1_replica,mirrored_2_replicas",
         "--steps_per_epoch=4", "--epochs=2", "--repeats=2", f"--output={output}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(output.read_text())
    assert report["settings"] == {"steps": 4, "epochs": 2, "repeats": 2}
    assert set(report["results"]) == {"one_device", "mirrored_1_replica", "mirrored_2_replicas"}
    for name, result in report["results"].items():
        # Epochs after the first are timed: (2 - 1) per run, 2 rounds per side.
        assert len(result["epochs"]["baseline"]) == 2 and len(result["epochs"]["candidate"]) == 2
        assert result["baseline_steps_per_second"] > 0 and result["candidate_steps_per_second"] > 0
        ratio = result["candidate_steps_per_second"] / result["baseline_steps_per_second"]
        assert abs(result["ratio"] - ratio) < 1e-9
        assert f"{name:>22}: median steps/s" in done.stdout


def test_unknown_comparison_is_a_usage_error(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
    done = subprocess.run(
        [sys.executable, "-m", "launch.bench.fit", "--comparisons=no_such",
         f"--output={tmp_path / 'x.json'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    assert "--comparisons must name registered comparisons" in done.stderr
    assert "no_such" in done.stderr
    assert not (tmp_path / "x.json").exists()
