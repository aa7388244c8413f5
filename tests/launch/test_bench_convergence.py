"""launch.bench.convergence: the --quick profile end to end, and its outputs.

A subprocess, because absl flags are process-global and other test modules
define flags of the same names. 1-3 min on the shared 2-core CPU (two optimizers
traced, plus the timing rounds); the numbers of a --quick run mean nothing, so this
checks only that every output is there and consistent.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(*args, timeout=400):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}
    return subprocess.run([sys.executable, "-m", "launch.bench.convergence", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_quick_profile_writes_every_output(tmp_path):
    done = _run("--quick", "--task=digits_autoencoder", "--candidates=adamw,soap,shampoo",
                f"--output_dir={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "convergence.json").read_text())
    assert report["settings"]["quick"] is True
    results = report["results"]["digits_autoencoder"]
    assert set(results) == {"adamw", "soap", "shampoo"}
    import tfopt

    if not hasattr(tfopt, "Shampoo"):
        assert "not available on this branch" in results["shampoo"]["skipped"]
        assert "not available on this branch" in done.stdout
    for name in ("adamw", "soap"):
        result = results[name]
        assert result["tuned_lr"] in result["grid"] and len(result["grid"]) == 2
        for runs in result["runs"].values():
            (run,) = runs  # One seed.
            assert run["curve"], "no evaluation was recorded"
            assert all(step % 2 == 0 for step, _ in run["curve"])  # --quick evaluates every 2.
        assert result["step_cost_s"] > 0
    summary = report["summary"]["digits_autoencoder"]
    assert summary["adamw"]["step_cost_s_ratio"] == 1.0
    # The step-cost ratio pairs the rounds: the median of per-round ratios.
    rounds = zip(results["soap"]["step_cost_rounds_s"], results["adamw"]["step_cost_rounds_s"],
                 strict=True)
    ratio = statistics.median(soap / adamw for soap, adamw in rounds)
    assert math.isclose(summary["soap"]["step_cost_s_ratio"], ratio)
    table = (tmp_path / "convergence.md").read_text()
    assert "| tfopt.SOAP |" in table and "| keras AdamW |" in table
    assert (tmp_path / "convergence_digits_autoencoder.png").stat().st_size > 1000

    # --sweeps_from: the same sweeps, the steps timed again (no sweep runs).
    again = tmp_path / "again"
    done = _run("--quick", "--task=digits_autoencoder", "--candidates=adamw,soap",
                f"--sweeps_from={tmp_path / 'convergence.json'}", f"--output_dir={again}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "soap: sweep from --sweeps_from" in done.stdout
    assert "learning rates" not in done.stdout
    timed = json.loads((again / "convergence.json").read_text())["results"]["digits_autoencoder"]
    assert set(timed) == {"adamw", "soap"}
    for name in ("adamw", "soap"):
        assert timed[name]["runs"] == results[name]["runs"]
        assert timed[name]["tuned_lr"] == results[name]["tuned_lr"]
        assert len(timed[name]["step_cost_rounds_s"]) == 2  # --quick's 2 rounds, measured anew.
        assert timed[name]["step_cost_rounds_s"] != results[name]["step_cost_rounds_s"]


def test_sweeps_from_a_run_with_other_settings_is_refused(tmp_path):
    earlier = tmp_path / "convergence.json"
    earlier.write_text(json.dumps({"settings": {"seeds": [0, 1, 2]}, "results": {}}))
    done = _run("--quick", f"--sweeps_from={earlier}", f"--output_dir={tmp_path / 'out'}",
                timeout=120)
    assert done.returncode == 2
    assert "was run with seeds=[0, 1, 2], this run has seeds=[0]" in done.stderr
    assert not (tmp_path / "out" / "convergence.json").exists()


def test_unknown_optimizer_is_a_usage_error(tmp_path):
    done = _run("--candidates=adamw,no_such", f"--output_dir={tmp_path}", timeout=120)
    assert done.returncode != 0
    assert "--candidates must name optimizers from" in done.stderr
    assert not (tmp_path / "convergence.json").exists()


def test_lr_grid_is_half_decades_around_the_default():
    from launch.bench.convergence import lr_grid

    assert lr_grid(1e-3, 5) == [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2]
    assert lr_grid(3e-3, 1) == [3e-3]
