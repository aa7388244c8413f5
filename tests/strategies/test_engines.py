"""The cluster descriptions Vertex AI, Kubeflow's TFJob and JobSet write, resolved without a cloud.

Each case is the environment the engine injects (as its docs describe it),
fed to `strategies.detect`, `task_role` and `is_server_task`.
"""

import json

import pytest

import strategies
from strategies import StrategyConfig, StrategyError
from strategies.building import _detect, _resolve

_VERTEX_EXTRA = {"environment": "cloud", "job": {"workerPoolSpecs": [{"replicaCount": 1}]}}
_MWM = {"chief": ["cmle-training-workerpool0-ab-0:2222"],
        "worker": ["cmle-training-workerpool1-ab-0:2222", "cmle-training-workerpool1-ab-1:2222"]}
_PS = {**_MWM, "ps": ["cmle-training-workerpool2-ab-0:2222"]}


def _tf_config(cluster, task_type, index, **extra):
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index, **extra.pop(
        "task_extra", {})}, **extra})}


@pytest.fixture(autouse=True)
def no_accelerators(monkeypatch):
    monkeypatch.setattr(_detect, "tpu_probe", lambda config, environ: None)
    monkeypatch.setattr(_detect, "gpu_count", lambda: 0)


# (environment, strategy auto picks, task_role, is_server_task)
_CASES = {
    # Vertex AI: TF_CONFIG with `environment`, `job` and the task's `trial`.
    "vertex-mwm-chief": (_tf_config(_MWM, "chief", 0, task_extra={"trial": ""}, **_VERTEX_EXTRA),
                         "multi_worker_mirrored", "chief", False),
    "vertex-mwm-worker": (_tf_config(_MWM, "worker", 1, task_extra={"trial": "3"}, **_VERTEX_EXTRA),
                          "multi_worker_mirrored", "worker", False),
    "vertex-ps-chief": (_tf_config(_PS, "chief", 0, **_VERTEX_EXTRA), "parameter_server", "chief", False),
    "vertex-ps-worker": (_tf_config(_PS, "worker", 0, **_VERTEX_EXTRA), "parameter_server", "worker", True),
    "vertex-ps-ps": (_tf_config(_PS, "ps", 0, **_VERTEX_EXTRA), "parameter_server", "ps", True),
    # Vertex's evaluator pool: task.type `evaluator`, absent from the cluster.
    "vertex-evaluator": (_tf_config(_PS, "evaluator", 0, task_extra={"trial": ""}, **_VERTEX_EXTRA),
                         "default", "evaluator", False),
    "vertex-evaluator-mwm": (_tf_config(_MWM, "evaluator", 0, **_VERTEX_EXTRA), "default", "evaluator", False),
    # TFJob (training-operator v1): plain TF_CONFIG, the cluster named by its services.
    "tfjob-worker-only": (_tf_config({"worker": ["job-worker-0.ns.svc:2222", "job-worker-1.ns.svc:2222"]},
                                     "worker", 0), "multi_worker_mirrored", "chief", False),
    "tfjob-worker-1": (_tf_config({"worker": ["job-worker-0.ns.svc:2222", "job-worker-1.ns.svc:2222"]},
                                  "worker", 1), "multi_worker_mirrored", "worker", False),
    "tfjob-ps": (_tf_config({"chief": ["j-chief-0:2222"], "worker": ["j-worker-0:2222"], "ps": ["j-ps-0:2222"]},
                            "ps", 0), "parameter_server", "ps", True),
    # An evaluator listed in the cluster (TFJob's Evaluator replica type does this).
    "tfjob-evaluator-listed": (_tf_config({**_PS, "evaluator": ["j-evaluator-0:2222"]}, "evaluator", 0),
                               "default", "evaluator", False),
    "tfjob-ps-with-evaluator": (_tf_config({**_PS, "evaluator": ["j-evaluator-0:2222"]}, "worker", 1),
                                "parameter_server", "worker", True),
    # Older AI Platform runtimes and SageMaker: `master` for the chief.
    "master-chief": (_tf_config({"master": ["m:2222"], "worker": ["w:2222"], "ps": ["p:2222"]}, "master", 0),
                     "parameter_server", "chief", False),
    "master-worker": (_tf_config({"master": ["m:2222"], "worker": ["w:2222"]}, "worker", 0),
                      "multi_worker_mirrored", "worker", False),
}


@pytest.mark.parametrize("environ,strategy,role,server", list(_CASES.values()), ids=list(_CASES))
def test_engine_tf_config_resolves(environ, strategy, role, server):
    config = StrategyConfig()
    name, reason = strategies.detect(config, environ)
    assert name == strategy, reason
    assert strategies.task_role(config, environ) == role
    assert strategies.is_server_task(config, environ) is server


