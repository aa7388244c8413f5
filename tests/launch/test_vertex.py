"""launch.vertex: the CustomJobSpec it renders loads into aiplatform's own types; --execute up to the SDK.

No test here reaches Vertex AI (this machine has no cloud account): the
submit path runs up to ``JobServiceClient.create_custom_job``, which a spy
stands in for.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from absl import flags
from absl.testing import flagsaver

from launch import _cluster_job, vertex
from tests.launch import _cluster_jobs

aiplatform_v1 = pytest.importorskip("google.cloud.aiplatform_v1")
json_format = pytest.importorskip("google.protobuf.json_format")


def _parsed(spec: dict) -> object:
    """The SDK's CustomJobSpec; an unknown field raises (ignore_unknown_fields=False)."""
    message = aiplatform_v1.types.CustomJobSpec.pb(aiplatform_v1.types.CustomJobSpec())
    json_format.ParseDict(spec, message, ignore_unknown_fields=False)
    return aiplatform_v1.types.CustomJobSpec.wrap(message)


@pytest.mark.parametrize("mix", list(_cluster_jobs.MIXES))
def test_every_mix_loads_into_custom_job_spec_with_its_replicas_in_vertex_pools(mix):
    job = _cluster_jobs.job(mix, machine_type=["n1-standard-8", "ps=n1-highmem-4"],
                            accelerator=["NVIDIA_TESLA_T4:2", "ps=none"])
    spec = _parsed(vertex.custom_job_spec(job))
    pools = list(spec.worker_pool_specs)
    counts = [p.replica_count for p in pools]
    shape = _cluster_jobs.MIXES[mix]
    # Pool 0 is Vertex's chief: the job's chief, or its first worker. Trailing unused pools are left out.
    expected = [1, shape["workers"] - (0 if shape["chief"] else 1), shape.get("ps", 0),
                int(shape.get("evaluator", False))]
    while not expected[-1]:
        expected.pop()
    assert counts == expected
    assert sum(counts) == sum(r.replicas for r in job.roles)
    for pool, count in zip(pools, counts, strict=True):
        if not count:  # A pool left unused before a used one is empty.
            assert pool == aiplatform_v1.types.WorkerPoolSpec()
            continue
        assert list(pool.container_spec.command) == list(_cluster_jobs.COMMAND)
        assert pool.container_spec.image_uri == _cluster_jobs.IMAGE
    if shape.get("ps"):
        assert pools[2].machine_spec.machine_type == "n1-highmem-4" and not pools[2].machine_spec.accelerator_count
    assert pools[0].machine_spec.machine_type == "n1-standard-8"
    assert pools[0].machine_spec.accelerator_type.name == "NVIDIA_TESLA_T4"
    assert pools[0].machine_spec.accelerator_count == 2
    custom = aiplatform_v1.types.CustomJob(display_name=job.name, job_spec=spec)
    assert custom.job_spec.worker_pool_specs[0].replica_count == 1


def test_an_unknown_field_is_refused_by_the_schema_check():
    spec = vertex.custom_job_spec(_cluster_jobs.job("ps"))
    spec["workerPoolSpecs"][0]["replicas"] = 1  # Not Vertex's name (replicaCount).
    with pytest.raises(json_format.ParseError, match="replicas"):
        _parsed(spec)


def test_a_python_package_job_uses_python_package_spec():
    job = _cluster_jobs.job("chief-workers", package_uri="gs://bucket/tfopt-strategies-0.1.0.tar.gz",
                            image="us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-17.py310:latest")
    pool = _parsed(vertex.custom_job_spec(job)).worker_pool_specs[1]
    assert pool.python_package_spec.python_module == "launch.train"
    assert list(pool.python_package_spec.args) == list(_cluster_jobs.COMMAND[3:])
    assert list(pool.python_package_spec.package_uris) == ["gs://bucket/tfopt-strategies-0.1.0.tar.gz"]


@pytest.mark.parametrize("mix, max_restarts, expected", [
    ("mwms-workers", 0, (True, False)), ("mwms-workers", 3, (False, True)),
    ("ps", 0, (True, False)), ("ps", 3, (False, False)),  # A PS worker restarts alone.
])
def test_max_restarts_maps_onto_scheduling(mix, max_restarts, expected):
    scheduling = _parsed(vertex.custom_job_spec(_cluster_jobs.job(mix, max_restarts=max_restarts))).scheduling
    assert (scheduling.disable_retries, scheduling.restart_job_on_worker_restart) == expected


