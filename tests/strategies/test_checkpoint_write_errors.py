"""A failed write (a real EFBIG from RLIMIT_FSIZE) ends in one line and keeps the previous files.

Each run is a subprocess (``_write_error_program.py``) with a file-size limit
that lets every file before the one under test through: the checkpoint of a
later epoch, ``model.keras`` after the last checkpoint, ``summary.json``. The
run exits with one line naming the path and "File too large", no traceback;
nothing half-written is left; the previous checkpoint stays the newest and a
restart resumes from it.

The two runs that write first start from one finished 1-epoch run (trained
once per module, copied into each test's directory): the checkpoint manager
records its checkpoints by relative path, so the copy is that run as it
would be left in any directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

REPO = Path(__file__).resolve().parents[2]
PROGRAM = Path(__file__).with_name("_write_error_program.py")


def _run(model_dir: Path, epochs: int, limit: int = 0, when: str = "start") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROGRAM), str(model_dir), str(epochs), str(limit), when],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("_write_error_program: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if "_temp" in p.name or ".tmp" in p.name)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    """A finished 1-epoch run: ckpt-2, model.keras, summary.json."""
    run = tmp_path_factory.mktemp("one_epoch") / "run"
    first = _run(run, epochs=1)
    assert first.returncode == 0, first.stderr[-2000:]
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_resumes(one_epoch, tmp_path):
    run = _copy(one_epoch, tmp_path)
    data_file = next((run / "checkpoints").glob("ckpt-2.data-*"))
    model_before = (run / "model.keras").read_bytes()
    # Half the checkpoint's size: the logs and the restore still work, ckpt-4 cannot be written.
    failed = _run(run, epochs=2, limit=data_file.stat().st_size // 2)
    line = _one_error_line(failed)
    assert f"could not write {run / 'checkpoints' / 'ckpt-4'}: File too large" in line, line
    assert f"the previous one, {run / 'checkpoints' / 'ckpt-2'}, is intact" in line, line
    assert _leftovers(run) == []
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-2")
    assert (run / "model.keras").read_bytes() == model_before
    resumed = _run(run, epochs=2)
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming from {run / 'checkpoints' / 'ckpt-2'} at epoch 2, step 0." in resumed.stdout
    assert "steps 4" in resumed.stdout


def test_a_failed_model_keras_write_keeps_the_previous_model(one_epoch, tmp_path):
    run = _copy(one_epoch, tmp_path)
    model_before = (run / "model.keras").read_bytes()
    failed = _run(run, epochs=2, limit=len(model_before) // 2, when="train_end")
    line = _one_error_line(failed)
    assert line.endswith(f"could not write {run / 'model.keras'}: File too large; "
                         "the previous file is unchanged."), line
    assert _leftovers(run) == []
    assert (run / "model.keras").read_bytes() == model_before
    # The last checkpoint was written before the limit: a restart has nothing left to train.
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-4")


@pytest.mark.parametrize("writer", ["strategies", "launch"])
def test_a_failed_summary_write_keeps_the_previous_summary(tmp_path, writer):
    path = tmp_path / "summary.json"
    path.write_text('{"before": 1}')
    call = ("from strategies.training import _run_directory as m; m.write_atomically(p, b'x' * 4096)"
            if writer == "strategies" else
            "from launch import _outputs as m; m.write_summary(d, {'after': 'x' * 4096})")
    code = (f"import sys; sys.path.insert(0, {str(PROGRAM.parent)!r}); import _write_error_program as w; "
            f"import strategies; p, d = {str(path)!r}, {str(tmp_path)!r}; w.limit_file_size(1024)\n"
            f"try:\n    {call}\nexcept strategies.CheckpointWriteError as e:\n    print(e); sys.exit(2)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    assert result.stdout.strip() == (f"could not write {path}: File too large; "
                                     "the previous file is unchanged."), result.stdout
    assert json.loads(path.read_text()) == {"before": 1}
    assert _leftovers(tmp_path) == []
