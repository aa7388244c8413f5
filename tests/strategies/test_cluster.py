"""Cluster helpers: TF_CONFIG, peers, roles, free ports and the Slurm seam (single process)."""

import json
import socket
import threading

import pytest

import strategies
from strategies import StrategyConfig, StrategyError
from strategies import cluster as cluster_lib
from strategies.building import _resolve, _server


def test_tf_config_round_trips_through_validate():
    text = cluster_lib.tf_config(
        workers=["10.0.0.1:2222", "10.0.0.2:2222"], ps=["10.0.0.3:2222"], chief="10.0.0.4:2222",
        task=("ps", 0),
    )  # fmt: skip
    parsed = json.loads(text)
    assert parsed == {
        "cluster": {"chief": ["10.0.0.4:2222"], "worker": ["10.0.0.1:2222", "10.0.0.2:2222"],
                    "ps": ["10.0.0.3:2222"]},
        "task": {"type": "ps", "index": 0},
    }  # fmt: skip
    assert cluster_lib.validate(text) == parsed


def test_tf_config_rejects_its_own_bad_task():
    with pytest.raises(StrategyError, match=r"TF_CONFIG\['task'\]\['index'\]"):
        cluster_lib.tf_config(workers=["h:1"], task=("worker", 3))


def test_validate_keeps_extra_top_level_keys():
    # Vertex AI and others add keys such as "job" and "environment".
    config = {"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 0}, "environment": "cloud"}
    assert cluster_lib.validate(config)["environment"] == "cloud"


@pytest.mark.parametrize(
    "cluster,task,expected",
    [
        ({"worker": ["a:1", "b:1"]}, ("worker", 0), True),
        ({"worker": ["a:1", "b:1"]}, ("worker", 1), False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, ("worker", 0), False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, ("chief", 0), True),
        ({"chief": ["c:1"], "worker": ["a:1"], "ps": ["p:1"]}, ("ps", 0), False),
    ],
    ids=["worker0-no-chief", "worker1", "worker0-with-chief", "chief", "ps"],
)
def test_is_chief(cluster, task, expected):
    assert cluster_lib.is_chief(cluster, *task) is expected


def test_free_ports_are_distinct_and_bindable():
    ports = cluster_lib.free_ports(3)
    assert len(set(ports)) == 3
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_local_cluster_shape():
    spec = cluster_lib.local_cluster(workers=2, ps=1, chief=True)
    assert [len(spec[j]) for j in ("chief", "worker", "ps")] == [1, 2, 1]
    addresses = [a for addrs in spec.values() for a in addrs]
    assert len(set(addresses)) == 4 and all(a.startswith("127.0.0.1:") for a in addresses)


def _listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # Never accepted: room for every probe a test makes.
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


def test_wait_for_peers_returns_once_peers_listen():
    sock, address = _listener()
    with sock:
        cluster_lib.wait_for_peers({"worker": [address]}, timeout=5)


def test_wait_for_peers_names_the_unreachable_peer():
    sock, up = _listener()
    down = f"127.0.0.1:{cluster_lib.free_ports(1)[0]}"
    with sock, pytest.raises(StrategyError) as info:
        cluster_lib.wait_for_peers({"worker": [up, down]}, timeout=0.5)
    message = str(info.value)
    assert f"worker 1 at {down}" in message and "cluster_timeout" in message
    assert "worker 0" not in message


def test_wait_for_peers_is_symmetric():
    # Two tasks that each wait for the other, then start their server on their
    # own port (as MultiWorkerMirroredStrategy does), must both get through:
    # each holds its port open while waiting so the other can see it.
    spec = {"worker": [f"127.0.0.1:{p}" for p in cluster_lib.free_ports(2)]}
    errors, done = [], threading.Barrier(2, timeout=15)

    def task(index):
        try:
            cluster_lib.wait_for_peers(spec, timeout=10, task=("worker", index))
        except StrategyError as e:
            errors.append(e)
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", int(spec["worker"][index].rsplit(":", 1)[1])))
            server.listen(8)
            done.wait()

    threads = [threading.Thread(target=task, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=15)
    assert not errors and not any(t.is_alive() for t in threads)


def test_wait_for_peers_reports_own_port_in_use():
    sock, address = _listener()
    with sock, pytest.raises(StrategyError, match="already in use"):
        cluster_lib.wait_for_peers({"worker": [address]}, timeout=1, task=("worker", 0))


_PS_FLAGS = dict(
    strategy="parameter_server", chief_host="127.0.0.1:2000", worker_hosts=["127.0.0.1:2001"],
    ps_hosts=["127.0.0.1:2002"], cluster_timeout=1,
)  # fmt: skip


@pytest.mark.parametrize(
    "task,role,server",
    [(("chief", 0), "chief", False), (("worker", 0), "worker", True), (("ps", 0), "ps", True)],
    ids=["chief", "worker", "ps"],
)
def test_task_role_and_is_server_task_from_flags(task, role, server):
    config = StrategyConfig(task_type=task[0], task_index=task[1], **_PS_FLAGS)
    assert strategies.task_role(config, environ={}) == role
    assert strategies.is_server_task(config, environ={}) is server


def test_task_role_from_tf_config_and_alone():
    tf_config = cluster_lib.tf_config(workers=["h:1", "h:2"], task=("worker", 1))
    assert strategies.task_role(StrategyConfig(), environ={"TF_CONFIG": tf_config}) == "worker"
    assert strategies.task_role(StrategyConfig(), environ={}) == "chief"
    # Multi-worker workers train; only parameter-server tasks serve.
    assert not strategies.is_server_task(StrategyConfig(), environ={"TF_CONFIG": tf_config})


def test_is_server_task_for_auto_with_ps_tf_config():
    tf_config = cluster_lib.tf_config(chief="h:3", workers=["h:1"], ps=["h:2"], task=("ps", 0))
    assert strategies.is_server_task(StrategyConfig(), environ={"TF_CONFIG": tf_config})


def test_flags_cluster_wins_over_tf_config():
    tf_config = cluster_lib.tf_config(workers=["h:1", "h:2"], task=("worker", 1))
    config = StrategyConfig(strategy="multi_worker_mirrored", worker_hosts=["a:1"], task_type="worker", task_index=0)
    found = _resolve.resolve(config, {"TF_CONFIG": tf_config})
    assert (found.spec, found.task, found.source) == ({"worker": ["a:1"]}, ("worker", 0), "flags")


def test_empty_tf_config_means_no_cluster():
    assert _resolve.resolve(StrategyConfig(), {"TF_CONFIG": "{}"}) is None


SLURM_ENV = {
    "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "node[07-08]",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
}  # fmt: skip


def test_slurm_seam_resolves_cluster(monkeypatch):
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    found = _resolve.resolve(StrategyConfig(strategy="multi_worker_mirrored"))
    assert found.spec == {"worker": ["node07:8888", "node08:8888"]}
    assert (found.task, found.source, found.is_chief) == (("worker", 1), "Slurm", False)
    assert strategies.detect()[0] == "multi_worker_mirrored"


def test_single_task_slurm_job_is_not_a_cluster():
    assert _resolve.resolve(StrategyConfig(), {**SLURM_ENV, "SLURM_STEP_NUM_TASKS": "1"}) is None


def test_broken_slurm_env_is_a_strategy_error(monkeypatch):
    for key, value in {**SLURM_ENV, "SLURM_STEP_NODELIST": "node[07-"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(StrategyError, match="SLURM"):
        _resolve.resolve(StrategyConfig())


def test_resolver_matches_tf_config_resolver(monkeypatch):
    import tensorflow as tf

    tf_config = cluster_lib.tf_config(chief="h:3", workers=["h:1"], ps=["h:2"], task=("worker", 0))
    monkeypatch.setenv("TF_CONFIG", tf_config)
    ours = _resolve.resolve(StrategyConfig()).resolver()
    theirs = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    assert ours.cluster_spec().as_dict() == theirs.cluster_spec().as_dict()
    assert (ours.task_type, ours.task_id, ours.rpc_layer) == (theirs.task_type, theirs.task_id, "grpc")


def _ps_cluster(chief):
    return _resolve.Cluster({"chief": [chief], "worker": ["127.0.0.1:2"], "ps": ["127.0.0.1:3"]}, "ps", 0, "flags")


def test_server_loop_names_a_chief_that_never_comes():
    chief = f"127.0.0.1:{cluster_lib.free_ports(1)[0]}"
    with pytest.raises(StrategyError, match=f"The chief at {chief} did not come up within 0.3 s"):
        _server._wait_for_chief(_ps_cluster(chief), cluster_timeout=0.3, timeout=None, poll=0.05)


def test_server_loop_stops_when_the_chief_goes_away():
    sock, chief = _listener()
    closer = threading.Timer(0.5, sock.close)
    closer.start()
    try:
        _server._wait_for_chief(_ps_cluster(chief), cluster_timeout=5, timeout=10, poll=0.05)
    finally:
        closer.cancel()
        sock.close()
    assert not cluster_lib.reachable(chief, timeout=0.2)  # It returned because the chief left.


def test_server_loop_stops_at_its_timeout_while_the_chief_lives():
    sock, chief = _listener()
    with sock:
        _server._wait_for_chief(_ps_cluster(chief), cluster_timeout=5, timeout=0.3, poll=0.05)
        assert cluster_lib.reachable(chief)


def test_wait_for_peers_rejects_a_task_outside_the_cluster():
    with pytest.raises(StrategyError, match="`task` must be a"):
        cluster_lib.wait_for_peers({"worker": ["127.0.0.1:1"]}, timeout=1, task=("worker", 1))


def test_lost_tasks_and_leader_unreachable_read_tensorflows_messages():
    # The two ways a collective is aborted for a hung task (TF 2.21 wording, measured in
    # tests/launch/test_hung_peer.py): the leader's service names the lost task; the others'
    # heartbeat to a hung leader times out.
    unhealthy = ("Collective ops is aborted by: The following tasks are unhealthy (stopped sending "
                 "heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.\n\nAdditional ...")
    heartbeat = ("Collective ops is aborted by: Deadline Exceeded\nRPC: /tensorflow.CoordinationService/Heartbeat\n"
                 "The error could be from a previous operation. Restart your program to reset.")
    assert cluster_lib.lost_tasks(unhealthy) == ["worker 1"]
    assert not cluster_lib.leader_unreachable(unhealthy)
    assert cluster_lib.lost_tasks(heartbeat) == [] and cluster_lib.leader_unreachable(heartbeat)
    assert not cluster_lib.leader_unreachable("Deadline Exceeded\nRPC: /tensorflow.WorkerService/RecvBuf")
