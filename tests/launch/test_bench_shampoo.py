"""launch.bench.shampoo and launch.bench.crosscheck_shampoo through their command lines.

Subprocesses: the benchmark splits the CPU into two logical devices before
TensorFlow starts, which this test process has already done its own way.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys

import pytest

import tfopt
from launch.bench import shampoo as bench_shampoo
from tfopt import _shampoo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": REPO}


@pytest.mark.slow  # ~30-55 s: three traced variants of a Mirrored Shampoo step.
def test_tiny_bench_reports_both_variants_and_the_paper_scaling(tmp_path):
    output = tmp_path / "shampoo.json"
    done = subprocess.run(
        [sys.executable, "-m", "launch.bench.shampoo", "--shapes=16x16,16x8", "--block_size=8",
         "--rounds=1", "--steps_per_round=1", f"--output_json={output}"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(output.read_text())
    assert report["statistics"] == [8] * 12  # 16x16: 2x2 blocks x 2 axes; 16x8: 2 blocks x 2.
    assert report["root_method"] == "eigh"  # tfopt.Shampoo's default.
    assert set(report["median_step_s"]) == {"split", "every_replica", "no_refresh"}
    assert all(t > 0 for t in report["median_step_s"].values())
    ratio = report["median_step_s"]["split"] / report["median_step_s"]["every_replica"]
    assert abs(report["step_ratio_split_over_every_replica"] - ratio) < 1e-12
    shares = {row["replicas"]: row["busiest_share"] for row in report["paper_scaling"]}
    assert shares == {2: 0.5, 8: 2 / 12, 64: 1 / 12}
    assert "step ratio split / every_replica" in done.stdout


def test_crosscheck_skips_cleanly_without_optax_shampoo():
    done = subprocess.run(
        [sys.executable, "-m", "launch.bench.crosscheck_shampoo", "--optax_python=/nonexistent/python"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("SKIPPED: no optax-shampoo interpreter at /nonexistent/python")


def test_root_method_flag_is_tfopt_s_list_and_default():
    flag = bench_shampoo._ROOT_METHOD._flagvalues[bench_shampoo._ROOT_METHOD.name]
    assert sorted(flag.parser.enum_values) == sorted(_shampoo.ROOT_METHODS)
    assert flag.default == inspect.signature(tfopt.Shampoo).parameters["root_method"].default
