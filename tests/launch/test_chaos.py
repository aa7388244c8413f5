"""launch.chaos, short: SIGKILLs under local_cluster --max_restarts lose nothing.

A 2-worker MultiWorkerMirrored job of 20 steps gets 2 seeded SIGKILLs, one
inside a checkpoint write (between the data files and the commit); it must
end by itself with exactly 20 optimizer steps and weights and optimizer
state bit-identical to an uninterrupted reference run (``launch.chaos``
checks both, and exits 1 otherwise). A parameter-server job gets worker
kills and must end with exactly its 20 steps (its eval accuracy is reported beside
an uninterrupted PS run's). The same PS job loses its ps task, or its chief, in
`test_parameter_server_job_survives_losing_its`. The full soak (300 steps, 5
kills) is ``python -m launch.chaos``; its table is in docs/reliability.md.

The three soaks of the PS job share one work directory, so that its
uninterrupted reference run (4 processes, there only for the accuracy beside
the soak's) runs once, not three times: ``--reuse_reference`` reuses it when
the job's flags are the same, as they are here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    """One --work_dir for the module's soaks (each clears its own chaos runs; see --reuse_reference)."""
    return tmp_path_factory.mktemp("chaos")


def test_short_chaos_soak_loses_nothing(work_dir, digits_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "launch.chaos", "--epochs=2", "--steps_per_epoch=10",
         "--save_every_steps=5", "--kills=2", "--chaos_seed=3", f"--work_dir={work_dir}", "--reuse_reference",
         f"--digits_dir={digits_dir}", "--timeout=300"],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-5000:]
    mwms, ps = out.split("ps: 20 planned steps")
    assert "mwms: 20 planned steps" in mwms and "SIGKILL inside a checkpoint write" in mwms
    # Checkpoints every 5 steps fall on the epoch's last step (10); one kill lands right after it.
    assert "SIGKILL after an epoch's last step" in mwms
    totals = mwms.strip().splitlines()[-2]  # | kills | restarts | redone | lost | final steps | max dw |
    cells = [c.strip() for c in totals.strip("|").split("|")]
    assert cells[0] == "2" and int(cells[1]) >= 2, totals  # Both kills landed; each restarted the job.
    assert cells[4] == "20" and cells[5] == "0", totals
    assert "result: OK" in mwms and "result: OK" in ps
    assert "| 20 | n/a (asynchronous); eval accuracy " in ps


@pytest.mark.parametrize("target", ["ps", "chief"])
def test_parameter_server_job_survives_losing_its(target, work_dir, digits_dir):
    """A PS job under --max_restarts loses its ps task (or its chief) at a step: every task restarts,
    resumes from the newest checkpoint and ends with exactly its 20 steps; its eval accuracy is
    reported beside an uninterrupted PS run's (the fault table in docs/reliability.md)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "launch.chaos", f"--kill={target}", "--epochs=2", "--steps_per_epoch=10",
         "--save_every_steps=5", "--kills=1", "--chaos_seed=3", f"--work_dir={work_dir}", "--reuse_reference",
         f"--digits_dir={digits_dir}", "--timeout=400"],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=1200)  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-5000:]
    assert "mwms:" not in out and "ps: 20 planned steps" in out
    row = next(line for line in out.splitlines() if line.startswith("| 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]  # kill, step, task, how, resumed from, redone
    assert cells[2] == f"{target} 0" and cells[1] != "-", row
    assert int(cells[5]) == int(cells[1]) - int(cells[4]) >= 0, row  # Steps redone since the checkpoint.
    totals = out.strip().splitlines()[-2]
    cells = [c.strip() for c in totals.strip("|").split("|")]
    assert cells[0] == "1" and int(cells[1]) >= 1 and cells[4] == "20", totals
    assert "eval accuracy" in cells[5] and "uninterrupted" in cells[5], totals
    assert "result: OK" in out
