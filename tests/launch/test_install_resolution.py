"""Every install command the project prints resolves, on the index, in a fresh venv of its Python.

What is resolved, each with ``pip install --dry-run --ignore-installed`` in a
new ``python -m venv`` of the interpreter the command targets:

* `launch.tpu_vm`'s install step, parsed from the printed script, on its
  default ``--python`` (3.11; 3.13 is covered by the Colab cell, which installs
  the same requirement set);
* setup.cfg's ``gpu`` extra (with install_requires) on the default Python;
* setup.cfg's ``cloud`` extra (with install_requires) beside each TensorFlow
  minor of the range, on the default Python;
* the Colab quickstart's install cell as it runs on a TPU runtime (the cell is
  executed with `subprocess.run` captured), on Colab's Python, 3.13.

Google's libtpu index (``-f https://storage.googleapis.com/libtpu-tf-releases/``)
cannot be reached from CI, so it is dropped from the commands: they resolve
from PyPI alone, which holds tensorflow-tpu and libtpu too. This machine's own
pip settings (a local wheel folder, extra file indexes, a constraints file) are
ignored too, so that only what a user's pip can reach counts.

Each venv is made once per session and its pip upgraded first, as the TPU VM
install step does (the pip an interpreter bundles, 23.2 for 3.11.7, would
download every wheel whole). Wheels' metadata is read with HTTP range requests
(``--use-feature=fast-deps``): a full download of tensorflow-tpu alone is
263 MB, and the resolution is the same.

A requirement that no reachable index holds fails the test (a deliberately bad
pin shows it). The resolution needs PyPI; offline, these tests fail rather than
pass.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import types

import pytest

import noxfile
from launch import _requirements, tpu_vm

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLAB_PYTHON = noxfile.supported_pythons()[-1]  # Colab runs 3.13 since 2026-08-25.
QUICKSTART = os.path.join(ROOT, "notebooks", "01_quickstart.ipynb")
# This machine's pip settings that name sources a user does not have.
_LOCAL_PIP_SETTINGS = ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_CONSTRAINT",
                       "PIP_NO_INDEX", "PIP_CONFIG_FILE", "PIP_REQUIRE_VIRTUALENV")


class ResolutionError(AssertionError):
    """pip found no set of distributions that satisfies the requirements."""

    def __init__(self, message: str, pip_output: str) -> None:
        super().__init__(message)
        self.pip_output = pip_output


def _interpreter(version: str) -> str:
    python = noxfile.find_python(version)
    if python is None:
        pytest.fail(f"no Python {version} on this machine to resolve for (pyenv install {version})")
    return python


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory):
    """``fresh_venv("3.11")``: the python of a new venv of that version, made once per session."""
    made: dict[str, str] = {}

    def make(version: str) -> str:
        if version not in made:
            where = str(tmp_path_factory.mktemp(f"venv-{version}"))
            subprocess.run([_interpreter(version), "-m", "venv", where], check=True, capture_output=True,
                           timeout=300)
            python = os.path.join(where, "bin", "python")
            subprocess.run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True,
                           env=_pip_env(), capture_output=True, timeout=300)
            made[version] = python
        return made[version]

    return make


def _pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LOCAL_PIP_SETTINGS}
    env["PIP_CONFIG_FILE"] = os.devnull  # No pip.conf: no local wheels, file indexes or constraints.
    return env


def _without_libtpu_index(args: list[str]) -> list[str]:
    """``args`` less ``-f LIBTPU_INDEX``: Google's index is out of CI's reach (PyPI holds the wheels)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            if arg != _requirements.LIBTPU_INDEX:
                raise AssertionError(f"unexpected -f {arg}: only the libtpu index may be dropped")
            continue
        if arg in ("-f", "--find-links"):
            skip = True
            continue
        out.append(arg)
    return out


