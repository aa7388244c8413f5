"""Rehearse an engine's job on 127.0.0.1: its replicas as local processes, with its environment.

An engine (Vertex AI, Kubeflow's TFJob, JobSet) starts one process per
replica and injects the cluster description: a ``TF_CONFIG`` in its own
format, Vertex's ``CLUSTER_SPEC``, or JobSet's variables and pod hostnames.
`rehearse` does the same here: it gives every replica a free port on
127.0.0.1, asks the engine's launcher for the environment it would inject
(``environment(task, addresses)``, with those ports in place of the engine's
hosts), and runs the job's own command through `launch.local_cluster`'s
`LocalCluster` (its output prefixes, timeout, restarts and cleanup). The
command and the cluster description are thus proven together, without the
cloud.

Two things differ from the engine, on purpose, and each is said in one line:
* ``python``/``python3`` at the head of the command is this interpreter, so
  the rehearsal runs in this environment;
* a ``--model_dir`` on cloud storage (``gs://...``) is replaced by a local
  temporary directory: a rehearsal is offline.

When it stops (as `launch.local_cluster`): a multi-worker job when every
replica, the evaluator included, has exited; a parameter-server job when the
chief and the evaluator have. Unlike `launch.local_cluster`, a rehearsal
fails when its evaluator did.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from launch import _cluster_job, local_cluster
from strategies import cluster as strategies_cluster

Addresses = Mapping[str, Sequence[str]]
Environment = Callable[[tuple[str, int], Addresses], Mapping[str, str]]
# What an engine injects; never inherited from this process, so a rehearsal
# sees only what its engine would set.
ENGINE_VARIABLES = ("TF_CONFIG", "CLUSTER_SPEC")
_PYTHONS = ("python", "python3")


class EngineCluster(local_cluster.LocalCluster):
    """A `LocalCluster` whose tasks are an engine's replicas, each with the engine's environment.

    Args:
        command: what every replica runs.
        tasks: every replica as ``(task type, index)``, as the engine names it.
        environment: the variables the engine would inject into one replica,
            given every task type's ``127.0.0.1:port`` list.
        strip: further variables of this process a replica must not inherit
            (an engine's own, such as JobSet's).
        Others as `LocalCluster`.
    """

    def __init__(self, command: Sequence[str], tasks: Sequence[tuple[str, int]], environment: Environment,
                 *, strip: Sequence[str] = (), **kwargs) -> None:
        # The base class checks and lays out a TF_CONFIG cluster shape; an
        # engine's may differ (Vertex: a chief and no worker), so the tasks
        # and their addresses are replaced by the engine's own.
        super().__init__(command, workers=1, **kwargs)
        ports = strategies_cluster.free_ports(len(tasks))
        self.addresses: dict[str, list[str]] = {}
        for (kind, _), port in zip(tasks, ports, strict=True):
            self.addresses.setdefault(kind, []).append(f"127.0.0.1:{port}")
        self.spec = {k: list(v) for k, v in self.addresses.items() if k != "evaluator"}
        self.tasks = [local_cluster.Task(kind, index, self.addresses[kind][index]) for kind, index in tasks]
        self.parameter_server = "ps" in self.addresses
        self._environment = environment
        self._strip = (*ENGINE_VARIABLES, *strip)

    def task_environment(self, task: local_cluster.Task) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k not in self._strip}
        return {**base, **self._env, "PYTHONUNBUFFERED": "1",
                **self._environment((task.type, task.index), self.addresses)}



def local_command(command: Sequence[str], say: Callable[[str], None] = lambda line: None) -> list[str]:
    """``command`` as a rehearsal runs it: this Python, and a local ``--model_dir`` for a cloud one."""
    result = list(command)
    if result and result[0] in _PYTHONS:
        result[0] = sys.executable
    model_dir = _cluster_job.model_dir(result)
    if model_dir is not None and "://" in model_dir:
        local = tempfile.mkdtemp(prefix="rehearsal-")
        result = [f"--model_dir={local}" if a == f"--model_dir={model_dir}" else a for a in result]
        if "--model_dir" in result:  # The two-word form.
            i = result.index("--model_dir")
            result[i + 1] = local
        say(f"--model_dir={model_dir} is rehearsed in {local} (a rehearsal is offline).")
    return result


def rehearse(job: _cluster_job.ClusterJob, tasks: Sequence[tuple[str, int]], environment: Environment,
             *, timeout: float | None = None, output: TextIO | None = sys.stdout,
             env: Mapping[str, str] | None = None, strip: Sequence[str] = ()) -> local_cluster.Result:
    """Runs ``job`` on 127.0.0.1 as an engine would start ``tasks``, and returns how it ended."""
    def say(line: str) -> None:
        if output is not None:
            print(f"[rehearsal] {line}", file=output, flush=True)

    command = local_command(job.command, say)
    if shutil.which(command[0]) is None:
        raise ValueError(f"Cannot rehearse {command[0]!r}: no such executable here (check the path and its "
                         "execute permission).")
    with EngineCluster(command, tasks, environment, strip=strip, timeout=timeout, env=env,
                       output=output, max_restarts=job.max_restarts) as cluster:
        say("replicas: " + ", ".join(f"{kind} {index} on {cluster.addresses[kind][index]}"
                                     for kind, index in tasks))
        result = cluster.wait()
    # LocalCluster lets training finish without a failed evaluator; a rehearsal
    # proves the evaluator too.
    failed = [t for t in cluster.tasks if t.type == "evaluator" and t.process is not None
              and t.process.returncode not in (0, None)]
    if result.returncode == 0 and failed:
        code = failed[0].process.returncode
        return local_cluster.Result(code if code > 0 else 1, f"{failed[0].name} "
                                    f"{local_cluster.how_it_died(code)}", failed[0].name, result.output)
    return result


def run(prog: str, job: _cluster_job.ClusterJob, tasks: Sequence[tuple[str, int]], environment: Environment,
        *, timeout: float | None, strip: Sequence[str] = ()) -> int:
    """`rehearse` for a launcher's ``--rehearse``: its exit code, with one closing line."""
    try:
        result = rehearse(job, tasks, environment, timeout=timeout, strip=strip)
    except OSError as error:  # The command exists but cannot be executed.
        raise ValueError(f"Cannot rehearse {job.command[0]!r}: {error.strerror}.") from None
    print(f"{prog}: rehearsal {'passed' if result.returncode == 0 else 'failed'}: {result.reason}.",
          flush=True)
    return result.returncode
