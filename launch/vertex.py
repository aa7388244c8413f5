r"""Prints (or, with ``--execute``, submits) a Vertex AI custom job for a TensorFlow cluster.

    python -m launch.vertex --workers=2 --image=IMAGE -- python -m launch.train --strategy=multi_worker_mirrored
    python -m launch.vertex --chief --workers=2 --ps=1 --evaluator --image=IMAGE \
        -- python -m launch.train --strategy=parameter_server --model_dir=gs://BUCKET/run
    python -m launch.vertex ... --rehearse     # the same job on 127.0.0.1, as Vertex would start it

The output is a ``CustomJobSpec`` in YAML, the file that
``gcloud ai custom-jobs create --region=REGION --display-name=NAME --config=FILE``
takes (the command is printed above it). Its ``workerPoolSpecs`` are, in
Vertex's fixed order, the chief (pool 0), the workers (1), the parameter
servers (2) and the evaluator (3); an unused pool before a used one is ``{}``.
Vertex always names pool 0 ``chief`` in ``TF_CONFIG``: a job without
``--chief`` (multi-worker mirrored) puts its first worker there and the
others in pool 1, and TensorFlow counts that chief as a worker.

Every replica runs the command after ``--``: in a container (``--image``), or,
with ``--package_uri=gs://...`` and a ``python -m MODULE`` command, as
``pythonPackageSpec`` on the prebuilt image ``--image``.

Restarts: Vertex restarts a replica that exits non-zero (on the same host
name) unless it failed on an error it deems permanent; how often is Vertex's
choice, so ``--max_restarts=N`` has no field for N. N > 0 on a multi-worker
job sets ``scheduling.restartJobOnWorkerRestart`` (the whole job restarts with
a replica, which collectives need, as `launch.local_cluster` does); on a
parameter-server job it keeps Vertex's default (a worker alone). N = 0 sets
``scheduling.disableRetries``. See docs/beyond-one-machine.md.

``--execute`` submits through google-cloud-aiplatform (setup.cfg's ``cloud``
extra: ``pip install 'tfopt-strategies[cloud]'``) with your application
default credentials and ``--project``. It has not been run against Vertex from
this project's machines (they have no cloud account): its tests stop at the
SDK's ``JobServiceClient.create_custom_job`` call.

``--rehearse`` computes, for every replica, the ``TF_CONFIG`` and
``CLUSTER_SPEC`` Vertex would inject (with 127.0.0.1 ports for its hosts) and
starts the same commands through `launch.local_cluster`; see `launch._rehearsal`.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from absl import flags

from launch import _cluster_flags, _cluster_job, _console, _rehearsal

# The job's shape, name, image and --execute/--rehearse: shared with the other launchers.
flags.adopt_module_key_flags(_cluster_flags)

PROG = "launch.vertex"
# Vertex's worker pools, in their fixed order, and the TF_CONFIG task type of each.
POOLS = ("chief", "worker", "ps", "evaluator")
DEFAULT_MACHINE_TYPE = "n1-standard-4"

_REGION = flags.DEFINE_string("region", "us-central1", "Vertex AI region.")
_PACKAGE_URI = flags.DEFINE_string(
    "package_uri", None, "gs:// path of this project's source distribution: replicas run it with "
    "pythonPackageSpec on --image (a Vertex prebuilt training image) instead of a custom container.")


def pool_replicas(job: _cluster_job.ClusterJob) -> list[tuple[_cluster_job.Role, int]]:
    """``(role, replica count)`` of Vertex's pools 0-3; a count of 0 is an unused pool.

    Pool 0 always holds one replica, the chief in Vertex's ``TF_CONFIG``: the
    job's chief, or else its first worker.
    """
    chief = job.role("chief")
    workers = job.role("worker")
    assert workers is not None  # _cluster_job.check
    ps, evaluator = job.role("ps"), job.role("evaluator")
    if chief is None:
        chief, worker_count = dataclasses.replace(workers, name="chief", replicas=1), workers.replicas - 1
    else:
        worker_count = workers.replicas
    return [(chief, 1), (workers, worker_count), (ps or workers, ps.replicas if ps else 0),
            (evaluator or workers, 1 if evaluator else 0)]


def custom_job_spec(job: _cluster_job.ClusterJob) -> dict[str, Any]:
    """The job as a Vertex ``CustomJobSpec`` (JSON/YAML field names)."""
    pools: list[dict[str, Any]] = []
    for role, count in pool_replicas(job):
        pools.append(_pool(job, role, count) if count else {})
    while pools and not pools[-1]:
        pools.pop()
    spec: dict[str, Any] = {"workerPoolSpecs": pools}
    if not job.max_restarts:
        spec["scheduling"] = {"disableRetries": True}
    elif not job.parameter_server:
        # Collectives cannot take a restarted peer in: restart the whole job, as
        # local_cluster restarts a multi-worker cluster. Under parameter servers
        # the coordinator re-runs a restarted worker's steps by itself.
        spec["scheduling"] = {"restartJobOnWorkerRestart": True}
    return spec


def _pool(job: _cluster_job.ClusterJob, role: _cluster_job.Role, count: int) -> dict[str, Any]:
    machine: dict[str, Any] = {"machineType": role.machine_type or DEFAULT_MACHINE_TYPE}
    if role.accelerator is not None:
        machine["acceleratorType"] = role.accelerator.type
        machine["acceleratorCount"] = role.accelerator.count
    pool: dict[str, Any] = {"machineSpec": machine, "replicaCount": count}
    module = _cluster_job.python_module(job.command)
    if job.package_uri is not None and module is not None:
        pool["pythonPackageSpec"] = {"executorImageUri": job.image, "packageUris": [job.package_uri],
                                     "pythonModule": module[0], "args": list(module[1])}
    else:
        pool["containerSpec"] = {"imageUri": job.image, "command": list(job.command)}
    return pool


def gcloud_command(job: _cluster_job.ClusterJob, config: str = "job.yaml") -> str:
    words = ["gcloud", "ai", "custom-jobs", "create", f"--region={job.region}",
             f"--display-name={job.name}", f"--config={config}"]
    if job.project:
        words.append(f"--project={job.project}")
    return shlex.join(words)


def render(job: _cluster_job.ClusterJob) -> str:
    """The YAML file ``gcloud ai custom-jobs create --config`` takes, its command in a comment."""
    header = (f"# {gcloud_command(job)}\n"
              f"# {len(pool_replicas(job))} pools: chief, workers, parameter servers, evaluator "
              "(an unused one is {}).\n")
    return header + _cluster_job.to_yaml(custom_job_spec(job))


def load_spec(spec: Mapping[str, Any]) -> Any:
    """``spec`` parsed into the SDK's ``aiplatform_v1.types.CustomJobSpec``; an unknown field raises."""
    from google.cloud import aiplatform_v1
    from google.protobuf import json_format

    message = aiplatform_v1.types.CustomJobSpec.pb(aiplatform_v1.types.CustomJobSpec())
    json_format.ParseDict(dict(spec), message, ignore_unknown_fields=False)
    return aiplatform_v1.types.CustomJobSpec.wrap(message)


