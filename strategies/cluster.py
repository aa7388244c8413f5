"""Cluster helpers: write and check ``TF_CONFIG``, wait for peers, find free ports.

TensorFlow's gRPC servers are unauthenticated: anyone who can reach a task's
port can run ops in it. Keep every address here on a private network.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from strategies.building._config import check_address
from strategies.building._errors import StrategyError, invalid

TASK_TYPES = ("chief", "worker", "ps", "evaluator")
# Older AI Platform runtimes and SageMaker name the chief `master`; read as `chief`.
CHIEF_ALIAS = "master"
_SINGLE_TASK_JOBS = ("chief", "master", "evaluator")  # TensorFlow allows at most one of each.


def tf_config(
    *,
    workers: Sequence[str] = (),
    ps: Sequence[str] = (),
    chief: str | None = None,
    evaluator: str | None = None,
    task: tuple[str, int] = ("worker", 0),
) -> str:
    """Returns a validated ``TF_CONFIG`` JSON string for one task of a cluster.

    Args:
        workers: ``host:port`` of each worker, in task order.
        ps: ``host:port`` of each parameter server.
        chief: ``host:port`` of the chief, if the cluster has one.
        evaluator: ``host:port`` of a side-car evaluator, if any.
        task: ``(task_type, task_index)`` of the process this is for.

    Example:

    ```python
    os.environ["TF_CONFIG"] = strategies.cluster.tf_config(
        workers=["10.0.0.1:2222", "10.0.0.2:2222"], task=("worker", 1))
    ```

    Raises:
        StrategyError: If the result would not pass `validate`.
    """
    cluster: dict[str, list[str]] = {}
    if chief is not None:
        cluster["chief"] = [chief]
    if workers:
        cluster["worker"] = list(workers)
    if ps:
        cluster["ps"] = list(ps)
    if evaluator is not None:
        cluster["evaluator"] = [evaluator]
    if not isinstance(task, (tuple, list)) or len(task) != 2:
        raise StrategyError(
            f"`task` must be a (task_type, task_index) pair such as ('worker', 0). Received: task={task!r}."
        )
    config = {"cluster": cluster, "task": {"type": task[0], "index": task[1]}}
    validate(config)
    return json.dumps(config)


def validate(tf_config: str | Mapping[str, Any]) -> dict[str, Any]:
    """Checks a ``TF_CONFIG`` value and returns it parsed.

    Args:
        tf_config: The JSON string (as found in ``os.environ["TF_CONFIG"]``) or
            the parsed mapping.

    Returns:
        The parsed ``TF_CONFIG`` as a dict.

    A task of type ``evaluator`` may be absent from ``cluster``, as Vertex AI
    and TensorFlow's side-car evaluation write it: the evaluator joins no
    cluster. ``master`` is accepted as the chief's old name (not both).

    Raises:
        StrategyError: On malformed JSON, an unknown task type, a bad or
            duplicate address, or a task index out of range; the message names
            the offending key, e.g. ``TF_CONFIG['task']['index']``.
    """
    if isinstance(tf_config, str):
        try:
            parsed = json.loads(tf_config)
        except json.JSONDecodeError as e:
            raise StrategyError(
                f"`TF_CONFIG` must be valid JSON ({e.msg} at character {e.pos}); fix the "
                f"environment variable or build it with strategies.cluster.tf_config(). "
                f"Received: TF_CONFIG={_short(tf_config)!r}."
            ) from None
    else:
        parsed = tf_config
    if not isinstance(parsed, Mapping):
        raise _bad("TF_CONFIG", parsed, 'a JSON object like {"cluster": {...}, "task": {...}}')
    cluster = parsed.get("cluster")
    if not isinstance(cluster, Mapping) or not cluster:
        raise _bad("TF_CONFIG['cluster']", cluster, f"a non-empty mapping from {list(TASK_TYPES)} to address lists")
    seen: dict[str, str] = {}
    for job, addresses in cluster.items():
        key = f"TF_CONFIG['cluster'][{job!r}]"
        if job not in (*TASK_TYPES, CHIEF_ALIAS):
            raise _bad("TF_CONFIG['cluster']", job, f"keyed by task types {list(TASK_TYPES)}", "rename that job")
        if not isinstance(addresses, list) or not addresses:
            raise _bad(key, addresses, "a non-empty list of 'host:port' strings")
        if job in _SINGLE_TASK_JOBS and len(addresses) != 1:
            raise _bad(key, addresses, f"a list of exactly one address (TensorFlow allows one {job})")
        for i, address in enumerate(addresses):
            item = f"{key}[{i}]"
            if not isinstance(address, str):
                raise _bad(item, address, "a 'host:port' string")
            check_address(item, address)
            if address in seen:
                raise _bad(item, address, "an address no other task uses", f"{seen[address]} has it too")
            seen[address] = item
    if "chief" in cluster and CHIEF_ALIAS in cluster:
        raise _bad("TF_CONFIG['cluster']", sorted(cluster), "one of 'chief' and 'master' (the same role)")
    task = parsed.get("task")
    if not isinstance(task, Mapping):
        raise _bad("TF_CONFIG['task']", task, 'a mapping such as {"type": "worker", "index": 0}')
    task_type, index = task.get("type"), task.get("index")
    if task_type == "evaluator" and task_type not in cluster:
        # The side-car evaluator: outside the cluster, so any index names it.
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise _bad("TF_CONFIG['task']['index']", index, "a non-negative integer for the evaluator")
        return dict(parsed)
    if task_type not in cluster:
        raise _bad(
            "TF_CONFIG['task']['type']", task_type,
            f"one of the cluster's jobs {list(cluster)}, or 'evaluator' (a side-car evaluator)",
        )  # fmt: skip
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task_type]):
        raise _bad(
            "TF_CONFIG['task']['index']", index,
            f"an integer in [0, {len(cluster[task_type])}) for the {len(cluster[task_type])} {task_type} task(s)",
        )  # fmt: skip
    return dict(parsed)


def is_chief(cluster: Mapping[str, Sequence[str]], task_type: str, task_index: int) -> bool:
    """Whether a task is the chief: the ``chief`` task, else worker 0 when there is none."""
    if task_type == "evaluator":
        return False
    if "chief" in cluster:
        return task_type == "chief"
    return task_type == "worker" and task_index == 0


def task_name(task_type: str, task_index: int) -> str:
    """The name a message uses for a task, e.g. ``"worker 1"``."""
    return f"{task_type} {task_index}"


_TASK_DEVICE = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")


def lost_tasks(message: str) -> list[str]:
    """The tasks a TensorFlow error says stopped sending heartbeats, e.g. ``["worker 1"]``.

    MultiWorkerMirrored's coordination service aborts every collective when a
    task misses its heartbeats for ``--heartbeat_timeout`` seconds (a hung or
    dead peer), with an error that lists them after "The following tasks are
    unhealthy" (TF 2.20-2.21 wording). An empty list when it names none.
    """
    _, found, rest = message.partition("unhealthy")
    if not found:
        return []
    names = [task_name(job, int(index)) for job, index in _TASK_DEVICE.findall(rest.split("\n\n")[0])]
    return list(dict.fromkeys(names))


def leader_unreachable(message: str) -> bool:
    """Whether a TensorFlow error says this task's heartbeat to the coordination service timed out.

    The service runs in the leader (the chief, else worker 0): when the leader
    hangs, every other task's heartbeat RPC misses its ``--heartbeat_timeout``
    deadline and the task aborts its collectives with this error (TF 2.20-2.21
    wording: "Deadline Exceeded", "RPC: /tensorflow.CoordinationService/Heartbeat").
    """
    return "CoordinationService/Heartbeat" in message and "Deadline" in message


def free_ports(n: int) -> list[int]:
    """Returns ``n`` distinct unused TCP ports on this machine (via ``portpicker``)."""
    import portpicker  # Only cluster launches need it.

    ports: list[int] = []
    while len(ports) < n:
        port = portpicker.pick_unused_port()
        if port not in ports:
            ports.append(port)
    return ports


def local_cluster(*, workers: int, ps: int = 0, chief: bool = False) -> dict[str, list[str]]:
    """A cluster spec on 127.0.0.1 with free ports, e.g. ``{"worker": ["127.0.0.1:4123", ...]}``."""
    ports = iter(free_ports(workers + ps + int(chief)))
    spec: dict[str, list[str]] = {}
    if chief:
        spec["chief"] = [f"127.0.0.1:{next(ports)}"]
    spec["worker"] = [f"127.0.0.1:{next(ports)}" for _ in range(workers)]
    if ps:
        spec["ps"] = [f"127.0.0.1:{next(ports)}" for _ in range(ps)]
    return spec


def wait_for_peers(
    cluster: Mapping[str, Sequence[str]],
    *,
    timeout: float,
    task: tuple[str, int] | None = None,
    peers: Sequence[tuple[str, int]] | None = None,
    hold_port: bool = True,
    poll_interval: float = 0.2,
) -> None:
    """Blocks until every peer accepts a TCP connection, or raises naming the missing ones.

    TensorFlow itself waits for absent peers without any limit, so this runs
    first and turns a silent hang into one sentence.

    Args:
        cluster: Job name to addresses, as in ``TF_CONFIG['cluster']``.
        timeout: Seconds to wait (``--cluster_timeout``).
        task: This process's ``(task_type, task_index)``; it is not waited for.
        peers: The tasks to wait for; default: every task but ``task``.
        hold_port: Listen on ``task``'s port while waiting, so that peers
            running the same wait see this task (multi-worker tasks open their
            TensorFlow servers only after it). Not for a parameter-server chief,
            whose port tells its servers it is alive.
        poll_interval: Seconds between connection attempts.

    Raises:
        StrategyError: If a peer is unreachable after ``timeout`` seconds, or
            ``task``'s own port is taken by another process.
    """
    for name in ([task] if task is not None else []) + list(peers or []):
        if name[0] not in cluster or not 0 <= name[1] < len(cluster[name[0]]):
            raise _bad("task", name, f"a (task_type, task_index) of the cluster {dict(cluster)}")
    if peers is None:
        peers = [(job, i) for job, addrs in cluster.items() for i in range(len(addrs))]
    pending = {(job, i): cluster[job][i] for job, i in peers if (job, i) != task}
    own = cluster[task[0]][task[1]] if task is not None and hold_port else None
    deadline = time.monotonic() + timeout
    with _hold_port(own, task):
        while pending:
            for name, address in list(pending.items()):
                if _reachable(address, max(0.05, min(1.0, deadline - time.monotonic()))):
                    del pending[name]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(poll_interval)
    if pending:
        missing = ", ".join(f"{task_name(*name)} at {addr}" for name, addr in pending.items())
        raise StrategyError(
            f"Could not reach {missing} within {timeout:g} s; start that task, check its address "
            f"and firewall, or raise --cluster_timeout. Received: cluster_timeout={timeout:g}."
        )


def reachable(address: str, timeout: float = 1.0) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds."""
    return _reachable(address, timeout)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _reachable(address: str, timeout: float) -> bool:
    try:
        with socket.create_connection(_split(address), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def _hold_port(address: str | None, task: tuple[str, int] | None) -> Iterator[None]:
    """Listens on ``address``'s port (accepting and closing) for the duration."""
    if address is None:
        yield
        return
    host, port = _split(address)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # SO_REUSEADDR lets TensorFlow's server bind the port right after we close it.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        # Only on the task's own address (127.0.0.1 for local clusters), never
        # every interface; a name that is not this machine's falls back to all.
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno != errno.EADDRNOTAVAIL and not isinstance(e, socket.gaierror):
                raise
            sock.bind(("", port))
    except OSError as e:
        sock.close()
        key = "task_index" if task is None else f"{task_name(*task)}'s address"
        raise StrategyError(
            f"This task's port {port} is already in use ({e.strerror}); give {key} a free port "
            f"or stop the other process. Received: address={address!r}."
        ) from None
    sock.listen(64)
    sock.settimeout(0.1)
    stop = threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                conn.close()
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=accept_loop, name="hold-port", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1.0)
        sock.close()


def _bad(key: str, value: Any, expected: str, fix: str | None = None) -> StrategyError:
    return invalid(key, _short(value), expected, fix)


def _short(value: Any) -> Any:
    return value if len(repr(value)) <= 200 else f"{repr(value)[:200]}..."