def resolve(python: str, requirements: list[str]) -> dict[str, str]:
    """``{name: version}`` that pip would install for ``requirements`` into the venv of ``python``.

    Raises:
        ResolutionError: pip found no solution; the message is pip's own last lines.
    """
    cmd = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--disable-pip-version-check", "--use-feature=fast-deps", "--report", "-", *requirements]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_pip_env(), timeout=600, check=False)
    if result.returncode:
        tail = "\n".join(result.stderr.strip().splitlines()[-6:])
        raise ResolutionError(f"pip could not resolve {requirements} for {python}:\n{tail}", result.stderr)
    report = json.loads(result.stdout)
    return {_canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # tensorflow_tpu -> tensorflow-tpu


def _tpu_vm_install_requirements(python: str) -> list[str]:
    """The requirements of the printed install step's ``pip install ... -f LIBTPU_INDEX`` command."""
    (install,) = tpu_vm.commands(name="t", zone="z", steps=["install"], python=python)
    script = install[-1].removeprefix("--command=")
    (line,) = [c for c in script.split("; ") if f"-f {tpu_vm.LIBTPU_INDEX}" in c]
    argv = shlex.split(line)
    assert argv[1:4] == ["-m", "pip", "install"], argv
    return _without_libtpu_index(argv[4:])


def colab_tpu_install_commands() -> list[list[str]]:
    """The pip argvs the quickstart's install cell runs on a Colab TPU runtime (captured, not run)."""
    source = noxfile.install_cell_source(QUICKSTART)
    ran: list[list[str]] = []

    def fake_run(argv, **kwargs):
        ran.append([str(a) for a in argv])
        return subprocess.CompletedProcess(argv, 0)

    fake_subprocess = types.SimpleNamespace(run=fake_run)
    fake_glob = types.SimpleNamespace(glob=lambda pattern: ["/dev/vfio/0"] if "vfio" in pattern else [])
    saved = {name: sys.modules.get(name) for name in ("google.colab", "subprocess", "glob")}
    sys.modules.update({"google.colab": types.ModuleType("google.colab"),
                        "subprocess": fake_subprocess, "glob": fake_glob})
    try:
        exec(compile(source, QUICKSTART, "exec"), {"__name__": "colab_cell"})  # noqa: S102 - our own notebook.
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return ran


def test_tpu_vm_install_step_resolves(fresh_venv) -> None:
    python = tpu_vm.DEFAULT_PYTHON
    requirements = _tpu_vm_install_requirements(python)
    resolved = resolve(fresh_venv(python), requirements)
    assert resolved["tensorflow-tpu"].startswith("2.20.")
    assert resolved["tensorboard"].startswith("2.20.")
    assert "libtpu" in resolved  # From PyPI: Google's index was left out.
    assert "tensorflow" not in resolved  # The CPU build would shadow tensorflow-tpu.


def test_gpu_extra_resolves(fresh_venv) -> None:
    requirements = _requirements.install_requires() + _requirements.extra("gpu")
    resolved = resolve(fresh_venv(tpu_vm.DEFAULT_PYTHON), requirements)
    assert resolved["tensorflow"].rsplit(".", 1)[0] in _requirements.tensorflow_minors()
    assert any(name.startswith("nvidia-") for name in resolved)  # [and-cuda] brought CUDA.


@pytest.mark.parametrize("minor", _requirements.tensorflow_minors())
def test_cloud_extra_resolves_beside_each_tensorflow(fresh_venv, minor) -> None:
    # launch.vertex/launch.kubernetes's SDKs share protobuf and grpcio with TensorFlow.
    requirements = _requirements.install_requires() + _requirements.extra("cloud") + [f"tensorflow=={minor}.*"]
    resolved = resolve(fresh_venv(tpu_vm.DEFAULT_PYTHON), requirements)
    assert resolved["tensorflow"].startswith(f"{minor}.")
    assert {"google-cloud-aiplatform", "kubernetes-validate", "kubeflow-training", "protobuf"} <= set(resolved)


def test_colab_tpu_cell_resolves_on_colabs_python(fresh_venv) -> None:
    ran = colab_tpu_install_commands()
    assert [argv[4:] for argv in ran[:1]] == [["-q", "--no-deps", f"git+https://github.com/{noxfile.repo()}"]]
    (requirements_run,) = ran[1:]
    requirements = _without_libtpu_index(requirements_run[4:])
    assert requirements[0] == "-q" and requirements[1:] == tpu_vm.tpu_requirements()
    resolved = resolve(fresh_venv(COLAB_PYTHON), requirements[1:])
    assert resolved["tensorflow-tpu"].startswith("2.20.")
    assert "tensorflow" not in resolved


def test_colab_cpu_and_gpu_runtimes_install_the_project_with_its_dependencies() -> None:
    source = noxfile.install_cell_source(QUICKSTART)
    assert "ON_TPU" in source
    assert noxfile.install_cell(QUICKSTART)[4:] == ["-q", f"git+https://github.com/{noxfile.repo()}"]


def test_a_pin_no_index_holds_fails(fresh_venv) -> None:
    requirements = ["tensorflow-tpu==2.99.*" if r.startswith("tensorflow-tpu") else r
                    for r in _tpu_vm_install_requirements(tpu_vm.DEFAULT_PYTHON)]
    assert "tensorflow-tpu==2.99.*" in requirements  # The bad pin replaced the real one.
    python = fresh_venv(tpu_vm.DEFAULT_PYTHON)
    with pytest.raises(ResolutionError) as error:
        resolve(python, requirements)
    assert "No matching distribution found for tensorflow-tpu==2.99.*" in error.value.pip_output
