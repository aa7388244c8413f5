r"""Prints (or, with ``--execute``, applies) a Kubernetes manifest for a TensorFlow cluster: JobSet or TFJob.

    python -m launch.kubernetes --kind=jobset --workers=2 --image=IMAGE \
        -- python -m launch.train --strategy=multi_worker_mirrored --model_dir=gs://BUCKET/run
    python -m launch.kubernetes --kind=tfjob --chief --workers=2 --ps=1 --evaluator --image=IMAGE \
        -- python -m launch.train --strategy=parameter_server --model_dir=gs://BUCKET/run
    python -m launch.kubernetes ... --rehearse   # the same job on 127.0.0.1, as the engine would start it

``--kind=jobset`` (kubernetes-sigs/jobset, ``jobset.x-k8s.io/v1alpha2``): a
headless Service and a JobSet with one replicated job per role, named after
the role (``chief``, ``worker``, ``ps``, ``evaluator``), each one Indexed Job
of as many pods as the role has replicas. JobSet sets no ``TF_CONFIG``; every
container gets the variables `strategies` reads instead (the contract in
``strategies/building/_engines.py``): ``TFOPT_JOBSET_REPLICAS`` (the roles and
their sizes), ``TFOPT_JOBSET_PORT``, ``TFOPT_JOBSET_SUBDOMAIN``, and
``JOBSET_NAME``, ``REPLICATED_JOB_NAME`` and ``JOB_INDEX`` from the pod's
JobSet labels through the downward API (Kubernetes sets ``JOB_COMPLETION_INDEX``
itself). Pods reach each other as
``<name>-<role>-<jobIndex>-<podIndex>.<name>:2222``.

``--kind=tfjob`` (Kubeflow training-operator v1, ``kubeflow.org/v1``, in
maintenance): a TFJob with ``tfReplicaSpecs`` Chief/Worker/PS/Evaluator; the
operator injects ``TF_CONFIG`` (the evaluator left out of its cluster).

Every container is named ``tensorflow`` (TFJob requires it) and runs the
command after ``--``. A role's ``--machine_type`` becomes a
``node.kubernetes.io/instance-type`` node selector, its ``--accelerator``
(``nvidia-tesla-t4:1``) a ``cloud.google.com/gke-accelerator`` node selector
and a ``nvidia.com/gpu`` limit.

Restarts (``--max_restarts=N``): JobSet recreates every Job, up to
``failurePolicy.maxRestarts`` = N times, when one fails, as
`launch.local_cluster` restarts a multi-worker cluster; a replica that exits 2
(a user error) fails the JobSet at once (a Job ``podFailurePolicy`` rule and a
JobSet ``FailJobSet`` rule). TFJob restarts a failed pod in place under
``restartPolicy: ExitCode`` (exit codes 128 and up, signals and preemption;
1-127 are final), at most ``runPolicy.backoffLimit`` = N times in all.
See docs/beyond-one-machine.md.

``--execute`` pipes the manifest to ``kubectl apply -f -`` (your kubectl
context; the JobSet or training-operator controller must be installed in the
cluster). It has not been run against a cluster from this project's machines
(there is none): its tests stop at the ``kubectl`` call.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import flags

from launch import _cluster_flags, _cluster_job, _console, _rehearsal

# The job's shape, name, image and --execute/--rehearse: shared with the other launchers.
flags.adopt_module_key_flags(_cluster_flags)

PROG = "launch.kubernetes"
KINDS = ("jobset", "tfjob")
CONTAINER = "tensorflow"  # TFJob finds the TensorFlow container by this name.
PORT = _cluster_job.PORT
# The JobSet contract with strategies (strategies/building/_engines.py).
JOBSET_REPLICAS = "TFOPT_JOBSET_REPLICAS"
JOBSET_PORT = "TFOPT_JOBSET_PORT"
JOBSET_SUBDOMAIN = "TFOPT_JOBSET_SUBDOMAIN"
JOBSET_ADDRESS_MAP = "TFOPT_JOBSET_ADDRESS_MAP"  # Rehearsal only.
# The labels the JobSet controller puts on every pod, and the variables read from them.
JOBSET_LABELS = {"JOBSET_NAME": "jobset.sigs.k8s.io/jobset-name",
                 "REPLICATED_JOB_NAME": "jobset.sigs.k8s.io/replicatedjob-name",
                 "JOB_INDEX": "jobset.sigs.k8s.io/job-index"}
JOBSET_API = "jobset.x-k8s.io/v1alpha2"
TFJOB_API = "kubeflow.org/v1"
TFJOB_REPLICA_TYPES = {"chief": "Chief", "worker": "Worker", "ps": "PS", "evaluator": "Evaluator"}
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
GPU_RESOURCE = "nvidia.com/gpu"

_KIND = flags.DEFINE_enum("kind", "jobset", list(KINDS), "Manifest kind: jobset (JobSet) or tfjob (Kubeflow TFJob).")
_NAMESPACE = flags.DEFINE_string("namespace", None, "Kubernetes namespace (default: kubectl's).")


# --- The pod every replica runs. ---

def _container(job: _cluster_job.ClusterJob, role: _cluster_job.Role,
               env: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    container: dict[str, Any] = {"name": CONTAINER, "image": job.image, "command": list(job.command),
                                 "ports": [{"name": "tfjob-port", "containerPort": PORT}]}
    if env:
        container["env"] = list(env)
    if role.accelerator is not None:
        container["resources"] = {"limits": {GPU_RESOURCE: str(role.accelerator.count)}}
    return container


def _pod_spec(job: _cluster_job.ClusterJob, role: _cluster_job.Role, *, restart_policy: str | None,
              env: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if restart_policy is not None:
        spec["restartPolicy"] = restart_policy
    spec["containers"] = [_container(job, role, env)]
    selector = {}
    if role.machine_type is not None:
        selector[INSTANCE_TYPE_LABEL] = role.machine_type
    if role.accelerator is not None:
        selector[ACCELERATOR_LABEL] = role.accelerator.type
    if selector:
        spec["nodeSelector"] = selector
    return spec


def _metadata(job: _cluster_job.ClusterJob) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": job.name}
    if job.namespace:
        metadata["namespace"] = job.namespace
    return metadata


# --- JobSet. ---

def jobset_replicas(job: _cluster_job.ClusterJob) -> str:
    """``TFOPT_JOBSET_REPLICAS``: ``"chief=1,worker=2,ps=1,evaluator=1"``."""
    return ",".join(f"{role.name}={role.replicas}" for role in job.roles)


def jobset_env(job: _cluster_job.ClusterJob) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": JOBSET_REPLICAS, "value": jobset_replicas(job)},
                                 {"name": JOBSET_PORT, "value": str(PORT)},
                                 {"name": JOBSET_SUBDOMAIN, "value": job.name}]
    for name, label in JOBSET_LABELS.items():
        env.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{label}']"}}})
    return env


def headless_service(job: _cluster_job.ClusterJob) -> dict[str, Any]:
    """The Service that gives every pod its DNS name (JobSet makes the same one when it is missing)."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(job),
            "spec": {"clusterIP": "None", "selector": {JOBSET_LABELS["JOBSET_NAME"]: job.name},
                     "publishNotReadyAddresses": True,
                     "ports": [{"name": "tfjob-port", "port": PORT, "targetPort": PORT}]}}


