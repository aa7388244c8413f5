"""Multi-worker and parameter-server strategies built against real local processes.

Every task is a fresh `sys.executable -c` process on 127.0.0.1 with free ports;
each has a deadline, and every process still alive at the end of a test is
killed, so no test leaves an orphan.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import keras
import pytest
import tensorflow as tf

from strategies import cluster as cluster_lib

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
# Per test. Real runs take 10-20 s on 2 idle cores, but `make test` runs the
# cluster tests on two xdist workers, beside the equivalence fixture's five
# processes: there (load ~8) importing TensorFlow alone took one task 45 s.
# Every wait below is a guard against a hang, sized for that load.
DEADLINE_S = 150
CLUSTER_TIMEOUT_S = 120

_MWM_TASK = """
import json, sys
import tensorflow as tf
import strategies
from strategies import flags as strategy_flags

# Worker 0 takes its cluster from TF_CONFIG, worker 1 from flags: both paths.
config = strategy_flags.parse_notebook_flags(sys.argv, strategy="multi_worker_mirrored", cluster_timeout=CLUSTER_TIMEOUT_S)
strategy = strategies.build(config)

@tf.function
def step():
    def replica_fn():
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce("SUM", tf.cast(ctx.replica_id_in_sync_group, tf.float32) + 1.0)
    return strategy.run(replica_fn)

total = float(strategy.experimental_local_results(step())[0])
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "sum": total,
                  "chief": strategy.extended.should_checkpoint, "describe": strategies.describe(strategy)}))
""".replace("CLUSTER_TIMEOUT_S", str(CLUSTER_TIMEOUT_S))

_PS_CHIEF = """
import json
import tensorflow as tf
import strategies

strategy = strategies.build("parameter_server", cluster_timeout=CLUSTER_TIMEOUT_S)
coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
with strategy.scope():
    counter = tf.Variable(0.0)

@tf.function
def step():
    counter.assign_add(1.0)
    return counter.read_value()

for _ in range(6):
    coordinator.schedule(step)
coordinator.join()
print(json.dumps({"counter": float(counter.numpy()), "describe": strategies.describe(strategy)}))
""".replace("CLUSTER_TIMEOUT_S", str(CLUSTER_TIMEOUT_S))

_PS_SERVER = """
import sys
import strategies

try:
    strategies.serve_forever(strategies.StrategyConfig(strategy="parameter_server", cluster_timeout=CLUSTER_TIMEOUT_S),
                             timeout=CLUSTER_TIMEOUT_S + 10, poll_interval=0.5)
except strategies.StrategyError as e:
    print(e)
    sys.exit(3)
print("served")
""".replace("CLUSTER_TIMEOUT_S", str(CLUSTER_TIMEOUT_S))


def _env(tf_config=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    if tf_config is not None:
        env["TF_CONFIG"] = tf_config
    return env


@contextmanager
def _processes(tmp_path):
    """Starts tasks with `spawn(name, code, env, *args)`; kills any still running at exit."""
    procs = {}

    def spawn(name, code, env, *args):
        out = open(tmp_path / f"{name}.out", "w+")
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, env=env,
            stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        procs[name] = (proc, out)
        return proc

    try:
        yield spawn, procs
    finally:
        for proc, out in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            out.close()


def _wait(procs, names, deadline):
    """Waits for `names` to exit by `deadline`; returns {name: (returncode, output)}."""
    results = {}
    for name in names:
        proc, out = procs[name]
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        out.flush()
        out.seek(0)
        results[name] = (proc.poll(), out.read())
    for name, (rc, text) in results.items():
        assert rc is not None, f"{name} still running at the deadline:\n{text[-3000:]}"
    return results


def _last_json(text):
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def test_multi_worker_mirrored_two_processes(tmp_path):
    spec = cluster_lib.local_cluster(workers=2)
    deadline = time.monotonic() + DEADLINE_S
    with _processes(tmp_path) as (spawn, procs):
        spawn("worker0", _MWM_TASK, _env(cluster_lib.tf_config(workers=spec["worker"], task=("worker", 0))))
        spawn("worker1", _MWM_TASK, _env(), f"--worker_hosts={','.join(spec['worker'])}",
              "--task_type=worker", "--task_index=1")  # fmt: skip
        results = _wait(procs, ["worker0", "worker1"], deadline)
    for index, name in enumerate(["worker0", "worker1"]):
        rc, text = results[name]
        assert rc == 0, text[-3000:]
        got = _last_json(text)
        assert (got["replicas"], got["sum"], got["chief"]) == (2, 3.0, index == 0), got
        assert got["describe"].startswith(
            f"MultiWorkerMirroredStrategy: 2 replicas across 2 workers; this is worker {index}"
        ), got["describe"]


def test_parameter_server_chief_worker_ps(tmp_path):
    spec = cluster_lib.local_cluster(workers=1, ps=1, chief=True)

    def tf_config(task):
        return cluster_lib.tf_config(chief=spec["chief"][0], workers=spec["worker"], ps=spec["ps"], task=task)

    deadline = time.monotonic() + DEADLINE_S
    servers = ["worker0", "ps0"]
    with _processes(tmp_path) as (spawn, procs):
        for name, task in zip(servers, [("worker", 0), ("ps", 0)], strict=True):
            spawn(name, _PS_SERVER, _env(tf_config(task)))
        spawn("chief", _PS_CHIEF, _env(tf_config(("chief", 0))))
        chief = _wait(procs, ["chief"], deadline)["chief"]
        # The servers must notice the chief is gone and stop by themselves.
        served = _wait(procs, servers, time.monotonic() + 15)
    assert chief[0] == 0, chief[1][-3000:]
    got = _last_json(chief[1])
    assert got["counter"] == 6.0
    assert got["describe"] == ("ParameterServerStrategy: 1 worker, 1 ps (partitioner: MinSizePartitioner); "
                               f"TensorFlow {tf.__version__}, Keras {keras.__version__}")
    for name, (rc, text) in served.items():
        assert rc == 0 and "served" in text, f"{name}: {text[-2000:]}"
