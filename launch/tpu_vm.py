r"""Prints (or, with ``--execute``, runs) the gcloud commands for a Cloud TPU VM run.

    python -m launch.tpu_vm --name=my-tpu --zone=us-central2-b --accelerator_type=v4-8
    python -m launch.tpu_vm --name=my-tpu --zone=us-central2-b --execute -- --epochs=30

The steps, each a command you can copy:

1. ``package``: ``git archive`` of this checkout (skipped when ``--source`` is
   already something pip can fetch, such as ``git+https://...``).
2. ``create``: ``gcloud compute tpus tpu-vm create`` on a base Ubuntu runtime.
3. ``copy``: ``gcloud compute tpus tpu-vm scp`` of the archive to every host.
4. ``install``: on every host, a venv with its own Python (``--python``,
   default 3.11), made by ``uv``, which downloads that interpreter: the
   ``tpu-ubuntu2204-base`` image's system Python is 3.10, and Keras 3.15 needs
   3.11 or newer. The script stops with one line if the venv's Python is older.
   Into that venv go setup.cfg's ``tpu`` extra (``tensorflow-tpu==2.20.*``, the
   newest TPU build, and its ``tensorboard``) from Google's libtpu wheel index and
   this project's other requirements, then the project itself with ``--no-deps`` (its
   ``tensorflow`` requirement would otherwise pull the CPU wheel over
   ``tensorflow-tpu``).
5. ``train``: ``~/tfopt-venv/bin/python -m launch.train --strategy=tpu --tpu=local`` on
   ``--worker=all``. On a pod slice every host must run this same command: TF
   forms the TPU system only when all hosts join, and each host feeds its own
   share of every batch. Arguments after ``--`` go to ``launch.train``.
6. ``delete`` (only in ``--steps``): deletes the VM.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence

from absl import flags

from launch import _cloud_flags, _console
from launch import _requirements as _requirements_lib

PROG = "launch.tpu_vm"
STEPS = ("package", "create", "copy", "install", "train", "delete")
LIBTPU_INDEX = _requirements_lib.LIBTPU_INDEX
# setup.cfg's tpu extra: tensorflow-tpu==2.20.*, the newest TPU build (there is no 2.21).
TENSORFLOW_TPU = str(_requirements_lib.requirement("tensorflow-tpu", _requirements_lib.extra("tpu")))
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ARCHIVE = "tfopt-strategies.tar.gz"
# The Pythons this project supports (setup.cfg's classifiers; a test keeps them equal).
SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")
# 3.11: the interpreter the whole suite, cluster tests included, runs on in CI.
DEFAULT_PYTHON = "3.11"
# Every host installs into and trains from this venv, never the image's python3.
VENV = "~/tfopt-venv"

# --name, --project and --execute are shared with launch.vertex and launch.kubernetes.
flags.adopt_module_key_flags(_cloud_flags)
_NAME = _cloud_flags.NAME
_ZONE = flags.DEFINE_string("zone", None, "GCP zone, e.g. us-central2-b.")
_PROJECT = _cloud_flags.PROJECT
_ACCELERATOR = flags.DEFINE_string("accelerator_type", "v4-8", "TPU type, e.g. v4-8, v5litepod-8, v4-32.")
_RUNTIME = flags.DEFINE_string(
    "runtime_version", "tpu-ubuntu2204-base", "TPU VM image; tensorflow-tpu is pip-installed on it."
)
_PYTHON = flags.DEFINE_enum(
    "python", DEFAULT_PYTHON, list(SUPPORTED_PYTHONS),
    "Python for the venv on every host (uv downloads it; the base image's own python3 is 3.10).",
)
_SPOT = flags.DEFINE_bool("spot", False, "Create a Spot (preemptible) TPU VM.")
_SOURCE = flags.DEFINE_string(
    "source", _ROOT, "This project: a local git checkout (archived and copied), or a pip spec such as "
    "git+https://github.com/OWNER/NAME (setup.cfg's url).",
)  # fmt: skip
_STEPS = flags.DEFINE_multi_enum(
    "steps", ["package", "create", "copy", "install", "train"], list(STEPS), "Steps to print or run, in order."
)
_EXECUTE = _cloud_flags.EXECUTE


def tpu_requirements() -> list[str]:
    """What a TPU host installs: this project's install_requires with TensorFlow's packages
    swapped for setup.cfg's ``tpu`` extra (``tensorflow-tpu==2.20.*``, ``tensorboard==2.20.*``).

    The project itself then goes in with ``--no-deps``. Colab's quickstart install cell uses this too.
    """
    return _requirements_lib.tpu_requirements()


def install_script(requirements: Sequence[str], project_spec: str, python: str = DEFAULT_PYTHON) -> str:
    """The shell script every host runs: a venv with its own ``python``, then the packages into it.

    ``uv`` (from PyPI, through the image's pip) downloads the interpreter, so the
    image's system Python does not matter. The venv's Python is checked before
    anything is installed: an older one stops the script with one line.
    """
    if python not in SUPPORTED_PYTHONS:
        raise ValueError(f"`python` must be one of {list(SUPPORTED_PYTHONS)}. Received: python={python!r}.")
    venv_python = f"{VENV}/bin/python"
    # Double quotes keep the printed command readable inside gcloud's single-quoted --command.
    quoted = " ".join('"' + r + '"' for r in requirements)
    return "; ".join([
        "set -e",
        "python3 -m pip install --user --quiet --upgrade uv",
        f"python3 -m uv venv --seed --allow-existing --python {python} {VENV}",
        python_check(venv_python),
        f"{venv_python} -m pip install --upgrade pip",
        f"{venv_python} -m pip install {quoted} -f {LIBTPU_INDEX}",
        f"{venv_python} -m pip install --no-deps {project_spec}",
    ])  # fmt: skip


def python_check(python: str) -> str:
    """A shell command that stops with one line unless ``python`` is 3.11 or newer."""
    minimum = SUPPORTED_PYTHONS[0]
    return (
        f'{python} -c "import sys; sys.exit(sys.version_info < ({minimum.replace(".", ", ")}))" || '
        f'{{ echo "{PROG}: error: {python} is older than Python {minimum}, which tfopt-strategies needs" >&2; '
        "exit 1; }"
    )


def _is_pip_spec(source: str) -> bool:
    return "://" in source or source.startswith("git+")


def commands(
    *,
    name: str,
    zone: str,
    project: str | None = None,
    accelerator_type: str = "v4-8",
    runtime_version: str = "tpu-ubuntu2204-base",
    python: str = DEFAULT_PYTHON,
    spot: bool = False,
    source: str = _ROOT,
    steps: Sequence[str] = STEPS[:-1],
    train_args: Sequence[str] = (),
) -> list[list[str]]:
    """The commands of ``steps``, as argv lists, in the order of ``STEPS``.

    Args:
      name: TPU VM name.
      zone: GCP zone.
      project: GCP project, or ``None`` for gcloud's default.
      accelerator_type: e.g. ``"v4-8"`` (one host) or ``"v4-32"`` (a 4-host pod slice).
      runtime_version: The VM image.
      python: The venv's Python on every host, one of ``SUPPORTED_PYTHONS``.
      spot: Create a Spot VM.
      source: A local checkout, or a pip spec that every host can fetch.
      steps: A subset of ``STEPS``.
      train_args: Extra ``launch.train`` flags, e.g. ``["--dataset=cifar10"]``.

    Returns:
      One argv list per command. Remote commands run on ``--worker=all``.

    Examples:
      >>> cmds = commands(name="t", zone="us-central2-b", steps=["train"])
      >>> cmds[0][:5]
      ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh']
    """
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"`steps` must be among {list(STEPS)}. Received: steps={unknown}.")
    scope = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])
    tpu_vm = ["gcloud", "compute", "tpus", "tpu-vm"]
    local = not _is_pip_spec(source)
    archive = os.path.join("/tmp", _ARCHIVE)
    project_spec = f"~/{_ARCHIVE}" if local else shlex.quote(source)
    install = install_script(tpu_requirements(), project_spec, python)
    train = shlex.join([f"{VENV}/bin/python", "-m", "launch.train", "--strategy=tpu", "--tpu=local", *train_args])
    train = train.replace(f"'{VENV}/bin/python'", f"{VENV}/bin/python")  # ~ must expand on the host.
    by_step = {
        "package": [["git", "-C", source, "archive", "--format=tar.gz", "--prefix=tfopt-strategies/",
                     "-o", archive, "HEAD"]] if local else [],
        "create": [[*tpu_vm, "create", name, *scope, f"--accelerator-type={accelerator_type}",
                    f"--version={runtime_version}", *(["--spot"] if spot else [])]],
        "copy": [[*tpu_vm, "scp", archive, f"{name}:~/{_ARCHIVE}", *scope, "--worker=all"]] if local else [],
        "install": [[*tpu_vm, "ssh", name, *scope, "--worker=all", f"--command={install}"]],
        "train": [[*tpu_vm, "ssh", name, *scope, "--worker=all", f"--command={train}"]],
        "delete": [[*tpu_vm, "delete", name, *scope, "--quiet"]],
    }  # fmt: skip
    return [cmd for step in STEPS if step in steps for cmd in by_step[step]]


def main(argv: Sequence[str], runner: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
    """Prints the commands, or runs them in order and stops at the first failure."""
    for flag in (_NAME, _ZONE):
        if not flag.value:
            _console.fail(PROG, f"--{flag.name} is required. Received: {flag.name}={flag.value!r}.")
    try:
        cmds = commands(
            name=_NAME.value, zone=_ZONE.value, project=_PROJECT.value, accelerator_type=_ACCELERATOR.value,
            runtime_version=_RUNTIME.value, python=_PYTHON.value, spot=_SPOT.value, source=_SOURCE.value, steps=_STEPS.value,
            train_args=argv[1:],
        )  # fmt: skip
    except ValueError as e:
        _console.fail(PROG, str(e))
    for cmd in cmds:
        print(shlex.join(cmd), flush=True)
        if _EXECUTE.value:
            result = runner(cmd, check=False)
            if result.returncode:
                print(f"{PROG}: step failed with status {result.returncode}: {cmd[0]} {cmd[1:4]}", file=sys.stderr)
                sys.exit(result.returncode)


def run() -> None:
    """Console entry point."""
    _console.run(main, PROG, __name__)


if __name__ == "__main__":
    run()