def submit(job: _cluster_job.ClusterJob) -> str:
    """Creates the custom job through google-cloud-aiplatform; returns its resource name."""
    try:
        from google.cloud import aiplatform_v1
    except ImportError as error:
        raise _console.UsageError("--execute needs google-cloud-aiplatform: "
                                  "pip install 'tfopt-strategies[cloud]'.") from error
    if not job.project:
        raise _console.UsageError("--execute needs --project (the GCP project to create the job in).")
    client = aiplatform_v1.JobServiceClient(
        client_options={"api_endpoint": f"{job.region}-aiplatform.googleapis.com"})
    custom_job = aiplatform_v1.types.CustomJob(display_name=job.name, job_spec=load_spec(custom_job_spec(job)))
    created = client.create_custom_job(parent=f"projects/{job.project}/locations/{job.region}",
                                       custom_job=custom_job)
    return created.name


# --- What Vertex injects into each replica (for --rehearse). ---

def replicas(job: _cluster_job.ClusterJob) -> list[tuple[str, int]]:
    """Every replica as Vertex's ``TF_CONFIG`` names it: ``(task type, index)``."""
    return [(POOLS[pool], i) for pool, (_, count) in enumerate(pool_replicas(job)) for i in range(count)]


def environment(job: _cluster_job.ClusterJob, task: tuple[str, int],
                addresses: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """``TF_CONFIG`` and ``CLUSTER_SPEC`` as Vertex sets them for ``task``.

    ``addresses`` holds each task type's ``host:port`` list (the evaluator's
    included); as Vertex does, ``TF_CONFIG``'s cluster leaves the evaluator
    out, while ``CLUSTER_SPEC`` lists every pool as ``workerpoolN``.
    """
    kind, index = task
    spec = custom_job_spec(job)
    cluster = {t: list(addresses[t]) for t in ("chief", "worker", "ps") if addresses.get(t)}
    pools = {f"workerpool{POOLS.index(t)}": list(a) for t, a in addresses.items() if a}
    trial = {"index": index, "trial": ""}
    tf_config = {"cluster": cluster, "task": {"type": kind, **trial}, "environment": "cloud", "job": spec}
    cluster_spec = {"cluster": pools, "task": {"type": f"workerpool{POOLS.index(kind)}", **trial},
                    "environment": "cloud", "job": spec}
    return {"TF_CONFIG": json.dumps(tf_config), "CLUSTER_SPEC": json.dumps(cluster_spec)}


def main(argv: Sequence[str]) -> int:
    command = list(argv[1:])
    try:
        job = _cluster_flags.job_from_flags(command, package_uri=_PACKAGE_URI.value,
                                            project=_cluster_flags.PROJECT.value, region=_REGION.value)
        if job.image is None and not _cluster_flags.REHEARSE.value:
            raise ValueError("--image is required: the container (or, with --package_uri, the prebuilt "
                             "training image) every replica runs.")
        if _cluster_flags.EXECUTE.value and _cluster_flags.REHEARSE.value:
            raise ValueError("--execute and --rehearse exclude each other: submit, or run here.")
        if _cluster_flags.REHEARSE.value:
            return _rehearsal.run(PROG, job, replicas(job), lambda task, addresses: environment(
                job, task, addresses), timeout=_cluster_flags.rehearsal_timeout())
        if _cluster_flags.EXECUTE.value:
            print(f"{PROG}: created {submit(job)}", flush=True)
            return 0
    except ValueError as error:  # _console.UsageError included.
        _console.fail(PROG, error)
    sys.stdout.write(render(job))
    return 0


_parse_flags = _console.flags_parser(PROG)


def run() -> None:
    """Console-script entry point (``tfopt-vertex``)."""
    _console.run(main, PROG, __name__)


if __name__ == "__main__":
    run()
