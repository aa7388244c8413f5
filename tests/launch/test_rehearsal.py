"""Rehearsals: every engine's job run on 127.0.0.1 with the environment that engine would inject.

Two kinds, both real processes through launch.local_cluster's machinery:
* probes: each replica runs tests/launch/_resolve_probe.py (no TensorFlow)
  and prints how `strategies` resolves it; every engine and role mix must
  give each replica its own task and one cluster (seconds);
* training: a multi-worker mirrored job with an evaluator as Vertex starts
  it, and a parameter-server job with an evaluator as JobSet starts it, each
  trained to at least 0.95 test accuracy on the digits, evaluator included.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from launch import _cluster_job, _rehearsal, kubernetes, vertex
from tests.launch import _cluster_jobs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
PROBE = ("python", "-m", "tests.launch._resolve_probe", "--model_dir=/unused")


def _vertex_without_tf_config(job, task, addresses):
    """Vertex's variables less TF_CONFIG: a custom container whose entry point drops it."""
    env = vertex.environment(job, task, addresses)
    del env["TF_CONFIG"]
    return env


# engine -> (replicas of a job, its injected environment, the source strategies must name)
ENGINES = {
    "vertex": (vertex.replicas, vertex.environment, "TF_CONFIG"),
    "vertex-cluster-spec": (vertex.replicas, _vertex_without_tf_config, "CLUSTER_SPEC"),
    "tfjob": (kubernetes.replicas, kubernetes.tfjob_environment, "TF_CONFIG"),
    "jobset": (kubernetes.replicas, kubernetes.jobset_environment, "JobSet"),
}


def _rehearse(engine: str, job: _cluster_job.ClusterJob, timeout: float):
    replicas, environment, _ = ENGINES[engine]
    result = _rehearsal.rehearse(job, replicas(job), lambda task, addresses: environment(job, task, addresses),
                                 timeout=timeout, output=None, env=ENV, strip=kubernetes.JOBSET_VARIABLES)
    tail = "\n".join(f"[{name}] {line}" for name, lines in result.output.items() for line in lines[-8:])
    assert result.returncode == 0, f"{result.reason}\n{tail}"
    return result


@pytest.mark.cluster
@pytest.mark.parametrize("mix", ["mwms-evaluator", "ps-evaluator"])
@pytest.mark.parametrize("engine", list(ENGINES))
def test_every_replica_resolves_to_its_own_task_in_one_cluster(engine, mix):
    job = _cluster_jobs.job(mix, command=PROBE)
    replicas, _, source = ENGINES[engine]
    result = _rehearse(engine, job, timeout=60)
    resolved = {}
    for name, lines in result.output.items():
        (line,) = [line for line in lines if line.startswith("RESOLVED ")]
        resolved[name] = json.loads(line.removeprefix("RESOLVED "))
    assert sorted(resolved) == sorted(f"{kind} {index}" for kind, index in replicas(job))
    specs = set()
    for name, found in resolved.items():
        assert found["source"] == source, (name, found)
        assert f"{found['task'][0]} {found['task'][1]}" == name
        assert "evaluator" not in found["spec"]
        specs.add(json.dumps(found["spec"], sort_keys=True))
    assert len(specs) == 1  # One cluster, the evaluator's view included.
    spec = json.loads(specs.pop())
    assert all(a.startswith("127.0.0.1:") for addresses in spec.values() for a in addresses)
    assert sum(len(a) for a in spec.values()) == len(resolved) - 1  # All but the evaluator.


def test_a_rehearsal_runs_this_python_and_a_local_model_dir():
    said = []
    command = _rehearsal.local_command(["python3", "-m", "launch.train", "--model_dir=gs://b/run"], said.append)
    assert command[0] == sys.executable and command[-1].startswith("--model_dir=")
    local = command[-1].split("=", 1)[1]
    assert os.path.isdir(local) and said == [f"--model_dir=gs://b/run is rehearsed in {local} (a rehearsal is offline)."]
    os.rmdir(local)
    assert _rehearsal.local_command(["/opt/py/bin/python", "x.py", "--model_dir", "/tmp/r"]) == \
        ["/opt/py/bin/python", "x.py", "--model_dir", "/tmp/r"]


# The shortest job that still reaches 0.95 here: the MLP, 5 epochs (0.964-0.967 measured).
TRAIN = ("python", "-m", "launch.train", "--model=mlp", "--epochs=5")


def _trained(model_dir: str) -> tuple[float, list[dict]]:
    with open(os.path.join(model_dir, "summary.json")) as f:
        accuracy = json.load(f)["eval"]["accuracy"]
    with open(os.path.join(model_dir, "eval.jsonl")) as f:
        return accuracy, [json.loads(line) for line in f]


@pytest.mark.cluster
@pytest.mark.parametrize("engine, shape, strategy", [
    # Vertex puts the first of the 2 workers in pool 0, as its chief.
    ("vertex", {"chief": False, "workers": 2}, "multi_worker_mirrored"),
    # The fewest processes a parameter-server job has: chief, worker, ps (and the evaluator).
    ("jobset", {"chief": True, "workers": 1, "ps": 1}, "parameter_server"),
], ids=["vertex-mwms-evaluator", "jobset-ps-evaluator"])
def test_rehearsed_job_trains_to_095_with_its_evaluator(engine, shape, strategy, digits_dir, tmp_path):
    model_dir = str(tmp_path / "run")
    job = _cluster_job.make_job(
        name="digits", image=_cluster_jobs.IMAGE, evaluator=True, **shape,
        command=(*TRAIN, f"--strategy={strategy}", f"--data_dir={digits_dir}", f"--model_dir={model_dir}"))
    _rehearse(engine, job, timeout=400)
    accuracy, evaluations = _trained(model_dir)
    assert accuracy >= 0.95
    final = evaluations[-1]
    assert final["epoch"] == 5 and final["metrics"]["accuracy"] >= 0.95
    assert final["metrics"]["accuracy"] == pytest.approx(accuracy, abs=1e-6)
