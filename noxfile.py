"""The Python matrix (nox): the fast suite on each supported interpreter, and the Colab install path.

    nox -s fast                 # the fast suite on every supported Python present
    nox -s fast-3.13            # one of them
    nox -s colab                # Colab's install cell + 01_quickstart.ipynb on the newest Python
    nox -s fast_tf_min          # the fast suite on the newest Python with the oldest TensorFlow (2.20)
    nox -s set_repo -- you/fork # point the notebooks' Colab badges and install cells at a fork
    nox -s backend-jax          # tests/tfopt with KERAS_BACKEND=jax, in the running interpreter
    nox -s backend-torch        # tests/tfopt with KERAS_BACKEND=torch, in the running interpreter

`make test` runs the full suite on its default interpreter (the lowest
supported Python, with the newest TensorFlow), then the opposite corners:
`nox -s fast_tf_min` (the newest Python, the oldest TensorFlow) and
`nox -s colab` (the newest Python, the newest TensorFlow, through Colab's
install cell), then `nox -s backend-jax backend-torch` (tfopt's tests on
the other Keras backends, in make's .venv). `make test-matrix` adds the fast
suite on every supported Python. The supported Pythons are read from setup.cfg's classifiers and the
TensorFlow range from its install_requires, the one place each is written
(tests pin python_requires, the Makefile, the docs and launch.tpu_vm to them).

A supported interpreter that is missing is skipped by nox, and nox prints it
as skipped, never as a success; `make test` prints the sessions at the end.
"""

from __future__ import annotations

import configparser
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import nox

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ROOT)  # launch._requirements: setup.cfg's requirements, parsed once.
from launch import _requirements  # noqa: E402

SETUP_CFG = os.path.join(ROOT, "setup.cfg")
NOTEBOOKS = os.path.join(ROOT, "notebooks")
FAST = ["-m", "not cluster and not notebook and not slow"]
# The launcher tests whose subject does not depend on the TensorFlow version:
# flag and input validation, printed install commands and engine specs,
# benchmark entry points, console formatting, and device_check's harness (its
# fast tests check time boxes, injected faults, SIGTERM and the report, around
# checks that fail, hang or never start; the --quick profile, which measures
# TensorFlow itself, is slow-marked and so not in the fast suite anyway).
# `fast_tf_min` leaves them to the full suite (on the newest TensorFlow); every
# other test, and every new test module, runs on the oldest TensorFlow too.
#
# What stays is what the TensorFlow version can change: tfopt's native and
# fused kernels (compiled against the installed TensorFlow's headers), its
# XLA and tf.function paths and the TensorFlow ops in Shampoo, SOAP and the
# sparse and trust-ratio updates; everything in strategies (tf.distribute, and
# the version-gated workarounds of strategies/compat/_keras_compat.py);
# checkpoints and model files (the formats, the old-checkpoint fixtures, the
# write-error and resume paths); TFDS data; launch.train and launch.tpu_vm
# (the TPU build stops at 2.20). tfopt's pure registry and docstring tests are
# cheap and stay too, rather than start a second list.
TF_VERSION_FREE = [os.path.join("tests", "launch", f"test_{name}.py") for name in (
    "bad_inputs", "fuzz_inputs", "bench_convergence", "bench_fit", "bench_optimizers",
    "bench_shampoo", "cluster_job", "console", "device_check", "entry_points", "install_resolution",
    "kubernetes", "vertex")]

nox.options.sessions = ["fast", "colab", "fast_tf_min"]
nox.options.default_venv_backend = "venv"


def _metadata(setup_cfg: str = SETUP_CFG) -> configparser.SectionProxy:
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    return parser["metadata"]


def supported_pythons() -> list[str]:
    """["3.11", "3.12", "3.13"]: the `Programming Language :: Python :: 3.X` classifiers."""
    return re.findall(r"Programming Language :: Python :: (3\.\d+)\s*$", _metadata()["classifiers"], re.M)


