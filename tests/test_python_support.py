"""Python support is written once (setup.cfg's classifiers) and every other place agrees with it.

Also pins the Makefile's interpreter choice and its one-line refusal, and the
notebooks' Colab links and install cells, which come from setup.cfg's ``url``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from packaging.specifiers import SpecifierSet

import noxfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPPORTED = noxfile.supported_pythons()


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "--no-print-directory", "-C", ROOT, *args],
                          capture_output=True, text=True, check=False, timeout=60)  # fmt: skip


def _setup_cfg() -> str:
    with open(os.path.join(ROOT, "setup.cfg"), encoding="utf-8") as f:
        return f.read()


def test_supported_pythons_are_3_11_to_3_13() -> None:
    # Keras 3.15 requires Python >= 3.11; TensorFlow 2.21 ships wheels up to 3.13.
    assert SUPPORTED == ["3.11", "3.12", "3.13"]


def test_python_requires_admits_exactly_the_supported_versions() -> None:
    spec = SpecifierSet(re.search(r"^python_requires\s*=\s*(.+)$", _setup_cfg(), re.M).group(1))
    admitted = [f"3.{minor}" for minor in range(6, 20) if f"3.{minor}.0" in spec]
    assert admitted == SUPPORTED


def test_makefile_lists_the_same_versions() -> None:
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
        listed = re.search(r"^SUPPORTED_PYTHONS\s*:=\s*(.+)$", f.read(), re.M).group(1).split()
    assert listed == SUPPORTED


def test_running_interpreter_is_supported() -> None:
    assert f"{sys.version_info[0]}.{sys.version_info[1]}" in SUPPORTED


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_picks_a_supported_interpreter_that_runs() -> None:
    result = _make("python")
    assert result.returncode == 0, result.stderr
    chosen = result.stdout.strip()
    version = subprocess.run([chosen, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert version == SUPPORTED[0] if noxfile.find_python(SUPPORTED[0]) else version in SUPPORTED


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("python", ["python-that-does-not-exist", "3.10"])
def test_make_refuses_a_missing_or_unsupported_python_in_one_line(python: str) -> None:
    if python == "3.10":
        python = noxfile.find_python("3.10")
        if python is None:
            pytest.skip("no Python 3.10 on this machine to be refused")
    result = _make("python", f"PYTHON={python}")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"need one of Python {' '.join(SUPPORTED)}" in result.stderr and python in result.stderr


# --- The notebooks' repository: one setting, setup.cfg's url ------------------------------------

NOTEBOOKS = sorted(os.listdir(os.path.join(ROOT, "notebooks")))


@pytest.mark.parametrize("name", [n for n in NOTEBOOKS if n.endswith(".ipynb")])
def test_notebook_badge_and_install_cell_follow_setup_cfg(name: str) -> None:
    repo = noxfile.repo()
    path = os.path.join(ROOT, "notebooks", name)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    badge = f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{name}"
    assert badge in json.load(open(path, encoding="utf-8"))["cells"][0]["source"][2]
    assert noxfile.install_cell(path)[-1] == f"git+https://github.com/{repo}"
    # No other repository is named anywhere in the notebook.
    assert set(re.findall(r"github(?:\.com)?/([\w.-]+/[\w.-]+?)(?:/blob|\"|\.git\b)", text)) == {repo}


def test_set_repo_rewrites_setup_cfg_and_every_notebook(tmp_path) -> None:
    shutil.copy(os.path.join(ROOT, "setup.cfg"), tmp_path / "setup.cfg")
    shutil.copytree(os.path.join(ROOT, "notebooks"), tmp_path / "notebooks")
    old = noxfile.repo()
    changed = noxfile.rewrite_repo(str(tmp_path), old, "someone/fork")
    assert changed[0] == "setup.cfg" and len(changed) == 1 + len(NOTEBOOKS)
    assert noxfile.repo(str(tmp_path / "setup.cfg")) == "someone/fork"
    for name in NOTEBOOKS:
        path = str(tmp_path / "notebooks" / name)
        assert noxfile.install_cell(path)[-1] == "git+https://github.com/someone/fork"
        assert f"github.com/{old}" not in open(path, encoding="utf-8").read()
