"""Hypothesis over every flag of launch.train, local_cluster, vertex and kubernetes (see ``_fuzz_flags``).

Each program's examples run in one subprocess (``python -m
tests.launch._fuzz_flags``), which reads the flags from absl's registry,
draws adversarial values and checks the property on each example: the
command trains (stopped by the harness after at most 2 steps) or exits 2 with
one error line naming a fuzzed flag, never a traceback, and never changes an
existing file in ``--model_dir``. The report names the shrunk failing example.

``make test`` runs 2,000 examples in all: 800 of ``launch.train`` (each that
gets past its flags costs up to a second: data, strategy, model, optimizer,
checkpoint restore), 1,200 of ``launch.local_cluster`` (milliseconds) and 300
each of ``launch.vertex`` and ``launch.kubernetes`` (milliseconds; those
with ``--rehearse`` start the drawn command as processes). Of
the ``launch.train`` runs that reach training, the first FUZZ_FULL_RUNS=8
take their 2 steps and later ones stop when training begins, everything
built. ``make fuzz`` runs FUZZ_EXAMPLES (20,000) of each, every run that
reaches training taking its steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_LONG = os.environ.get("FUZZ_EXAMPLES")
EXAMPLES = {"train": int(_LONG or 800), "local_cluster": int(_LONG or 1200), "vertex": int(_LONG or 300),
            "kubernetes": int(_LONG or 300)}
FULL_RUNS = int(os.environ.get("FUZZ_FULL_RUNS", "8"))
assert sum(EXAMPLES.values()) >= 2000


def _fuzz(program: str, root: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.launch._fuzz_flags", program, str(root), str(EXAMPLES[program]),
         str(FULL_RUNS)],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=max(1800, 2 * EXAMPLES[program]),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.parametrize(("program", "must_cover"), [
    ("train", {"seed", "learning_rate", "weight_decay", "data_dir", "model_dir", "strategy", "worker_hosts"}),
    ("local_cluster", {"workers", "ps", "chief", "timeout"}),
    ("vertex", {"workers", "ps", "chief", "evaluator", "image", "machine_type", "accelerator", "execute",
                "rehearse", "package_uri", "region"}),
    ("kubernetes", {"workers", "ps", "chief", "evaluator", "image", "kind", "namespace", "execute", "rehearse"}),
])  # fmt: skip
def test_every_example_trains_or_exits_2_in_one_line(tmp_path, program, must_cover):
    report = _fuzz(program, tmp_path)
    assert report.get("error") is None, report
    assert must_cover <= set(report["flags"]), f"flags not found in the registry: {must_cover - set(report['flags'])}"
    assert report["failure"] is None, json.dumps(report["failure"], ensure_ascii=False)[:5000]
    assert report["examples"] >= EXAMPLES[program], report["outcomes"]
    # Both sides of the property were exercised, not just one.
    assert report["outcomes"].get("2", 0) > 0, report["outcomes"]
    ran = sum(n for code, n in report["outcomes"].items() if code != "2")
    assert ran > 0, report["outcomes"]
    print(f"\n{program}: {report['examples']} examples ({report['distinct']} distinct) in "
          f"{report['seconds']:.0f} s: {report['outcomes']}")
