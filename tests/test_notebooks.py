"""Every notebook in notebooks/ runs headless, top to bottom, in a fresh kernel of this Python.

See tests/notebook_runner.py for the kernel set-up; `nox -s colab` runs the
quickstart the same way in a fresh venv that holds only the installed wheel.
"""

from __future__ import annotations

import glob
import os
import re

import nbformat
import pytest

from tests import notebook_runner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")
NOTEBOOKS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
# Private modules (a leading underscore after a package name) are not for users.
_PRIVATE_IMPORT = re.compile(r"^\s*(from|import)\s+(tfopt|strategies|launch)(\.\w+)*\._", re.M)


def test_the_three_notebooks_exist() -> None:
    assert NOTEBOOKS == ["01_quickstart.ipynb", "02_optimizer_comparison.ipynb", "03_distributed.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_clean_with_badge_and_public_api(name: str) -> None:
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), "outputs not stripped"
    assert "colab.research.google.com/github/" in nb.cells[0].source and name in nb.cells[0].source
    assert not _PRIVATE_IMPORT.search("\n".join(c.source for c in code))
    # Colab-only work (pip install) sits behind the IN_COLAB guard.
    install = [c.source for c in code if "pip" in c.source]
    assert install and all("if IN_COLAB:" in s for s in install)


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory):
    from launch import _data

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    _data.prepare("digits", data_dir)  # Prepared once for all three kernels.
    # The checkout is importable in the kernel (and in the processes its
    # cells start) whether or not it is pip-installed.
    pythonpath = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
    with notebook_runner.kernel_environment(TFDS_DATA_DIR=data_dir, PYTHONPATH=pythonpath):
        yield


@pytest.mark.notebook
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name: str, kernel_env, tmp_path) -> None:
    # Run where a user would, but leave nothing behind in the checkout.
    assert notebook_runner.run(os.path.join(NOTEBOOK_DIR, name), str(tmp_path)) == []
