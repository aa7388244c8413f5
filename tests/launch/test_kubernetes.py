"""launch.kubernetes: JobSet and TFJob manifests checked against the engines' schemas; --execute up to kubectl.

What checks what, all offline:
* the Service and every pod template and Job (the JobSet's replicated jobs,
  wrapped as ``batch/v1`` Jobs; the TFJob's pod templates, as ``v1``
  PodTemplates): kubernetes-validate, strict (an unknown field fails);
* the TFJob: the kubeflow-training SDK's ``KubeflowOrgV1TFJob`` model, field
  by field (`_cluster_jobs.strict_load`), then deserialized by its client;
* the JobSet's own fields: no JobSet schema package exists on the index, so
  they are checked against `JOBSET_FIELDS`, transcribed from JobSet's API
  types (kubernetes-sigs/jobset, api/jobset/v1alpha2/jobset_types.go).
No test here reaches a cluster (there is none): ``--execute`` runs up to the
``kubectl apply`` call, which a spy stands in for.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from absl import flags
from absl.testing import flagsaver

from launch import kubernetes as k8s_launcher
from tests.launch import _cluster_jobs

kubernetes_validate = pytest.importorskip("kubernetes_validate")
kubeflow_models = pytest.importorskip("kubeflow.training.models")
k8s_models = pytest.importorskip("kubernetes.client.models")

K8S_VERSION = kubernetes_validate.latest_version()
# JobSet v1alpha2's fields, as its Go types declare them (json names).
JOBSET_FIELDS = {
    "JobSet": {"apiVersion", "kind", "metadata", "spec"},
    "JobSetSpec": {"replicatedJobs", "network", "successPolicy", "failurePolicy", "startupPolicy",
                   "suspend", "coordinator", "managedBy", "ttlSecondsAfterFinished", "volumeClaimPolicies"},
    "ReplicatedJob": {"name", "groupName", "template", "replicas", "dependsOn"},
    "Network": {"enableDNSHostnames", "subdomain", "publishNotReadyAddresses"},
    "SuccessPolicy": {"operator", "targetReplicatedJobs"},
    "FailurePolicy": {"maxRestarts", "restartStrategy", "rules"},
    "FailurePolicyRule": {"name", "action", "onJobFailureReasons", "onJobFailureMessagePatterns",
                          "targetReplicatedJobs"},
}
_RULE_NAME = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")  # JobSet's own pattern.


def _strict(obj: dict) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _fields(kind: str, obj: dict) -> None:
    unknown = set(obj) - JOBSET_FIELDS[kind]
    assert not unknown, f"{kind} has no field {sorted(unknown)}"


def _check_jobset(js: dict) -> None:
    _fields("JobSet", js)
    spec = js["spec"]
    _fields("JobSetSpec", spec)
    _fields("Network", spec["network"])
    _fields("FailurePolicy", spec["failurePolicy"])
    for rule in spec["failurePolicy"].get("rules", []):
        _fields("FailurePolicyRule", rule)
        assert _RULE_NAME.fullmatch(rule["name"]), rule["name"]
    if "successPolicy" in spec:
        _fields("SuccessPolicy", spec["successPolicy"])
        assert set(spec["successPolicy"]["targetReplicatedJobs"]) <= {r["name"] for r in spec["replicatedJobs"]}
    for replicated in spec["replicatedJobs"]:
        _fields("ReplicatedJob", replicated)
        # The Job template's spec is batch/v1's JobSpec: validated as a whole Job.
        _strict({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": replicated["name"]},
                 "spec": replicated["template"]["spec"]})


@pytest.mark.parametrize("mix", list(_cluster_jobs.MIXES))
def test_jobset_manifest_passes_the_schemas_with_one_indexed_job_per_role(mix):
    job = _cluster_jobs.job(mix, machine_type=["n2-standard-8"], accelerator=["worker=nvidia-tesla-t4:2"],
                            namespace="ml", max_restarts=2)
    service, js = k8s_launcher.manifests(job, "jobset")
    _strict(service)
    _check_jobset(js)
    assert service["spec"]["clusterIP"] == "None" and js["spec"]["network"]["subdomain"] == service["metadata"]["name"]
    replicated = {r["name"]: r["template"]["spec"] for r in js["spec"]["replicatedJobs"]}
    assert list(replicated) == [r.name for r in job.roles]
    for role in job.roles:
        spec = replicated[role.name]
        assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"] == role.replicas
        container = spec["template"]["spec"]["containers"][0]
        assert container["command"] == list(_cluster_jobs.COMMAND)
        env = {e["name"]: e for e in container["env"]}
        assert env["TFOPT_JOBSET_REPLICAS"]["value"] == ",".join(f"{r.name}={r.replicas}" for r in job.roles)
        assert env["JOB_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['jobset.sigs.k8s.io/job-index']"
        has_gpu = role.name == "worker"
        assert ("resources" in container) == has_gpu
    assert js["spec"]["failurePolicy"]["maxRestarts"] == 2
    assert ("successPolicy" in js["spec"]) == job.parameter_server


@pytest.mark.parametrize("mix", list(_cluster_jobs.MIXES))
def test_tfjob_manifest_loads_into_the_kubeflow_sdk_model(mix):
    job = _cluster_jobs.job(mix, accelerator=["nvidia-tesla-t4", "ps=none"], max_restarts=3)
    (tfjob,) = k8s_launcher.manifests(job, "tfjob")
    modules = (kubeflow_models, k8s_models)
    _cluster_jobs.strict_load(kubeflow_models.KubeflowOrgV1TFJob, tfjob, modules)
    from kubeflow.training.api_client import ApiClient

    class _Response:
        data = json.dumps(tfjob)

    model = ApiClient().deserialize(_Response(), "KubeflowOrgV1TFJob")
    specs = model.spec.tf_replica_specs
    assert list(specs) == [k8s_launcher.TFJOB_REPLICA_TYPES[r.name] for r in job.roles]
    for role in job.roles:
        spec = specs[k8s_launcher.TFJOB_REPLICA_TYPES[role.name]]
        assert spec.replicas == role.replicas and spec.restart_policy == "ExitCode"
        assert spec.template.spec.containers[0].name == "tensorflow"
        assert spec.template.spec.containers[0].ports[0].container_port == 2222
        _strict({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.name},
                 "template": tfjob["spec"]["tfReplicaSpecs"][k8s_launcher.TFJOB_REPLICA_TYPES[role.name]]["template"]})
    assert model.spec.run_policy.backoff_limit == 3


def test_the_schema_checks_can_fail():
    job = _cluster_jobs.job("ps-evaluator")
    service, js = k8s_launcher.manifests(job, "jobset")
    service["spec"]["headless"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        _strict(service)
    js["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]["cmd"] = ["x"]
    with pytest.raises(kubernetes_validate.ValidationError):
        _check_jobset(js)
    (tfjob,) = k8s_launcher.manifests(job, "tfjob")
    tfjob["spec"]["tfReplicaSpecs"]["PS"]["restartPolicies"] = "Never"
    with pytest.raises(_cluster_jobs.UnknownField, match="restartPolicies"):
        _cluster_jobs.strict_load(kubeflow_models.KubeflowOrgV1TFJob, tfjob, (kubeflow_models, k8s_models))


def test_jobset_environment_is_read_from_the_manifest_and_maps_hosts():
    job = _cluster_jobs.job("ps-evaluator")
    addresses = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2", "127.0.0.1:3"], "ps": ["127.0.0.1:4"],
                 "evaluator": ["127.0.0.1:5"]}
    env = k8s_launcher.jobset_environment(job, ("worker", 1), addresses)
    assert {k: env[k] for k in ("JOBSET_NAME", "REPLICATED_JOB_NAME", "JOB_INDEX", "JOB_COMPLETION_INDEX")} \
        == {"JOBSET_NAME": "digits", "REPLICATED_JOB_NAME": "worker", "JOB_INDEX": "0", "JOB_COMPLETION_INDEX": "1"}
    assert env["TFOPT_JOBSET_REPLICAS"] == "chief=1,worker=2,ps=1,evaluator=1"
    assert json.loads(env["TFOPT_JOBSET_ADDRESS_MAP"])["digits-worker-0-1.digits:2222"] == "127.0.0.1:3"


def test_tfjob_environment_is_the_operators_tf_config():
    job = _cluster_jobs.job("mwms-evaluator")
    addresses = {"worker": ["127.0.0.1:2", "127.0.0.1:3"], "evaluator": ["127.0.0.1:5"]}
    tf_config = json.loads(k8s_launcher.tfjob_environment(job, ("evaluator", 0), addresses)["TF_CONFIG"])
    assert tf_config == {"cluster": {"worker": ["127.0.0.1:2", "127.0.0.1:3"]},
                         "task": {"type": "evaluator", "index": 0}, "environment": "cloud"}


def _main(argv: list[str]) -> None:
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        rest = flags.FLAGS(["launch.kubernetes", *argv])
        sys.exit(k8s_launcher.main(rest))


def test_execute_pipes_the_manifest_to_kubectl_apply(monkeypatch):
    """A SPY, not a cluster: the path runs up to `kubectl apply -f -`."""
    calls = []
    monkeypatch.setattr(k8s_launcher.shutil, "which", lambda name: f"/usr/bin/{name}")

    def spy(argv, input, check):
        calls.append((argv, input))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(k8s_launcher.subprocess, "run", spy)
    with pytest.raises(SystemExit) as exit_info:
        _main(["--execute", "--kind=tfjob", "--workers=2", f"--image={_cluster_jobs.IMAGE}", "--",
               *_cluster_jobs.COMMAND])
    assert exit_info.value.code == 0
    ((argv, text),) = calls
    assert argv == ["/usr/bin/kubectl", "apply", "-f", "-"]
    assert yaml.safe_load(text.decode())["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2


def test_execute_without_kubectl_applies_nothing(monkeypatch, capsys):
    monkeypatch.setattr(k8s_launcher.shutil, "which", lambda name: None)
    monkeypatch.setattr(k8s_launcher.subprocess, "run", lambda *a, **k: pytest.fail("ran kubectl"))
    with pytest.raises(SystemExit) as exit_info:
        _main(["--execute", f"--image={_cluster_jobs.IMAGE}", "--", *_cluster_jobs.COMMAND])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == ("launch.kubernetes: error: --execute needs kubectl on PATH, "
                                               "with a context for your cluster.")


def test_cli_prints_a_multi_document_stream():
    out = subprocess.run(
        [sys.executable, "-m", "launch.kubernetes", "--kind=jobset", "--chief", "--workers=2", "--ps=1",
         f"--image={_cluster_jobs.IMAGE}", "--", *_cluster_jobs.COMMAND],
        capture_output=True, text=True, timeout=60, check=True).stdout
    service, js = yaml.safe_load_all(out)
    assert service["kind"] == "Service" and js["kind"] == "JobSet"
    assert [r["name"] for r in js["spec"]["replicatedJobs"]] == ["chief", "worker", "ps"]
