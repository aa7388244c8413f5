"""The job description launch.vertex and launch.kubernetes share: bad input is one line, exit 2, nothing sent.

Each case runs both launchers in this process (their flags parsed as on a
command line) with ``--execute`` and spies in place of the SDK and kubectl,
and checks the one error line, the exit status and that nothing was submitted.
"""

from __future__ import annotations

import sys

import pytest
from absl import flags
from absl.testing import flagsaver

from launch import _cluster_job, kubernetes, vertex
from tests.launch import _cluster_jobs

IMAGE = f"--image={_cluster_jobs.IMAGE}"
TRAIN = ["--", "python", "-m", "launch.train", "--strategy=parameter_server"]
WITH_DIR = [*TRAIN, "--model_dir=gs://b/run"]
# id -> (flags and command, words the error line must hold)
BAD = {
    "evaluator-without-model-dir": (["--chief", "--ps=1", "--evaluator", IMAGE, *TRAIN], ["--model_dir"]),
    "ps-without-chief": (["--ps=1", IMAGE, *TRAIN], ["--chief", "ps=1"]),
    "no-workers": (["--workers=0", IMAGE, *TRAIN], ["workers=0"]),
    "negative-ps": (["--chief", "--ps=-1", IMAGE, *TRAIN], ["ps=-1"]),
    "image-with-spaces": (["--image=my image:latest", *TRAIN], ["'my image:latest'"]),
    "image-upper-case-path": (["--image=gcr.io/Proj/Trainer", *TRAIN], ["gcr.io/Proj/Trainer"]),
    "no-image": ([*TRAIN], ["--image"]),
    "no-command": ([IMAGE], ["`--`"]),
    "name-upper-case": (["--name=MyJob", IMAGE, *TRAIN], ["'MyJob'"]),
    "name-too-long": ([f"--name={'a' * 41}", IMAGE, *TRAIN], ["at most 40"]),
    "machine-type-unknown-role": (["--machine_type=gpu=n1-standard-4", IMAGE, *TRAIN], ["'gpu'"]),
    "machine-type-two-defaults": (["--machine_type=n1-standard-4,n1-standard-8", IMAGE, *TRAIN],
                                  ["machine_type"]),
    "accelerator-zero": (["--accelerator=NVIDIA_TESLA_T4:0", IMAGE, *TRAIN], ["NVIDIA_TESLA_T4:0"]),
    "accelerator-bad-count": (["--accelerator=NVIDIA_TESLA_T4:two", IMAGE, *TRAIN], ["two"]),
    "max-restarts-negative": (["--max_restarts=-1", IMAGE, *TRAIN], ["max_restarts"]),
    "execute-and-rehearse": (["--rehearse", IMAGE, *WITH_DIR], ["--rehearse"]),
    "unknown-flag": (["--worker=2", IMAGE, *TRAIN], ["worker"]),
}


@pytest.fixture
def nothing_sent(monkeypatch):
    """Spies in place of Vertex's SDK and kubectl: any call fails the test."""
    monkeypatch.setattr(vertex, "submit", lambda job: pytest.fail("submitted to Vertex"))
    monkeypatch.setattr(kubernetes, "apply", lambda text: pytest.fail("applied with kubectl"))
    monkeypatch.setattr(kubernetes.subprocess, "run", lambda *a, **k: pytest.fail("ran a command"))


@pytest.mark.parametrize("module", [vertex, kubernetes], ids=["vertex", "kubernetes"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_2_with_nothing_sent(module, case, nothing_sent, capsys):
    argv, words = BAD[case]
    parse = module._parse_flags
    with flagsaver.flagsaver(), pytest.raises(SystemExit) as exit_info:
        flags.FLAGS.unparse_flags()
        rest = parse([module.PROG, "--execute", *argv])
        sys.exit(module.main(rest))
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{module.PROG}: error: "), captured.err
    for word in words:
        assert word in lines[0]
    assert captured.out == ""


@pytest.mark.parametrize("command, expected", [
    (["python", "-m", "launch.train", "--model_dir=gs://b/r"], "gs://b/r"),
    (["python", "-m", "launch.train", "--model_dir", "/tmp/r", "--epochs=1"], "/tmp/r"),
    (["python", "-m", "launch.train", "--model_dir="], None),
    (["python", "-m", "launch.train"], None),
])
def test_model_dir_is_found_in_both_absl_forms(command, expected):
    assert _cluster_job.model_dir(command) == expected


def test_per_role_values_override_the_default():
    assert _cluster_job.per_role("machine_type", ["n1-standard-4", "ps=n1-highmem-8"]) == {
        "chief": "n1-standard-4", "worker": "n1-standard-4", "ps": "n1-highmem-8", "evaluator": "n1-standard-4"}
    assert _cluster_job.per_role("accelerator", ["worker=T4"]) == {"worker": "T4"}


def test_a_package_job_needs_a_python_module_command():
    with pytest.raises(ValueError, match="python -m MODULE"):
        _cluster_job.make_job(name="j", command=["bash", "train.sh"], chief=False, workers=1,
                              package_uri="gs://b/p.tar.gz", image=_cluster_jobs.IMAGE)