def jobset(job: _cluster_job.ClusterJob) -> dict[str, Any]:
    """The JobSet: one replicated job per role, one Indexed Job of ``replicas`` pods each."""
    replicated = []
    for role in job.roles:
        job_spec = {
            "completionMode": "Indexed", "parallelism": role.replicas, "completions": role.replicas,
            "backoffLimit": 0,  # A failed pod fails its Job; JobSet's failurePolicy decides the rest.
            # Exit 2 is a user error: the same command would fail again.
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
                "containerName": CONTAINER, "operator": "In", "values": [_console.EXIT_USAGE]}}]},
            "template": {"spec": _pod_spec(job, role, restart_policy="Never", env=jobset_env(job))},
        }
        replicated.append({"name": role.name, "replicas": 1, "template": {"spec": job_spec}})
    spec: dict[str, Any] = {
        "network": {"enableDNSHostnames": True, "subdomain": job.name, "publishNotReadyAddresses": True},
        "failurePolicy": {"maxRestarts": job.max_restarts, "rules": [
            {"name": "UserError", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}]},
    }
    if job.parameter_server:
        # Workers and parameter servers serve until stopped: the job is done when the chief
        # (and the evaluator, after the final checkpoint) are.
        spec["successPolicy"] = {"operator": "All", "targetReplicatedJobs": [
            r.name for r in job.roles if r.name in ("chief", "evaluator")]}
    spec["replicatedJobs"] = replicated
    return {"apiVersion": JOBSET_API, "kind": "JobSet", "metadata": _metadata(job), "spec": spec}


# --- TFJob. ---

def tfjob(job: _cluster_job.ClusterJob) -> dict[str, Any]:
    """The Kubeflow TFJob: ``tfReplicaSpecs`` Chief/Worker/PS/Evaluator."""
    restart = "ExitCode" if job.max_restarts else "Never"
    replica_specs = {
        TFJOB_REPLICA_TYPES[role.name]: {
            "replicas": role.replicas, "restartPolicy": restart,
            "template": {"spec": _pod_spec(job, role, restart_policy=None)},
        } for role in job.roles}
    return {"apiVersion": TFJOB_API, "kind": "TFJob", "metadata": _metadata(job),
            "spec": {"runPolicy": {"backoffLimit": job.max_restarts, "cleanPodPolicy": "Running"},
                     "tfReplicaSpecs": replica_specs}}


def manifests(job: _cluster_job.ClusterJob, kind: str) -> list[dict[str, Any]]:
    """The objects ``kubectl apply`` gets, in order."""
    if kind == "jobset":
        return [headless_service(job), jobset(job)]
    if kind == "tfjob":
        return [tfjob(job)]
    raise ValueError(f"--kind must be one of {KINDS}. Received: kind={kind!r}.")