def find_python(version: str) -> str | None:
    """A working ``pythonX.Y``: on PATH, else in pyenv's versions directory.

    pyenv puts a shim for every installed version on PATH, and a shim for a
    version that is not selected exists but fails, so each candidate is run.
    """
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}")))
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.executable)"],
                               capture_output=True, text=True, check=False)  # fmt: skip
        if probe.returncode == 0:
            return probe.stdout.strip()
    return None


PYTHONS = supported_pythons()
if __name__ == "user_nox_module":  # Loaded by nox, not imported by a test.
    # nox finds "3.13" as python3.13 on PATH: put each present interpreter's
    # real directory first, so that a failing pyenv shim does not hide it.
    _found = [find_python(v) for v in PYTHONS]
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(p) for p in _found if p] + [os.environ["PATH"]])


@nox.session(python=PYTHONS)
def fast(session: nox.Session) -> None:
    """`pip install .[test]` (not editable: what a user gets) and the fast suite."""
    session.install(f"{ROOT}[test]")
    # The tests import the checkout's sources (pytest puts the rootdir first on
    # sys.path); what the installed wheel itself runs is `colab`'s job.
    session.run("python", "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", *FAST,
                *session.posargs, os.path.join(ROOT, "tests"))  # fmt: skip


def tensorflow_min_pins() -> list[str]:
    """``["tensorflow==2.20.*", "tensorboard==2.20.*"]``: the oldest TF setup.cfg admits, and its TensorBoard."""
    oldest = _requirements.tensorflow_minors()[0]
    return [f"{name}=={oldest}.*" for name in _requirements.TENSORFLOW_PACKAGES]


@nox.session(python=PYTHONS[-1])
def fast_tf_min(session: nox.Session) -> None:
    """The fast suite on the newest Python with the oldest TensorFlow (and its TensorBoard) of setup.cfg's range.

    The opposite corner from `make test`'s full suite (the lowest Python, the
    newest TensorFlow), so that one session covers both ends it leaves out.

    The launcher tests in ``TF_VERSION_FREE`` (what they check does not touch
    TensorFlow) are left to the full suite; every other fast test runs here,
    ``launch.train`` and ``launch.tpu_vm`` included (the TPU build is 2.20).

    One resolve of ``.[test]`` with the pins added, so pip picks the Keras and
    the rest that setup.cfg allows together with that TensorFlow; the
    session fails if the range and the pins do not meet.
    """
    pins = tensorflow_min_pins()
    session.install(f"{ROOT}[test]", *pins)
    session.run("python", "-c", "import importlib.metadata as m, sys; "
                f"pins = {pins!r}; "
                "got = {p.split('==')[0]: m.version(p.split('==')[0]) for p in pins}; "
                "print('fast_tf_min:', got, 'keras', m.version('keras')); "
                "sys.exit(any(not got[p.split('==')[0]].startswith(p.split('==')[1][:-1]) for p in pins))")
    ignore = [f"--ignore={os.path.join(ROOT, path)}" for path in TF_VERSION_FREE]
    session.run("python", "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", *FAST, *ignore,
                *session.posargs, os.path.join(ROOT, "tests"))  # fmt: skip


def install_cell_source(notebook: str) -> str:
    """The source of the notebook's Colab install cell (the first code cell that runs pip)."""
    with open(notebook, encoding="utf-8") as f:
        cells = json.load(f)["cells"]
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "pip" in source and "subprocess.run(" in source:
            return source
    raise ValueError(f"{notebook} has no install cell")


def install_cell(notebook: str) -> list[str]:
    """The argv of the notebook's Colab install cell on a CPU or GPU runtime (its first `pip install ... <source>`)."""
    match = re.search(r"subprocess\.run\(\s*(\[.*?\])\s*,", install_cell_source(notebook), re.S)
    if not match:
        raise ValueError(f"{notebook}'s install cell has no subprocess.run([...], ...)")
    argv = eval(match.group(1), {"sys": sys})  # Our own notebook's literal list.
    return [str(a) for a in argv]


