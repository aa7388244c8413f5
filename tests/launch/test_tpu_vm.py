"""launch.tpu_vm: the generated gcloud commands, printed and executed (with a fake runner)."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from absl import flags
from absl.testing import flagsaver

from launch import _requirements, tpu_vm


def _cmds(**kwargs):
    return tpu_vm.commands(**{"name": "my-tpu", "zone": "us-central2-b", **kwargs})


def _by_verb(cmds):
    return {(c[4] if c[0] == "gcloud" else c[0]): c for c in cmds}


def test_default_steps_in_order() -> None:
    verbs = [c[4] if c[0] == "gcloud" else c[0] for c in _cmds()]
    assert verbs == ["git", "create", "scp", "ssh", "ssh"]


def test_create_command() -> None:
    create = _by_verb(_cmds(accelerator_type="v4-32", project="proj", spot=True))["create"]
    assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu"]
    assert {"--zone=us-central2-b", "--project=proj", "--accelerator-type=v4-32",
            "--version=tpu-ubuntu2204-base", "--spot"} <= set(create)  # fmt: skip


def test_install_uses_tensorflow_tpu_and_not_the_cpu_wheel() -> None:
    install = _cmds(steps=["install"])[0]
    assert "--worker=all" in install
    script = install[-1].removeprefix("--command=")
    assert f"-f {tpu_vm.LIBTPU_INDEX}" in script
    assert '"tensorflow-tpu==2.20.*" "tensorboard==2.20.*"' in script
    requirements = [shlex.split(part)[0] for part in script.split('"')[1::2]]
    assert "tensorflow-datasets>=4.9" in requirements  # kept: it is not tensorflow itself
    names = [_requirements.name_of(r) for r in requirements]
    assert "tensorflow" not in names and names.count("tensorboard") == 1  # tensorflow-tpu's, 2.20
    assert script.endswith("~/tfopt-venv/bin/python -m pip install --no-deps ~/tfopt-strategies.tar.gz")


def _script_commands(script: str) -> list[str]:
    return [c.strip() for c in script.split("; ") if c.strip()]


@pytest.mark.parametrize("python", tpu_vm.SUPPORTED_PYTHONS)
def test_install_brings_its_own_python_and_never_uses_the_image_python(python: str) -> None:
    script = _cmds(steps=["install"], python=python)[0][-1].removeprefix("--command=")
    check = tpu_vm.python_check("~/tfopt-venv/bin/python")
    assert script.count(check) == 1
    commands = _script_commands(script.replace(check, "CHECK"))
    assert commands[0] == "set -e"  # any failing step stops the host's install
    # The image's python3 only installs uv; uv makes the venv with the chosen interpreter.
    image_python = [c for c in commands if c.startswith("python3 ")]
    assert image_python == [
        "python3 -m pip install --user --quiet --upgrade uv",
        f"python3 -m uv venv --seed --allow-existing --python {python} ~/tfopt-venv",
    ]
    # The version check comes before any package, and every pip runs in the venv.
    assert commands.index("CHECK") == 3
    pips = [c for c in commands if " -m pip install" in c and not c.startswith("python3 ")]
    assert len(pips) == 3 and all(c.startswith("~/tfopt-venv/bin/python -m pip install") for c in pips)


def test_unsupported_python_is_rejected() -> None:
    with pytest.raises(ValueError, match="python='3.10'"):
        _cmds(steps=["install"], python="3.10")


def test_supported_pythons_are_setup_cfgs() -> None:
    import noxfile

    assert list(tpu_vm.SUPPORTED_PYTHONS) == noxfile.supported_pythons()
    assert tpu_vm.DEFAULT_PYTHON in tpu_vm.SUPPORTED_PYTHONS


def _interpreter(version: str) -> str | None:
    import noxfile

    return noxfile.find_python(version)


@pytest.mark.parametrize("version, ok", [("3.10", False), (tpu_vm.SUPPORTED_PYTHONS[0], True)])
def test_python_check_runs_in_bash_and_fails_fast_with_one_line(tmp_path, version: str, ok: bool) -> None:
    """The generated check, run for real by bash against a venv python of that version."""
    interpreter = _interpreter(version)
    if interpreter is None:
        pytest.skip(f"no Python {version} on this machine to run the check against")
    venv_bin = tmp_path / "tfopt-venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(interpreter)
    check = tpu_vm.python_check("~/tfopt-venv/bin/python")
    result = subprocess.run(["bash", "-c", f"set -e; {check}; echo installed"], env={"HOME": str(tmp_path),
                            "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=False)  # fmt: skip
    if ok:
        assert (result.returncode, result.stdout, result.stderr) == (0, "installed\n", "")
    else:
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and "older than Python 3.11" in result.stderr


def test_every_host_runs_the_same_train_command() -> None:
    train = _cmds(steps=["train"], train_args=["--dataset=cifar10", "--epochs=3"])[0]
    assert train[4] == "ssh" and "--worker=all" in train
    assert shlex.split(train[-1].removeprefix("--command=")) == [
        "~/tfopt-venv/bin/python", "-m", "launch.train", "--strategy=tpu", "--tpu=local", "--dataset=cifar10", "--epochs=3",
    ]  # fmt: skip


def test_pip_source_skips_packaging_and_copy() -> None:
    cmds = _cmds(source="git+https://github.com/org/repo")
    assert [c[4] for c in cmds] == ["create", "ssh", "ssh"]
    assert cmds[1][-1].endswith("~/tfopt-venv/bin/python -m pip install --no-deps git+https://github.com/org/repo")


def test_delete_only_when_asked() -> None:
    assert "delete" not in _by_verb(_cmds())
    assert _by_verb(_cmds(steps=["delete"]))["delete"][-1] == "--quiet"


def test_unknown_step_is_rejected() -> None:
    with pytest.raises(ValueError, match="steps=\\['boot'\\]"):
        _cmds(steps=["boot"])


def _main(argv, runner=None):
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        rest = flags.FLAGS(["tpu_vm", *argv])
        kwargs = {"runner": runner} if runner else {}
        tpu_vm.main(rest, **kwargs)


def test_main_prints_commands(capsys) -> None:
    _main(["--name=t1", "--zone=z", "--steps=create", "--steps=train", "--", "--epochs=2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("gcloud compute tpus tpu-vm create t1 --zone=z")
    assert lines[1].endswith("'--command=~/tfopt-venv/bin/python -m launch.train --strategy=tpu --tpu=local --epochs=2'")


def test_execute_runs_in_order_and_stops_at_first_failure(capsys) -> None:
    ran = []

    def runner(cmd, check):
        ran.append(cmd[4] if cmd[0] == "gcloud" else cmd[0])
        return subprocess.CompletedProcess(cmd, 3 if ran[-1] == "scp" else 0)

    with pytest.raises(SystemExit) as e:
        _main(["--name=t1", "--zone=z", "--execute"], runner)
    assert e.value.code == 3
    assert ran == ["git", "create", "scp"]
    assert "status 3" in capsys.readouterr().err


def test_missing_name_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        _main(["--zone=z"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--name" in err
