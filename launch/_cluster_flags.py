"""The flags `launch.vertex` and `launch.kubernetes` share, and the `ClusterJob` they make.

The cluster's shape is given with `launch.local_cluster`'s own flags
(``--workers``, ``--ps``, ``--chief``, ``--evaluator``, ``--max_restarts``,
``--timeout``), which
this module adopts rather than defines again: one job, one set of names,
whether it runs on 127.0.0.1 or on an engine; ``--name``, ``--project`` and
``--execute`` are `launch._cloud_flags`'. Added here: ``--image``, per-role ``--machine_type`` and ``--accelerator``, and
``--rehearse``.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from launch import _cloud_flags, _cluster_job, local_cluster

flags.adopt_module_key_flags(local_cluster)
flags.adopt_module_key_flags(_cloud_flags)

DEFAULT_NAME = "tfopt-train"
NAME = _cloud_flags.NAME
EXECUTE = _cloud_flags.EXECUTE
PROJECT = _cloud_flags.PROJECT
IMAGE = flags.DEFINE_string("image", None, "Container image every replica runs (with --package_uri on "
                            "Vertex: the prebuilt training image that installs the package).")
MACHINE_TYPE = flags.DEFINE_list(
    "machine_type", [], "Machine type: one value for every role, ROLE=VALUE for one role, e.g. "
    "n1-standard-8,ps=n1-highmem-8. Vertex: a Compute Engine machine type; Kubernetes: the node's "
    "node.kubernetes.io/instance-type.")
ACCELERATOR = flags.DEFINE_list(
    "accelerator", [], "Accelerator TYPE[:COUNT] (or none) for every role, ROLE=... for one, e.g. "
    "NVIDIA_TESLA_T4:1,ps=none. Vertex: its acceleratorType; Kubernetes: the GKE node label "
    "cloud.google.com/gke-accelerator (nvidia-tesla-t4) and a nvidia.com/gpu limit.")
REHEARSE = flags.DEFINE_boolean(
    "rehearse", False, "Run the job on 127.0.0.1 instead: every replica as a local process with the "
    "environment this engine would inject (ports for hosts), through launch.local_cluster.")


def job_from_flags(command: Sequence[str], **fields: object) -> _cluster_job.ClusterJob:
    """The checked job these flags describe; ValueError names a bad value in one sentence."""
    return _cluster_job.make_job(
        name=DEFAULT_NAME if NAME.value is None else NAME.value, command=command, chief=local_cluster._CHIEF.value,
        workers=local_cluster._WORKERS.value, ps=local_cluster._PS.value, evaluator=local_cluster._EVALUATOR.value,
        machine_type=MACHINE_TYPE.value, accelerator=ACCELERATOR.value, image=IMAGE.value,
        max_restarts=local_cluster._MAX_RESTARTS.value, **fields)


def rehearsal_timeout() -> float | None:
    return local_cluster._TIMEOUT.value or None