@nox.session(python=PYTHONS[-1])
def colab(session: nox.Session) -> None:
    """Colab's path on its Python: the notebook's own install command against a wheel of this checkout."""
    wheel_dir = session.create_tmp()
    session.run("python", "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheel_dir, ROOT)
    (wheel,) = glob.glob(os.path.join(wheel_dir, "*.whl"))
    argv = install_cell(os.path.join(NOTEBOOKS, "01_quickstart.ipynb"))
    if argv[:4] != [sys.executable, "-m", "pip", "install"] or not argv[-1].startswith("git+https://github.com/"):
        session.error(f"unexpected install cell {argv}: update noxfile.colab with the notebook")
    # The same command, the interpreter and source swapped for the venv's and the local wheel.
    session.run("python", *argv[1:-1], wheel)
    session.install("nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6.29")
    # From outside the checkout, the packages are the wheel's, not the sources'.
    session.chdir(session.create_tmp())
    session.run("python", "-c", "import sys, tfopt, strategies, launch; "
                "assert all(m.__file__.startswith(sys.prefix) for m in (tfopt, strategies, launch))")
    session.run("python", os.path.join(ROOT, "tests", "notebook_runner.py"),
                os.path.join(NOTEBOOKS, "01_quickstart.ipynb"), env={"PYTHONPATH": ""})  # fmt: skip


def _backend_session(session: nox.Session, backend: str) -> None:
    """``tests/tfopt`` under ``KERAS_BACKEND=backend``, in nox's own interpreter (no new venv).

    Run from ``.venv`` (``make test`` does), which holds the ``backends``
    extra. TensorFlow-only tests skip with a reason (tests/conftest.py).
    """
    session.run(sys.executable, "-c", f"import {backend}, keras, sys; "
                f"print('{backend}', {backend}.__version__, 'keras', keras.__version__)",
                env={"KERAS_BACKEND": backend}, external=True)  # fmt: skip
    session.run(sys.executable, "-m", "pytest", "-q", "-n", "2", "-p", "no:cacheprovider", *FAST,
                *session.posargs, os.path.join(ROOT, "tests", "tfopt"),
                env={"KERAS_BACKEND": backend}, external=True)  # fmt: skip


@nox.session(venv_backend="none", name="backend-jax")
def backend_jax(session: nox.Session) -> None:
    """The tfopt tests on the JAX backend."""
    _backend_session(session, "jax")


@nox.session(venv_backend="none", name="backend-torch")
def backend_torch(session: nox.Session) -> None:
    """The tfopt tests on the PyTorch backend."""
    _backend_session(session, "torch")


@nox.session(python=False, name="set_repo")
def set_repo(session: nox.Session) -> None:
    """Point setup.cfg's url, the Colab badges and the install cells at ``owner/name``."""
    if len(session.posargs) != 1 or not re.fullmatch(r"[\w.-]+/[\w.-]+", session.posargs[0]):
        session.error(f"usage: make set-repo REPO=owner/name. Received: {session.posargs}")
    old = repo()
    changed = rewrite_repo(ROOT, old, session.posargs[0])
    session.log(f"repo: {old} -> {session.posargs[0]} in {', '.join(changed)}")


def rewrite_repo(root: str, old: str, new: str) -> list[str]:
    """Replaces ``github.com/<old>`` with ``github.com/<new>`` in setup.cfg and every notebook."""
    paths = [os.path.join(root, "setup.cfg")] + sorted(glob.glob(os.path.join(root, "notebooks", "*.ipynb")))
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(f"github.com/{old}", f"github.com/{new}"))
    return [os.path.relpath(p, root) for p in paths]


def repo(setup_cfg: str = SETUP_CFG) -> str:
    """``owner/name`` from setup.cfg's ``url``: the one place the GitHub repository is written."""
    url = _metadata(setup_cfg)["url"].strip()
    match = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)/?", url)
    if not match:
        raise ValueError(f"setup.cfg url must be https://github.com/owner/name. Received: url={url!r}.")
    return match.group(1)
