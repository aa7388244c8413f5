r"""Run every task of a TensorFlow cluster as a local process on 127.0.0.1.

    python -m launch.local_cluster --workers=2 -- python -m launch.train --strategy=multi_worker_mirrored
    python -m launch.local_cluster --workers=2 --ps=1 --chief -- python -m launch.train --strategy=parameter_server
    python -m launch.local_cluster --workers=2 --evaluator -- python -m launch.train --model_dir=/tmp/run

With ``--evaluator``, one more process runs the same command as the side-car
evaluator: its ``TF_CONFIG`` names the cluster and ``{"type": "evaluator",
"index": 0}``, absent from the cluster, as Vertex AI writes it. It joins no
collective and has no port; the cluster is done when it has exited too (it
stops after the run's last checkpoint). It failing never stops training: it
is reported, or restarted alone under ``--max_restarts``.

Each task gets free ports and its own ``TF_CONFIG``; its output (stdout and
stderr) is printed line by line behind its role, e.g. ``[worker 1] ...``.

When it stops:
* Multi-worker (no ``--ps``): when every task has exited; as soon as one
  fails, the others are killed and its exit code is returned.
* Parameter servers: when the chief exits (workers and ps serve forever and
  are then stopped). A failed chief or ps stops the cluster; a failed worker
  is only reported, because ``ClusterCoordinator`` re-runs its steps elsewhere.
* With ``--max_restarts=N``, a task that dies (a signal, a non-zero exit, a
  preemption) is restarted up to N times, each with a line naming the task,
  how it died and which restart this is; a multi-worker cluster is restarted
  whole (its training resumes from the newest checkpoint), a parameter-server
  worker alone. A task that exits 2 (a user error) is never restarted: exit 2.
  When a task dies once more after its N restarts: exit 3.
* On ``--timeout`` (exit 124), Ctrl-C (130) or SIGTERM (143).
* A task that exits 143 was preempted (it saved a checkpoint at a step every
  worker agreed on, see ``strategies.training._preemption``): the others get 30 s to
  save and exit by themselves before they are stopped.

This launcher does not import TensorFlow (5 s and a screen of logs, per
launch): it takes its cluster spec (free ports on 127.0.0.1) from
`strategies.cluster`, which loads none, and writes the ``TF_CONFIG`` format
that module validates.

Every task runs in its own process group, and stopping kills whole groups
(SIGTERM, then SIGKILL after a grace period), so no grandchild survives.
The servers TensorFlow starts are unauthenticated; this binds them to
127.0.0.1 only.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

from absl import flags

from launch import _console
from strategies import cluster as strategies_cluster

# Its error lines read "local_cluster: error: ...", as its own output reads "[local_cluster] ...".
PROG = "local_cluster"
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
# A task that exits 2 failed on a user error (launch.train's convention): never restarted.
EXIT_USAGE = _console.EXIT_USAGE
# --max_restarts were all used and a task still failed.
EXIT_OUT_OF_RESTARTS = 3
_GRACE_SECONDS = 3.0
# A task that exits 143 after a SIGTERM was preempted: it checkpointed at a
# step all workers agreed on, and the others are exiting too. They get this
# long to finish by themselves before they are stopped.
_PREEMPTED_GRACE_SECONDS = 30.0
_POLL_SECONDS = 0.05
# Each task is a process with its own ports and pipes on this one machine.
MAX_TASKS = 64


@dataclasses.dataclass
class Task:
    """One process of the cluster."""

    type: str
    index: int
    address: str
    process: subprocess.Popen[bytes] | None = None
    lines: collections.deque[str] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=5000))

    @property
    def name(self) -> str:
        return f"{self.type} {self.index}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


@dataclasses.dataclass
class Result:
    """How a cluster run ended: ``returncode`` 0 is success; ``failed`` names the task."""

    returncode: int
    reason: str
    failed: str | None
    output: dict[str, list[str]]


class LocalCluster:
    """Starts, watches and stops one local cluster; use it as a context manager.

    Args:
        command: the program every task runs (argv list).
        workers: number of worker tasks.
        ps: number of parameter-server tasks.
        chief: whether to add a chief task.
        evaluator: whether to add a side-car evaluator task (outside the cluster).
        timeout: seconds before every task is killed (None: no limit).
        env: extra environment for every task (``TF_CONFIG`` is set per task).
        output: where the prefixed lines go; None keeps them only in `Task.lines`.
        cwd: working directory of the tasks.

    Example:

    ```python
    with LocalCluster([sys.executable, "train.py"], workers=2, timeout=300) as c:
        result = c.wait()
    assert result.returncode == 0, result.reason
    ```
    """

    def __init__(self, command: Sequence[str], *, workers: int, ps: int = 0, chief: bool = False,
                 timeout: float | None = None, env: Mapping[str, str] | None = None,
                 output: TextIO | None = sys.stdout, cwd: str | None = None,
                 max_restarts: int = 0, evaluator: bool = False) -> None:
        check_shape(workers, ps, chief)
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"--max_restarts must be 0 or more. Received: max_restarts={max_restarts!r}.")
        self.max_restarts = max_restarts
        self.restarts: dict[str, int] = {}
        if not command:
            raise ValueError("A command to run in every task is required, after `--`. "
                             f"Received: command={list(command)!r}.")
        self.command = list(command)
        self.spec = strategies_cluster.local_cluster(workers=workers, ps=ps, chief=chief)
        self.tasks = [Task(job, i, address) for job, addresses in self.spec.items()
                      for i, address in enumerate(addresses)]
        if evaluator:
            self.tasks.append(Task("evaluator", 0, ""))  # No server, so no address.
        self.timeout = timeout
        self._env = dict(env or {})
        self._output = output
        self._cwd = cwd
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.parameter_server = ps > 0

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        """Starts every task (all of them before any output thread, see `_child_setup`)."""
        for task in self.tasks:
            self._spawn(task)
        for task in self.tasks:
            self._watch(task)
        return self

    def task_environment(self, task: Task) -> dict[str, str]:
        """The whole environment of ``task``'s process: this one's, ``env``, and its ``TF_CONFIG``.

        `launch._rehearsal` overrides it to inject what an engine (Vertex,
        TFJob, JobSet) would set instead.
        """
        return {**os.environ, **self._env, "PYTHONUNBUFFERED": "1",
                "TF_CONFIG": json.dumps({"cluster": self.spec,
                                         "task": {"type": task.type, "index": task.index}})}

    def _spawn(self, task: Task) -> None:
        task.process = subprocess.Popen(
            self.command, env=self.task_environment(task), cwd=self._cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_child_setup)

    def _watch(self, task: Task) -> None:
        thread = threading.Thread(target=self._pump, args=(task,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _pump(self, task: Task) -> None:
        assert task.process is not None and task.process.stdout is not None
        for raw in task.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            task.lines.append(line)
            self._say(f"[{task.name}] {line}")

    def _say(self, line: str) -> None:
        if self._output is not None:
            with self._lock:
                print(line, file=self._output, flush=True)

    def needed(self, task: Task) -> bool:
        """Whether this task failing must stop the cluster."""
        return task.type != "evaluator" and not (self.parameter_server and task.type == "worker")

    def wait(self) -> Result:
        """Blocks until the cluster is done (see the module doc), then stops every task."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        reported: set[str] = set()
        try:
            while True:
                for task in self.tasks:
                    code = task.process.poll() if task.process else None
                    if code in (None, 0) or task.name in reported:
                        continue
                    reported.add(task.name)
                    if code == EXIT_TERMINATED:
                        self._wait_for_all(_PREEMPTED_GRACE_SECONDS)
                    if code == EXIT_USAGE:  # The same command would fail the same way.
                        return self._finish(EXIT_USAGE, f"{task.name} failed on a user error (exit "
                                            f"{EXIT_USAGE}); not restarted", task.name)
                    done = self.restarts.get(task.name, 0)
                    if done < self.max_restarts:
                        self.restarts[task.name] = done + 1
                        if self._restart(task, code):
                            reported.clear()
                        else:
                            reported.discard(task.name)
                        continue
                    if self.needed(task):
                        if self.max_restarts:
                            return self._finish(
                                EXIT_OUT_OF_RESTARTS, f"{task.name} {how_it_died(code)} after "
                                f"{done} restart(s), the most --max_restarts={self.max_restarts} allows",
                                task.name)
                        return self._finish(code if code > 0 else 1,
                                            f"{task.name} failed with exit code {code}{_said(task)}", task.name)
                    self._say(f"[local_cluster] {task.name} exited with code {code}; " + (
                        "training goes on without it." if task.type == "evaluator" else
                        "the coordinator re-runs its steps on the other workers."))
                if self._done():
                    return self._finish(0, "every task finished", None)
                if deadline is not None and time.monotonic() > deadline:
                    return self._finish(EXIT_TIMEOUT, f"timed out after {self.timeout:g} s", None)
                time.sleep(_POLL_SECONDS)
        except KeyboardInterrupt:
            return self._finish(EXIT_INTERRUPTED, "interrupted", None)

    def _restart(self, task: Task, code: int) -> bool:
        """Restarts after ``task`` died: itself alone (a parameter-server worker), else every task.

        A multi-worker (collective) cluster cannot take a new process in place
        of a dead one: its peers are inside collectives with the old one. So
        every task is stopped and started again, with the same ``TF_CONFIG``
        (the same ports, hence the same default ``--model_dir``), and the
        training program resumes from the newest checkpoint. The coordinator
        of a parameter-server cluster re-dispatches a restarted worker's steps
        by itself, so a worker is restarted alone. Returns whether every task was.
        """
        alone = not self.needed(task)
        restart = self.restarts[task.name]
        scope = "restarting it" if alone else "restarting every task; training resumes from the newest checkpoint"
        self._say(f"[local_cluster] {task.name} {how_it_died(code)}; restart {restart} of "
                  f"{self.max_restarts} for {task.name}: {scope}.")
        if alone:
            self._stop_processes([task])
            self._spawn(task)
            self._watch(task)
            return False
        self._stop_processes(self.tasks)
        self.start()
        return True

    def _wait_for_all(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and any(
                t.process is not None and t.process.poll() is None for t in self.tasks):
            time.sleep(_POLL_SECONDS)

    def _done(self) -> bool:
        # The evaluator ends by itself after the last checkpoint; a failed one was reported.
        evaluators = [t for t in self.tasks if t.type == "evaluator"]
        if any(t.process is not None and t.process.poll() is None for t in evaluators):
            return False
        if self.parameter_server:
            chief = next(t for t in self.tasks if t.type == "chief")
            return chief.process is not None and chief.process.poll() == 0
        return all(t.process is not None and t.process.poll() == 0 for t in self.tasks if t not in evaluators)

    def _finish(self, code: int, reason: str, failed: str | None) -> Result:
        self.stop()
        if code:
            self._say(f"[local_cluster] {reason}; stopped every task.")
        return Result(code, reason, failed, {t.name: list(t.lines) for t in self.tasks})

    def stop(self, first_signal: int = signal.SIGTERM) -> None:
        """Kills every task's process group: ``first_signal``, then SIGKILL after a grace period."""
        self._stop_processes(self.tasks, first_signal)

    def _stop_processes(self, tasks: list[Task], first_signal: int = signal.SIGTERM) -> None:
        alive = [t.process for t in tasks if t.process is not None]
        for process in alive:
            _signal_group(process, first_signal)
        deadline = time.monotonic() + _GRACE_SECONDS
        for process in alive:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for process in alive:
            # Also after a clean exit: a task's own children may still be there.
            _signal_group(process, signal.SIGKILL)
            process.wait()
        for thread in self._threads:
            thread.join(timeout=_GRACE_SECONDS)
        self._threads = [t for t in self._threads if t.is_alive()]

    @property
    def pids(self) -> list[int]:
        return [t.pid for t in self.tasks if t.pid is not None]


def _said(task: Task) -> str:
    """``: <its error line>`` when the task's last line is a launcher's one-line error, else ``""``.

    The line says why (e.g. which peer stopped sending heartbeats), which the
    exit code alone does not.
    """
    last = next((line for line in reversed(task.lines) if line.strip()), "")
    return f": {last.strip()}" if ": error: " in last else ""


def how_it_died(code: int) -> str:
    """``"exited with code 1"``, ``"was killed by SIGKILL"``, ``"was preempted (exit 143)"``."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code == EXIT_TERMINATED:
        return f"was preempted (exit {code})"
    return f"exited with code {code}"


def check_shape(workers: int, ps: int, chief: bool) -> None:
    """Raises ValueError for a cluster TensorFlow cannot run."""
    if workers < 1:
        raise ValueError(f"--workers must be at least 1. Received: workers={workers}.")
    if ps < 0:
        raise ValueError(f"--ps must be 0 or more. Received: ps={ps}.")
    if workers + ps + int(chief) > MAX_TASKS:
        raise ValueError(f"A local cluster runs at most {MAX_TASKS} tasks on this machine. "
                         f"Received: workers={workers}, ps={ps}, chief={chief}.")
    if ps and not chief:
        raise ValueError("A parameter-server cluster needs a coordinator: add --chief. "
                         f"Received: ps={ps}, chief={chief}.")


def run_cluster(command: Sequence[str], *, workers: int, ps: int = 0, chief: bool = False,
                timeout: float | None = None, env: Mapping[str, str] | None = None,
                output: TextIO | None = sys.stdout, cwd: str | None = None,
                max_restarts: int = 0, evaluator: bool = False) -> Result:
    """Runs ``command`` as every task of a local cluster and returns how it ended."""
    with LocalCluster(command, workers=workers, ps=ps, chief=chief, timeout=timeout, env=env,
                      output=output, cwd=cwd, max_restarts=max_restarts, evaluator=evaluator) as local:
        return local.wait()


# Resolved here, not in the forked child: the child should only make the call.
_PRCTL = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    # Linux: the task is killed when this launcher dies, even by SIGKILL, so a
    # killed launcher leaves no orphan task. Runs between fork and exec.
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # start_new_session: the group id is the pid.
    except (ProcessLookupError, PermissionError):
        pass


# Bounds are checked in `check_shape`, which names the flag in one line (exit 2).
_WORKERS = flags.DEFINE_integer("workers", 2, "Number of worker tasks (at least 1).")
_PS = flags.DEFINE_integer("ps", 0, "Number of parameter-server tasks (needs --chief).")
_CHIEF = flags.DEFINE_boolean("chief", False, "Add a chief task (the coordinator under --ps).")
_EVALUATOR = flags.DEFINE_boolean(
    "evaluator", False, "Add a side-car evaluator task (TF_CONFIG task type 'evaluator', outside the "
    "cluster): it evaluates each new checkpoint in the command's --model_dir.")
_TIMEOUT = flags.DEFINE_float("timeout", 0.0, "Seconds before every task is killed; 0: no limit.",
                              lower_bound=0.0)
_MAX_RESTARTS = flags.DEFINE_integer(
    "max_restarts", 0, "Restart a task that dies up to this many times (per task), as torchrun's "
    "--max-restarts: every task of a multi-worker cluster, a parameter-server worker alone. "
    "A task that exits 2 (a user error) is never restarted.", lower_bound=0, upper_bound=100)
# NaN passes the lower bound (every comparison with it is False) and would mean "no limit".
flags.register_validator("timeout", math.isfinite, "--timeout must be a finite number of seconds")


def main(argv: Sequence[str]) -> int:
    command = list(argv[1:])
    try:
        check_shape(_WORKERS.value, _PS.value, _CHIEF.value)
        if not command:
            raise ValueError("Give the command every task runs after `--`, e.g. "
                             "`python -m launch.local_cluster --workers=2 -- python train.py`.")
        if shutil.which(command[0]) is None:
            raise ValueError(f"Cannot run {command[0]!r}: no such executable (check the path "
                             "and its execute permission).")
    except ValueError as error:
        _console.fail(PROG, error)
    # SIGTERM (e.g. from a scheduler) stops the cluster like Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_terminated)
    local = LocalCluster(command, workers=_WORKERS.value, ps=_PS.value, chief=_CHIEF.value,
                         timeout=_TIMEOUT.value or None, max_restarts=_MAX_RESTARTS.value,
                         evaluator=_EVALUATOR.value)
    try:
        local.start()
        return local.wait().returncode
    except OSError as error:  # The command exists but cannot be executed.
        _console.fail(PROG, f"Cannot run {command[0]!r}: {error.strerror}.")
    except _Terminated:
        return EXIT_TERMINATED
    except KeyboardInterrupt:  # Ctrl-C before wait() took it over (the tasks may have started).
        return EXIT_INTERRUPTED
    finally:
        local.stop()


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that `finally` stops the cluster."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated()


# The parser `run` uses, for a caller that runs `main` under its own app.run
# (tests/launch/_fuzz_flags.py runs it in-process).
_parse_flags = _console.flags_parser(PROG)


def run() -> None:
    """Console-script entry point (``tfopt-local-cluster``)."""
    _console.run(main, PROG, __name__)


if __name__ == "__main__":
    run()
