"""One cluster job, described once, for every engine that runs it.

A `ClusterJob` is what `launch.local_cluster`, `launch.vertex` and
`launch.kubernetes` all need to know: the command every replica runs (the
argv after ``--``), how many replicas of each role, and, per role, the
machine and accelerator; then the container image (or, on Vertex, a Python
package) and the engine's place (project, region, namespace). Each launcher
renders it in its engine's own format; none of them adds a field the others
do not know about.

The roles are TensorFlow's task types, in the order every engine lists them:
``chief``, ``worker``, ``ps``, ``evaluator``. `check` refuses, in one sentence
each, the jobs no engine can run: a parameter-server job without a chief (the
coordinator), a replica count under 1, a side-car evaluator that has no
``--model_dir`` to watch, an image name with spaces.

This module imports neither TensorFlow nor a cloud SDK.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

ROLES = ("chief", "worker", "ps", "evaluator")
# TensorFlow allows at most one of these (strategies.cluster).
SINGLE_REPLICA_ROLES = ("chief", "evaluator")
# TFJob's default port, used by every engine here: a replica's own host is its own.
PORT = 2222
MAX_RESTARTS = 100
# A Kubernetes object name (DNS-1123 label). The longest pod hostname JobSet
# derives from it, ``NAME-evaluator-0-0``, must stay within 63 characters.
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_NAME = 40
# A container image reference (OCI distribution's grammar, simplified):
# [host[:port]/]path[:tag][@digest], no whitespace, no upper case in the path.
_IMAGE = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?"  # registry host
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"  # path
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"  # tag
    r"(?:@sha256:[0-9a-f]{64})?")  # digest
# Machine and accelerator names on Vertex (n1-standard-4, NVIDIA_TESLA_T4) and
# Kubernetes node labels (nvidia-tesla-t4): letters, digits, '-', '_', '.'.
_RESOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """``count`` accelerators of ``type`` (the engine's name: ``NVIDIA_TESLA_T4``, ``nvidia-tesla-t4``)."""

    type: str
    count: int = 1


@dataclasses.dataclass(frozen=True)
class Role:
    """``replicas`` replicas of one task type, each on ``machine_type`` with ``accelerator``."""

    name: str
    replicas: int
    machine_type: str | None = None
    accelerator: Accelerator | None = None


@dataclasses.dataclass(frozen=True)
class ClusterJob:
    """A TensorFlow cluster job, engine-neutral.

    Attributes:
        name: a DNS-1123 label (lowercase letters, digits, '-'): the job's and
            its pods' name on Kubernetes, its display name on Vertex.
        command: the argv every replica runs, e.g. ``("python", "-m",
            "launch.train", "--strategy=parameter_server", ...)``.
        roles: the roles present, in `ROLES` order.
        image: the container image every replica runs (on Vertex with
            ``package_uri``: the prebuilt executor image).
        package_uri: Vertex only: a ``gs://`` Python source distribution;
            ``command`` is then ``python -m MODULE ARGS``.
        project, region: Vertex's project and region.
        namespace: the Kubernetes namespace.
        max_restarts: how many times the engine restarts a failed job
            (see docs/beyond-one-machine.md for what each engine restarts).
    """

    name: str
    command: tuple[str, ...]
    roles: tuple[Role, ...]
    image: str | None = None
    package_uri: str | None = None
    project: str | None = None
    region: str | None = None
    namespace: str | None = None
    max_restarts: int = 0

    def replicas(self, role: str) -> int:
        """How many replicas ``role`` has (0 when absent)."""
        return next((r.replicas for r in self.roles if r.name == role), 0)

    def role(self, name: str) -> Role | None:
        return next((r for r in self.roles if r.name == name), None)

    @property
    def parameter_server(self) -> bool:
        return self.replicas("ps") > 0

    @property
    def shell_command(self) -> str:
        return shlex.join(self.command)


def make_job(*, name: str, command: Sequence[str], chief: bool, workers: int, ps: int = 0,
             evaluator: bool = False, machine_type: Sequence[str] = (), accelerator: Sequence[str] = (),
             **fields: object) -> ClusterJob:
    """Builds and `check`s a job from launcher-style values.

    ``machine_type`` and ``accelerator`` are lists as their flags take them
    (`per_role`): a bare value for every role, ``ROLE=VALUE`` for one; an
    accelerator is ``TYPE[:COUNT]`` or ``none``.

    Raises:
        ValueError: one sentence naming the offending value.
    """
    counts = {"chief": int(chief), "worker": workers, "ps": ps, "evaluator": int(evaluator)}
    _check_counts(counts)
    machines = per_role("machine_type", machine_type)
    accelerators = per_role("accelerator", accelerator)
    roles = tuple(Role(role, counts[role], machines.get(role), _accelerator(accelerators.get(role)))
                  for role in ROLES if counts[role])
    job = ClusterJob(name=name, command=tuple(command), roles=roles, **fields)  # type: ignore[arg-type]
    check(job)
    return job


def per_role(flag: str, values: Sequence[str]) -> dict[str, str]:
    """``["n1-standard-4", "ps=n1-highmem-8"]`` -> a value for each role (``ROLE=`` entries win)."""
    default: str | None = None
    chosen: dict[str, str] = {}
    for value in values:
        role, sep, rest = value.partition("=")
        if not sep:
            if default is not None:
                raise ValueError(f"--{flag} takes one value for every role and ROLE=VALUE for one role; "
                                 f"it got two values for every role. Received: {flag}={list(values)}.")
            default = value
        elif role not in ROLES:
            raise ValueError(f"--{flag}: unknown role {role!r}; the roles are {', '.join(ROLES)}. "
                             f"Received: {flag}={value!r}.")
        else:
            chosen[role] = rest
    return {role: chosen.get(role, default) for role in ROLES if chosen.get(role, default) is not None}


def _accelerator(value: str | None) -> Accelerator | None:
    if value is None or value == "none":
        return None
    kind, sep, count = value.partition(":")
    try:
        number = int(count) if sep else 1
    except ValueError:
        number = 0
    if number < 1 or not _RESOURCE.fullmatch(kind):
        raise ValueError("--accelerator is TYPE[:COUNT] with a COUNT of 1 or more, or none. "
                         f"Received: accelerator={value!r}.")
    return Accelerator(kind, number)


def _check_counts(counts: Mapping[str, int]) -> None:
    if counts["worker"] < 1:
        raise ValueError(f"--workers must be at least 1. Received: workers={counts['worker']}.")
    if counts["ps"] < 0:
        raise ValueError(f"--ps must be 0 or more. Received: ps={counts['ps']}.")
    if counts["ps"] and not counts["chief"]:
        raise ValueError("A parameter-server job needs a coordinator: add --chief. "
                         f"Received: ps={counts['ps']}, chief=False.")


def check(job: ClusterJob) -> None:
    """Raises ValueError, in one sentence, for a job no engine can run."""
    if not _NAME.fullmatch(job.name) or len(job.name) > MAX_NAME:
        raise ValueError(f"--name must be lowercase letters, digits and '-', start with a letter, end "
                         f"with a letter or digit, and be at most {MAX_NAME} characters (it names "
                         f"Kubernetes objects and pod hostnames). Received: name={job.name!r}.")
    if not job.command:
        raise ValueError("Give the command every replica runs after `--`, e.g. "
                         "`-- python -m launch.train --strategy=multi_worker_mirrored`.")
    present = [r.name for r in job.roles]
    if present != [r for r in ROLES if r in present]:
        raise ValueError(f"Roles must be listed in the order {ROLES}. Received: {present}.")
    for role in job.roles:
        if role.replicas < 1:
            raise ValueError(f"A role's replica count must be at least 1. "
                             f"Received: {role.name} replicas={role.replicas}.")
        if role.name in SINGLE_REPLICA_ROLES and role.replicas != 1:
            raise ValueError(f"TensorFlow runs at most one {role.name}. "
                             f"Received: {role.name} replicas={role.replicas}.")
        if role.machine_type is not None and not _RESOURCE.fullmatch(role.machine_type):
            raise ValueError(f"--machine_type must be a machine name such as n1-standard-4. "
                             f"Received: {role.name} machine_type={role.machine_type!r}.")
    if job.replicas("worker") < 1:
        raise ValueError(f"--workers must be at least 1. Received: workers={job.replicas('worker')}.")
    if job.parameter_server and not job.replicas("chief"):
        raise ValueError("A parameter-server job needs a coordinator: add --chief. "
                         f"Received: ps={job.replicas('ps')}, chief=False.")
    if job.replicas("evaluator") and model_dir(job.command) is None:
        raise ValueError("A side-car evaluator watches the checkpoints in --model_dir: give every replica "
                         "the same --model_dir (a shared path such as gs://BUCKET/run) in the command. "
                         f"Received: command={job.shell_command!r}.")
    if job.image is not None and not _IMAGE.fullmatch(job.image):
        raise ValueError("--image must be a container image reference such as "
                         f"us-docker.pkg.dev/PROJECT/REPO/trainer:TAG, without spaces. Received: image={job.image!r}.")
    if job.package_uri is not None:
        if not job.package_uri.startswith("gs://") or any(c.isspace() for c in job.package_uri):
            raise ValueError("--package_uri must be a gs:// path of a Python source distribution. "
                             f"Received: package_uri={job.package_uri!r}.")
        if python_module(job.command) is None:
            raise ValueError("With --package_uri the command must be `python -m MODULE [ARGS]`, which "
                             f"Vertex runs from the package. Received: command={job.shell_command!r}.")
    if isinstance(job.max_restarts, bool) or not 0 <= job.max_restarts <= MAX_RESTARTS:
        raise ValueError(f"--max_restarts must be between 0 and {MAX_RESTARTS}. "
                         f"Received: max_restarts={job.max_restarts!r}.")


def model_dir(command: Sequence[str]) -> str | None:
    """The value of ``--model_dir`` in ``command`` (absl's ``--model_dir=X`` or ``--model_dir X``)."""
    found = None
    for i, arg in enumerate(command):
        if arg.startswith("--model_dir="):
            found = arg.split("=", 1)[1]
        elif arg == "--model_dir" and i + 1 < len(command):
            found = command[i + 1]
    return found or None


def python_module(command: Sequence[str]) -> tuple[str, tuple[str, ...]] | None:
    """``(module, args)`` when ``command`` is ``python[3] -m MODULE ARGS``, else None."""
    if len(command) >= 3 and command[0].rsplit("/", 1)[-1] in ("python", "python3") and command[1] == "-m":
        return command[2], tuple(command[3:])
    return None


def to_yaml(document: Any) -> str:
    """A rendered spec as YAML, through PyYAML when installed (the ``cloud`` extra), else as
    indented JSON, which YAML 1.2 (gcloud's and kubectl's parsers) reads as the same document."""
    try:
        import yaml
    except ImportError:
        return json.dumps(document, indent=2) + "\n"
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