def render(job: _cluster_job.ClusterJob, kind: str) -> str:
    """The manifests as one multi-document YAML stream, ``kubectl apply -f -`` ready."""
    return "---\n".join(_cluster_job.to_yaml(m) for m in manifests(job, kind))


def apply(text: str, run: Callable[..., subprocess.CompletedProcess] | None = None) -> int:
    """Pipes ``text`` to ``kubectl apply -f -``; returns kubectl's exit code."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise _console.UsageError("--execute needs kubectl on PATH, with a context for your cluster.")
    run = subprocess.run if run is None else run
    return run([kubectl, "apply", "-f", "-"], input=text.encode(), check=False).returncode


# --- What the engine injects into each replica (for --rehearse). ---

def replicas(job: _cluster_job.ClusterJob) -> list[tuple[str, int]]:
    return [(role.name, i) for role in job.roles for i in range(role.replicas)]


def tfjob_environment(job: _cluster_job.ClusterJob, task: tuple[str, int],
                      addresses: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """``TF_CONFIG`` as training-operator v1 writes it (its ``genTFConfigJSONStr``).

    The cluster holds every replica type but the evaluator, lowercase; the
    operator's hosts (``<name>-<type>-<i>.<namespace>.svc:2222``) are
    ``addresses`` here.
    """
    cluster = {t: list(a) for t, a in addresses.items() if t != "evaluator"}
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task[0], "index": task[1]},
                                     "environment": "cloud"})}


def jobset_hostname(job: _cluster_job.ClusterJob, role: str, index: int) -> str:
    """The DNS name JobSet gives a pod: ``<jobset>-<replicatedJob>-<jobIndex>-<podIndex>.<subdomain>``."""
    return f"{job.name}-{role}-0-{index}.{job.name}"


def jobset_environment(job: _cluster_job.ClusterJob, task: tuple[str, int],
                       addresses: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """A JobSet pod's variables, read from the rendered manifest, with its hosts mapped to ``addresses``.

    Literal ``env`` entries are copied; downward-API entries take the labels
    the JobSet controller puts on the pod; ``JOB_COMPLETION_INDEX`` is the
    Indexed Job's; ``TFOPT_JOBSET_ADDRESS_MAP`` stands every pod's
    ``host:port`` in for its 127.0.0.1 port.
    """
    role, index = task
    labels = {JOBSET_LABELS["JOBSET_NAME"]: job.name, JOBSET_LABELS["REPLICATED_JOB_NAME"]: role,
              JOBSET_LABELS["JOB_INDEX"]: "0"}
    spec = jobset(job)["spec"]
    replicated = next(r for r in spec["replicatedJobs"] if r["name"] == role)
    container = replicated["template"]["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for entry in container.get("env", ()):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            path = entry["valueFrom"]["fieldRef"]["fieldPath"]
            env[entry["name"]] = labels[path[len("metadata.labels['"):-len("']")]]
    env["JOB_COMPLETION_INDEX"] = str(index)
    port = env[JOBSET_PORT]
    env[JOBSET_ADDRESS_MAP] = json.dumps({f"{jobset_hostname(job, r, i)}:{port}": address
                                          for r, a in addresses.items() for i, address in enumerate(a)})
    return env


def environment_function(job: _cluster_job.ClusterJob, kind: str) -> _rehearsal.Environment:
    inject = jobset_environment if kind == "jobset" else tfjob_environment
    return lambda task, addresses: inject(job, task, addresses)


# Variables of JobSet's contract that this process must not pass on to a rehearsal.
JOBSET_VARIABLES = (JOBSET_REPLICAS, JOBSET_PORT, JOBSET_SUBDOMAIN, JOBSET_ADDRESS_MAP,
                    *JOBSET_LABELS, "JOB_COMPLETION_INDEX")


def main(argv: Sequence[str]) -> int:
    command = list(argv[1:])
    try:
        job = _cluster_flags.job_from_flags(command, namespace=_NAMESPACE.value)
        if job.image is None and not _cluster_flags.REHEARSE.value:
            raise ValueError("--image is required: the container image every replica runs.")
        if _cluster_flags.EXECUTE.value and _cluster_flags.REHEARSE.value:
            raise ValueError("--execute and --rehearse exclude each other: apply, or run here.")
        if _cluster_flags.REHEARSE.value:
            return _rehearsal.run(PROG, job, replicas(job), environment_function(job, _KIND.value),
                                  timeout=_cluster_flags.rehearsal_timeout(), strip=JOBSET_VARIABLES)
        text = render(job, _KIND.value)
        if _cluster_flags.EXECUTE.value:
            return apply(text)
    except ValueError as error:  # _console.UsageError included.
        _console.fail(PROG, error)
    sys.stdout.write(text)
    return 0


_parse_flags = _console.flags_parser(PROG)


def run() -> None:
    """Console-script entry point (``tfopt-kubernetes``)."""
    _console.run(main, PROG, __name__)


if __name__ == "__main__":
    run()