def test_evaluator_joins_no_cluster():
    found = _resolve.resolve(StrategyConfig(), _tf_config({**_PS, "evaluator": ["e:1"]}, "evaluator", 0))
    assert found.is_evaluator and not found.is_chief
    assert "evaluator" not in found.spec
    # Every other task's view leaves the evaluator out too: no peer waits for it.
    worker = _resolve.resolve(StrategyConfig(), _tf_config({**_PS, "evaluator": ["e:1"]}, "worker", 0))
    assert set(worker.spec) == {"chief", "worker", "ps"}


def test_master_is_read_as_chief_with_one_log_line(caplog):
    from absl import logging as absl_logging

    absl_logging.get_absl_logger().propagate = True
    environ = _tf_config({"master": ["m:2222"], "worker": ["w:2222"]}, "master", 0)
    with caplog.at_level("INFO"):
        found = _resolve.resolve(StrategyConfig(), environ)
    assert found.spec == {"chief": ["m:2222"], "worker": ["w:2222"]} and found.task == ("chief", 0)
    assert sum("'master'" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("environ,fragment", [
    (_tf_config({"master": ["m:1"], "chief": ["c:1"]}, "chief", 0), "one of 'chief' and 'master'"),
    (_tf_config(_MWM, "evaluator", -1), "TF_CONFIG['task']['index']"),
    (_tf_config(_MWM, "ps", 0), "or 'evaluator'"),
], ids=["master-and-chief", "evaluator-negative-index", "unknown-task"])
def test_bad_engine_tf_config_names_the_key(environ, fragment):
    with pytest.raises(StrategyError) as error:
        _resolve.resolve(StrategyConfig(), environ)
    assert fragment in str(error.value)


def _cluster_spec(task_pool, index, pools=(1, 2, 1, 1)):
    cluster = {f"workerpool{p}": [f"cmle-training-workerpool{p}-ab-{i}:2222" for i in range(n)]
               for p, n in enumerate(pools) if n}
    return {"CLUSTER_SPEC": json.dumps({"cluster": cluster, "environment": "cloud",
                                        "task": {"type": task_pool, "index": index, "trial": ""},
                                        "job": {"workerPoolSpecs": []}})}


@pytest.mark.parametrize("pool,index,strategy,role,server", [
    ("workerpool0", 0, "parameter_server", "chief", False),
    ("workerpool1", 1, "parameter_server", "worker", True),
    ("workerpool2", 0, "parameter_server", "ps", True),
    ("workerpool3", 0, "default", "evaluator", False),
], ids=["chief", "worker", "ps", "evaluator"])
def test_vertex_cluster_spec_where_tf_config_is_absent(pool, index, strategy, role, server):
    environ = _cluster_spec(pool, index)
    config = StrategyConfig()
    name, reason = strategies.detect(config, environ)
    assert (name, strategies.task_role(config, environ), strategies.is_server_task(config, environ)) == (
        strategy, role, server)
    assert "CLUSTER_SPEC" in reason
    found = _resolve.resolve(config, environ)
    assert found.spec["worker"] == ["cmle-training-workerpool1-ab-0:2222", "cmle-training-workerpool1-ab-1:2222"]
    assert "evaluator" not in found.spec


def test_vertex_cluster_spec_mwm_and_precedence():
    environ = _cluster_spec("workerpool1", 0, pools=(1, 1, 0, 0))
    assert strategies.detect(StrategyConfig(), environ)[0] == "multi_worker_mirrored"
    # TF_CONFIG, when present, wins: it is the engine's own TensorFlow description.
    both = {**environ, **_tf_config({"worker": ["a:1", "b:1"]}, "worker", 1)}
    assert _resolve.resolve(StrategyConfig(), both).source == "TF_CONFIG"


def test_bad_cluster_spec_names_the_key():
    with pytest.raises(StrategyError, match=r"CLUSTER_SPEC\['task'\]\['type'\]"):
        _resolve.resolve(StrategyConfig(), {"CLUSTER_SPEC": json.dumps(
            {"cluster": {"workerpool0": ["a:1"]}, "task": {"type": "chief", "index": 0}})})
    with pytest.raises(StrategyError, match=r"CLUSTER_SPEC, read as TF_CONFIG: .*\['index'\]"):
        _resolve.resolve(StrategyConfig(), _cluster_spec("workerpool1", 5))


def _jobset(role, job_index, pod_index, replicas="chief=1,worker=2,ps=1,evaluator=1", **extra):
    return {"JOBSET_NAME": "train", "REPLICATED_JOB_NAME": role, "JOB_INDEX": str(job_index),
            "JOB_COMPLETION_INDEX": str(pod_index), "TFOPT_JOBSET_REPLICAS": replicas, **extra}


@pytest.mark.parametrize("role,job_index,pod_index,strategy,task_role,server", [
    ("chief", 0, 0, "parameter_server", "chief", False),
    ("worker", 0, 1, "parameter_server", "worker", True),
    ("ps", 0, 0, "parameter_server", "ps", True),
    ("evaluator", 0, 0, "default", "evaluator", False),
], ids=["chief", "worker-1", "ps", "evaluator"])
def test_jobset_environment_resolves(role, job_index, pod_index, strategy, task_role, server):
    environ = _jobset(role, job_index, pod_index)
    config = StrategyConfig()
    assert strategies.detect(config, environ)[0] == strategy
    assert strategies.task_role(config, environ) == task_role
    assert strategies.is_server_task(config, environ) is server
    found = _resolve.resolve(config, environ)
    assert found.source == "JobSet"
    assert found.spec == {
        "chief": ["train-chief-0-0.train:2222"],
        "worker": ["train-worker-0-0.train:2222", "train-worker-0-1.train:2222"],
        "ps": ["train-ps-0-0.train:2222"],
    }
    assert found.task_index == pod_index


def test_jobset_jobs_of_several_pods_port_subdomain_and_rehearsal_map():
    environ = _jobset("worker", 1, 0, replicas="worker=2x2", TFOPT_JOBSET_PORT="3000",
                      TFOPT_JOBSET_SUBDOMAIN="svc")
    found = _resolve.resolve(StrategyConfig(), environ)
    assert found.spec == {"worker": ["train-worker-0-0.svc:3000", "train-worker-0-1.svc:3000",
                                     "train-worker-1-0.svc:3000", "train-worker-1-1.svc:3000"]}
    assert found.task == ("worker", 2)  # JOB_INDEX * pods per Job + JOB_COMPLETION_INDEX.
    assert strategies.detect(StrategyConfig(), environ)[0] == "multi_worker_mirrored"
    mapped = {f"train-worker-{j}-{p}.svc:3000": f"127.0.0.1:{4000 + 2 * j + p}" for j in (0, 1) for p in (0, 1)}
    found = _resolve.resolve(StrategyConfig(), {**environ, "TFOPT_JOBSET_ADDRESS_MAP": json.dumps(mapped)})
    assert found.spec == {"worker": ["127.0.0.1:4000", "127.0.0.1:4001", "127.0.0.1:4002", "127.0.0.1:4003"]}


def test_jobset_comes_after_tf_config_and_before_slurm():
    environ = {**_jobset("worker", 0, 0), "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "4"}
    assert _resolve.resolve(StrategyConfig(), environ).source == "JobSet"
    environ.update(_tf_config({"worker": ["a:1", "b:1"]}, "worker", 1))
    assert _resolve.resolve(StrategyConfig(), environ).source == "TF_CONFIG"
    # A JobSet pod without the project's variable is not read as a cluster.
    plain = {k: v for k, v in _jobset("worker", 0, 0).items() if k != "TFOPT_JOBSET_REPLICAS"}
    assert _resolve.resolve(StrategyConfig(), plain) is None


@pytest.mark.parametrize("environ,key", [
    ({**_jobset("worker", 0, 0), "JOB_COMPLETION_INDEX": ""}, "JOB_COMPLETION_INDEX"),
    (_jobset("trainer", 0, 0), "REPLICATED_JOB_NAME"),
    (_jobset("worker", 0, 0, replicas="worker=two"), "TFOPT_JOBSET_REPLICAS"),
    (_jobset("worker", 0, 0, replicas="worker=0"), "TFOPT_JOBSET_REPLICAS"),
    (_jobset("worker", 0, 5), "JOB_INDEX/JOB_COMPLETION_INDEX"),
    (_jobset("worker", 0, 0, TFOPT_JOBSET_PORT="http"), "TFOPT_JOBSET_PORT"),
    (_jobset("worker", 0, 0, TFOPT_JOBSET_ADDRESS_MAP="[1]"), "TFOPT_JOBSET_ADDRESS_MAP"),
], ids=["no-index", "unknown-role", "size-not-int", "size-zero", "index-out-of-range", "bad-port", "bad-map"])
def test_bad_jobset_environment_names_the_variable(environ, key):
    with pytest.raises(StrategyError) as error:
        _resolve.resolve(StrategyConfig(), environ)
    assert f"`{key}`" in str(error.value)


def test_jobset_parameter_servers_without_a_chief_name_the_variable():
    from strategies.building import _cluster_builders

    found = _resolve.resolve(StrategyConfig(), _jobset("ps", 0, 0, replicas="worker=1,ps=1"))
    with pytest.raises(StrategyError, match="`TFOPT_JOBSET_REPLICAS`"):
        _cluster_builders.check_parameter_server_cluster(found)


def test_evaluator_from_host_flags():
    config = StrategyConfig(worker_hosts=["127.0.0.1:1", "127.0.0.1:2"], task_type="evaluator", task_index=0)
    assert strategies.task_role(config, {}) == "evaluator"
    assert strategies.detect(config, {})[0] == "default"
    assert not strategies.is_server_task(config, {})


@pytest.mark.parametrize("name", ["multi_worker_mirrored", "parameter_server"])
def test_building_a_cluster_strategy_on_the_evaluator_points_to_evaluate_checkpoints(name, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", _tf_config(_PS if name == "parameter_server" else _MWM, "evaluator", 0)[
        "TF_CONFIG"])
    with pytest.raises(StrategyError, match="side-car evaluator.*evaluate_checkpoints"):
        strategies.build(name)
