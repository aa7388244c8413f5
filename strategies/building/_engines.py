"""Cluster descriptions other than ``TF_CONFIG``: Vertex AI's ``CLUSTER_SPEC`` and JobSet's environment.

Each is read into the ``TF_CONFIG`` shape (``{"cluster": ..., "task": ...}``)
and then checked by `strategies.cluster.validate`, so every engine obeys the
same rules (addresses, one chief, task index in range).

**Vertex AI** sets ``CLUSTER_SPEC`` beside ``TF_CONFIG``, with worker pools
for job names: ``{"cluster": {"workerpool0": [...], "workerpool1": [...]},
"task": {"type": "workerpool1", "index": 0, "trial": ""}, "environment":
"cloud", "job": {...}}``. Its pools map to roles as Vertex documents them:
``workerpool0`` is the chief, ``workerpool1`` the workers, ``workerpool2`` the
parameter servers and ``workerpool3`` the evaluators. It is read only where
``TF_CONFIG`` is absent (a custom container whose entry point drops it).

**JobSet** (kubernetes-sigs/jobset) sets no ``TF_CONFIG``. Its pods have
stable DNS names, ``<jobset>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>``,
and this module derives the cluster from them. The contract with the
manifest (`launch.kubernetes` renders it this way):

* One replicated job per role, **named after the role**: ``chief`` (or
  ``master``), ``worker``, ``ps``, ``evaluator``. Each is an Indexed Job
  (``completionMode: Indexed``).
* Every container has ``TFOPT_JOBSET_REPLICAS``, the roles and their sizes,
  e.g. ``"chief=1,worker=2,ps=1,evaluator=1"``. ``worker=2`` means one Job of
  two pods (``replicas: 1``, ``parallelism = completions = 2``);
  ``worker=2x3`` means two Jobs of three pods each (task index =
  ``jobIndex * 3 + podIndex``). This variable is what turns JobSet resolution
  on; a pod without it is not read as a TensorFlow cluster.
* Optional: ``TFOPT_JOBSET_PORT`` (default ``2222``), the port every task's
  server listens on, and ``TFOPT_JOBSET_SUBDOMAIN`` (default: the JobSet's
  name, JobSet's own default for ``spec.network.subdomain``).
* Read from the pod's environment: ``JOBSET_NAME``, ``REPLICATED_JOB_NAME``,
  ``JOB_INDEX`` (the JobSet controller sets them, or the manifest sets them
  from the labels ``jobset.sigs.k8s.io/jobset-name``,
  ``jobset.sigs.k8s.io/replicatedjob-name`` and ``jobset.sigs.k8s.io/job-index``
  through the downward API), and ``JOB_COMPLETION_INDEX`` (Kubernetes sets it
  in every pod of an Indexed Job).
* Rehearsal only: ``TFOPT_JOBSET_ADDRESS_MAP``, a JSON object from each
  ``host:port`` above to the address that stands in for it (e.g.
  ``"127.0.0.1:41234"``), so that the same environment runs on one machine.

The evaluator's pods are left out of the cluster (it joins no collective and
starts no server), as in ``TF_CONFIG``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from strategies import cluster as cluster_lib
from strategies.building._errors import StrategyError, invalid

VERTEX_POOLS = {"workerpool0": "chief", "workerpool1": "worker", "workerpool2": "ps", "workerpool3": "evaluator"}
JOBSET_REPLICAS = "TFOPT_JOBSET_REPLICAS"
JOBSET_PORT = "TFOPT_JOBSET_PORT"
JOBSET_SUBDOMAIN = "TFOPT_JOBSET_SUBDOMAIN"
JOBSET_ADDRESS_MAP = "TFOPT_JOBSET_ADDRESS_MAP"
JOBSET_POD_VARS = ("JOBSET_NAME", "REPLICATED_JOB_NAME", "JOB_INDEX", "JOB_COMPLETION_INDEX")
DEFAULT_PORT = 2222
_SIZE = re.compile(r"^(?:(?P<jobs>[0-9]+)x)?(?P<pods>[0-9]+)$")


def from_cluster_spec(raw: str) -> dict[str, Any]:
    """Vertex AI's ``CLUSTER_SPEC`` as a validated ``TF_CONFIG`` dict (roles instead of pools)."""
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as e:
        raise StrategyError(
            f"`CLUSTER_SPEC` must be valid JSON ({e.msg} at character {e.pos}). "
            f"Received: CLUSTER_SPEC={raw[:200]!r}."
        ) from None
    cluster = parsed.get("cluster") if isinstance(parsed, dict) else None
    task = parsed.get("task") if isinstance(parsed, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise _bad("CLUSTER_SPEC", raw[:200], 'a JSON object with "cluster" and "task", as Vertex AI writes it')
    for pool in cluster:
        if pool not in VERTEX_POOLS:
            raise _bad("CLUSTER_SPEC['cluster']", pool, f"keyed by Vertex AI's worker pools {list(VERTEX_POOLS)}")
    if task.get("type") not in VERTEX_POOLS:
        raise _bad("CLUSTER_SPEC['task']['type']", task.get("type"), f"one of {list(VERTEX_POOLS)}")
    roles = {VERTEX_POOLS[pool]: addresses for pool, addresses in cluster.items() if addresses}
    tf_config = {**parsed, "cluster": roles, "task": {**task, "type": VERTEX_POOLS[task["type"]]}}
    return _validated("CLUSTER_SPEC", tf_config)


def jobset_active(environ: Mapping[str, str]) -> bool:
    """Whether the environment describes a TensorFlow job under JobSet (the contract above)."""
    return bool(environ.get(JOBSET_REPLICAS, "").strip())


def from_jobset(environ: Mapping[str, str]) -> dict[str, Any]:
    """JobSet's environment as a validated ``TF_CONFIG`` dict (see the module's contract)."""
    for var in JOBSET_POD_VARS:
        if not environ.get(var, "").strip():
            raise StrategyError(
                f"`{var}` must be set in a JobSet pod ({JOBSET_REPLICAS} is set); set it from the pod's "
                f"labels through the downward API, or run under a JobSet controller that injects it. "
                f"Received: {var}={environ.get(var)!r}."
            )
    sizes = _sizes(environ[JOBSET_REPLICAS])
    name, role = environ["JOBSET_NAME"].strip(), environ["REPLICATED_JOB_NAME"].strip()
    if role not in sizes:
        raise _bad("REPLICATED_JOB_NAME", role, f"one of the roles in {JOBSET_REPLICAS} {list(sizes)}")
    job_index, pod_index = _index("JOB_INDEX", environ), _index("JOB_COMPLETION_INDEX", environ)
    port = _index(JOBSET_PORT, environ, default=DEFAULT_PORT)
    subdomain = environ.get(JOBSET_SUBDOMAIN, "").strip() or name
    mapped = _address_map(environ)
    cluster: dict[str, list[str]] = {}
    for job, (jobs, pods) in sizes.items():
        addresses = [f"{name}-{job}-{i // pods}-{i % pods}.{subdomain}:{port}" for i in range(jobs * pods)]
        cluster[job] = [mapped.get(a, a) for a in addresses]
    jobs, pods = sizes[role]
    if pod_index >= pods or job_index >= jobs:
        raise _bad("JOB_INDEX/JOB_COMPLETION_INDEX", (job_index, pod_index),
                   f"below ({jobs}, {pods}), the {role} size in {JOBSET_REPLICAS}")
    task = {"type": role, "index": job_index * pods + pod_index}
    return _validated("JobSet's environment", {"cluster": cluster, "task": task})


def _sizes(raw: str) -> dict[str, tuple[int, int]]:
    """``"chief=1,worker=2x3"`` -> ``{"chief": (1, 1), "worker": (2, 3)}`` (Jobs, pods per Job)."""
    sizes: dict[str, tuple[int, int]] = {}
    for item in raw.split(","):
        role, _, size = item.strip().partition("=")
        match = _SIZE.match(size.strip())
        if role not in (*cluster_lib.TASK_TYPES, cluster_lib.CHIEF_ALIAS) or not match or role in sizes:
            raise _bad(JOBSET_REPLICAS, raw, f"'role=N' or 'role=JOBSxPODS' items, once per role of "
                       f"{list(cluster_lib.TASK_TYPES)}, e.g. 'chief=1,worker=2,ps=1'")
        jobs, pods = int(match["jobs"] or 1), int(match["pods"])
        if jobs < 1 or pods < 1:
            raise _bad(JOBSET_REPLICAS, raw, "sizes of at least 1")
        sizes[role] = (jobs, pods)
    return sizes


def _index(var: str, environ: Mapping[str, str], default: int | None = None) -> int:
    raw = environ.get(var, "").strip()
    if not raw and default is not None:
        return default
    if not raw.isdigit():
        raise _bad(var, environ.get(var), "a non-negative integer")
    return int(raw)


def _address_map(environ: Mapping[str, str]) -> dict[str, str]:
    raw = environ.get(JOBSET_ADDRESS_MAP, "").strip()
    if not raw:
        return {}
    try:
        mapped = json.loads(raw)
    except json.JSONDecodeError:
        mapped = None
    if not isinstance(mapped, dict) or not all(isinstance(v, str) for v in mapped.values()):
        raise _bad(JOBSET_ADDRESS_MAP, raw[:200], 'a JSON object {"host:port": "127.0.0.1:port", ...}')
    return mapped


def _validated(source: str, tf_config: dict[str, Any]) -> dict[str, Any]:
    try:
        return cluster_lib.validate(tf_config)
    except StrategyError as e:
        raise StrategyError(f"{source}, read as TF_CONFIG: {e}") from None


def _bad(key: str, value: Any, expected: str) -> StrategyError:
    return invalid(key, value, expected)
