"""``python -m launch.train`` under a real file-size limit: one error line, the previous checkpoint kept.

The run resumes a 1-epoch run with ``--epochs=2`` under ``RLIMIT_FSIZE`` (half
the checkpoint's data file, ``SIGXFSZ`` ignored), so saving epoch 2's
checkpoint fails with EFBIG. The finer cases (``model.keras``,
``summary.json``) are tests/strategies/test_checkpoint_write_errors.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tensorflow as tf

REPO = Path(__file__).resolve().parents[2]
_LIMITED = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "limit = int(sys.argv.pop(1)); limit and resource.setrlimit(resource.RLIMIT_FSIZE, "
            "(limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
            "sys.argv[0] = 'launch.train'; runpy.run_module('launch.train', run_name='__main__')")


def _train(limit: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _LIMITED, str(limit), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_a_failed_checkpoint_write_is_one_line_and_the_run_resumes(digits_dir, tmp_path):
    run = tmp_path / "run"
    common = ["--model=mlp", "--batch_size=256", f"--data_dir={digits_dir}", f"--model_dir={run}"]
    first = _train(0, *common, "--epochs=1")
    assert first.returncode == 0, first.stderr[-2000:]
    before = tf.train.latest_checkpoint(str(run / "checkpoints"))
    data_file = Path(f"{before}.data-00000-of-00001")
    failed = _train(data_file.stat().st_size // 2, *common, "--epochs=2")
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("launch.train: error:")]
    assert len(errors) == 1, failed.stderr[-2000:]
    assert f"could not write {run / 'checkpoints' / 'ckpt-12'}: File too large;" in errors[0], errors[0]
    assert f"the previous one, {before}, is intact" in errors[0], errors[0]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith("_temp")]
    assert tf.train.latest_checkpoint(str(run / "checkpoints")) == before
    resumed = _train(0, *common, "--epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming from {before} at epoch 2, step 0." in resumed.stdout + resumed.stderr
    print(errors[0])  # The exact line, for the record (pytest -s).
