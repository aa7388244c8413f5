"""Runs a notebook headless, top to bottom, in a fresh kernel of *this* Python (nbclient).

The kernel is ``sys.executable``: a kernelspec pointing at it is installed into a
temporary prefix that ``JUPYTER_PATH`` puts first, so no ``jupyter kernelspec
install`` is needed and a user's own ``python3`` kernel cannot shadow it.

Used by tests/test_notebooks.py (the checkout's venv) and by ``nox -s colab``
(a fresh venv holding only the wheel that the notebook's own install cell put there):

    python tests/notebook_runner.py notebooks/01_quickstart.ipynb
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

KERNEL = "tfopt-strategies-tests"


@contextlib.contextmanager
def kernel_environment(**env: str) -> Iterator[None]:
    """Installs the kernelspec in a temporary prefix and sets ``env`` for the kernel, then undoes both."""
    from ipykernel.kernelspec import install

    with tempfile.TemporaryDirectory() as prefix:
        install(kernel_name=KERNEL, display_name=KERNEL, prefix=prefix)
        env = {"JUPYTER_PATH": os.path.join(prefix, "share", "jupyter"), "TF_CPP_MIN_LOG_LEVEL": "2",
               "MPLBACKEND": "Agg", **env}  # fmt: skip
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def run(path: str, workdir: str, timeout: int = 300) -> list[str]:
    """Executes the notebook in ``workdir``; returns its error outputs ("ename: evalue"), empty if none."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=timeout, resources={"metadata": {"path": workdir}})
    client.execute()
    return [f"{o.ename}: {o.evalue}" for c in nb.cells if c.cell_type == "code"
            for o in c.outputs if o.output_type == "error"]  # fmt: skip


def main(argv: list[str]) -> int:
    (path,) = argv[1:]
    with tempfile.TemporaryDirectory() as workdir, kernel_environment(TFDS_DATA_DIR=os.path.join(workdir, "tfds")):
        errors = run(os.path.abspath(path), workdir)
    print(f"{os.path.basename(path)}: {'ran without errors' if not errors else errors}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