@pytest.mark.parametrize("mix", ["mwms-evaluator", "ps-evaluator"])
def test_injected_environment_is_vertex_format(mix):
    job = _cluster_jobs.job(mix)
    tasks = vertex.replicas(job)
    addresses: dict[str, list[str]] = {}
    for i, (kind, _) in enumerate(tasks):
        addresses.setdefault(kind, []).append(f"127.0.0.1:{5000 + i}")
    assert tasks[0] == ("chief", 0) and tasks[-1] == ("evaluator", 0)
    env = vertex.environment(job, ("evaluator", 0), addresses)
    tf_config, cluster_spec = json.loads(env["TF_CONFIG"]), json.loads(env["CLUSTER_SPEC"])
    assert tf_config["task"] == {"type": "evaluator", "index": 0, "trial": ""}
    assert "evaluator" not in tf_config["cluster"] and tf_config["environment"] == "cloud"
    assert cluster_spec["task"]["type"] == "workerpool3"
    assert cluster_spec["cluster"]["workerpool0"] == addresses["chief"]


def _main(argv: list[str]) -> None:
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        rest = flags.FLAGS(["launch.vertex", *argv])
        sys.exit(vertex.main(rest))


class _SpyJobServiceClient:
    """Stands in for aiplatform_v1.JobServiceClient: records the call, returns a created job."""

    calls: list[dict] = []

    def __init__(self, client_options=None, **kwargs):
        type(self).calls.append({"client_options": client_options})

    def create_custom_job(self, parent, custom_job):
        type(self).calls.append({"parent": parent, "custom_job": custom_job})
        return aiplatform_v1.types.CustomJob(name=f"{parent}/customJobs/123", display_name=custom_job.display_name)


def test_execute_submits_the_rendered_job_through_the_sdk(monkeypatch, capsys):
    """A SPY, not Vertex: the path runs up to JobServiceClient.create_custom_job."""
    _SpyJobServiceClient.calls = []
    monkeypatch.setattr(aiplatform_v1, "JobServiceClient", _SpyJobServiceClient)
    argv = ["--execute", "--project=proj", "--region=europe-west4", "--chief", "--workers=2", "--ps=1",
            f"--image={_cluster_jobs.IMAGE}", "--", *_cluster_jobs.COMMAND]
    with pytest.raises(SystemExit) as exit_info:
        _main(argv)
    assert exit_info.value.code == 0
    options, call = _SpyJobServiceClient.calls
    assert options["client_options"] == {"api_endpoint": "europe-west4-aiplatform.googleapis.com"}
    assert call["parent"] == "projects/proj/locations/europe-west4"
    submitted = call["custom_job"]
    assert submitted.display_name == "tfopt-train"
    assert [p.replica_count for p in submitted.job_spec.worker_pool_specs] == [1, 2, 1]
    assert "created projects/proj/locations/europe-west4/customJobs/123" in capsys.readouterr().out


def test_execute_without_a_project_submits_nothing(monkeypatch, capsys):
    _SpyJobServiceClient.calls = []
    monkeypatch.setattr(aiplatform_v1, "JobServiceClient", _SpyJobServiceClient)
    with pytest.raises(SystemExit) as exit_info:
        _main(["--execute", f"--image={_cluster_jobs.IMAGE}", "--", *_cluster_jobs.COMMAND])
    assert exit_info.value.code == 2 and _SpyJobServiceClient.calls == []
    assert capsys.readouterr().err.strip().startswith("launch.vertex: error: --execute needs --project")


def test_cli_prints_the_yaml_gcloud_takes():
    out = subprocess.run(
        [sys.executable, "-m", "launch.vertex", "--workers=2", "--evaluator", "--name=digits",
         f"--image={_cluster_jobs.IMAGE}", "--", *_cluster_jobs.COMMAND],
        capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.startswith("# gcloud ai custom-jobs create --region=us-central1 --display-name=digits "
                          "--config=job.yaml")
    spec = yaml.safe_load(out)
    assert spec == vertex.custom_job_spec(_cluster_job.make_job(
        name="digits", command=_cluster_jobs.COMMAND, chief=False, workers=2, evaluator=True,
        image=_cluster_jobs.IMAGE))
    assert [p.get("replicaCount", 0) for p in spec["workerPoolSpecs"]] == [1, 1, 0, 1]
    _parsed(spec)
