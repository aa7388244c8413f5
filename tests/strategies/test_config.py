"""StrategyConfig validation, and the table of bad inputs every entry point must reject."""

import dataclasses
import json
import zlib

import pytest

import strategies
from strategies import StrategyConfig, StrategyError
from strategies import flags as strategy_flags

_PS_HOSTS = dict(
    chief_host="127.0.0.1:2000", worker_hosts=["127.0.0.1:2001"], ps_hosts=["127.0.0.1:2002"]
)
_WORKERS = {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}


def test_defaults_are_valid_and_auto():
    config = StrategyConfig()
    assert config.strategy == "auto"
    assert config.mixed_precision == "float32"
    assert not config.has_cluster_hosts


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        StrategyConfig().strategy = "mirrored"


@pytest.mark.parametrize(
    "hosts",
    [["a:1", "b:2"], ("a:1", "b:2"), "a:1,b:2"],
    ids=["list", "tuple", "comma-string"],
)
def test_hosts_are_coerced_to_tuples(hosts):
    config = StrategyConfig(
        strategy="multi_worker_mirrored", worker_hosts=hosts, task_type="worker", task_index=1
    )
    assert config.worker_hosts == ("a:1", "b:2")


def test_cluster_timeout_accepts_int_as_float():
    assert StrategyConfig(cluster_timeout=5).cluster_timeout == 5.0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(strategy="one_device", device="/gpu:1"),
        dict(strategy="mirrored", num_gpus=4, all_reduce="nccl"),
        dict(strategy="mirrored", virtual_cpus=2, all_reduce="hierarchical_copy"),
        dict(strategy="multi_worker_mirrored", all_reduce="ring", worker_hosts=["h:1"],
             task_type="worker", task_index=0),
        dict(strategy="parameter_server", ps_shards=3, task_type="ps", task_index=0, **_PS_HOSTS),
        dict(strategy="tpu", tpu="my-tpu", tpu_zone="us-central2-b", gcp_project="my-project"),
        dict(strategy="tpu", tpu="grpc://10.0.0.2:8470"),
        dict(strategy="auto", tpu="local", mixed_precision="mixed_bfloat16"),
        dict(strategy="default", mixed_precision="mixed_float16", cluster_timeout=1.5),
    ],
    ids=["one-device-gpu", "mirrored-gpus", "mirrored-vcpus", "mwm-hosts", "ps-hosts",
         "tpu-named", "tpu-grpc", "auto-tpu", "default-mixed"],
)  # fmt: skip
def test_valid_configs(kwargs):
    config = StrategyConfig(**kwargs)
    for key, value in kwargs.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(config, key) == expected


# Each row: (entry point, input, the flag/key the message must name).
#   kwargs: StrategyConfig(**input)   build: strategies.build(**input)
#   flags: parse_notebook_flags(argv)  tf_config: cluster.validate(input)
#   env: build("multi_worker_mirrored") with TF_CONFIG=input
BAD_INPUTS = [
    ("kwargs", dict(strategy="mirror"), "strategy"),
    ("kwargs", dict(strategy=3), "strategy"),
    ("kwargs", dict(mixed_precision="float16"), "mixed_precision"),
    ("kwargs", dict(strategy="mirrored", all_reduce="ring"), "all_reduce"),
    ("kwargs", dict(strategy="multi_worker_mirrored", all_reduce="reduce_to_one"), "all_reduce"),
    ("kwargs", dict(strategy="one_device", device="/tpu-ish:0"), "device"),
    ("kwargs", dict(strategy="one_device", device="/job:worker"), "device"),
    ("kwargs", dict(strategy="mirrored", device="/cpu:0"), "device"),
    ("kwargs", dict(strategy="mirrored", num_gpus=0), "num_gpus"),
    ("kwargs", dict(strategy="mirrored", num_gpus=2.5), "num_gpus"),
    ("kwargs", dict(strategy="mirrored", virtual_cpus=-2), "virtual_cpus"),
    ("kwargs", dict(strategy="mirrored", virtual_cpus=True), "virtual_cpus"),
    ("kwargs", dict(strategy="mirrored", num_gpus=2, virtual_cpus=2), "virtual_cpus"),
    ("kwargs", dict(strategy="one_device", virtual_cpus=2), "virtual_cpus"),
    ("kwargs", dict(strategy="multi_worker_mirrored", worker_hosts=["h:1"], task_type="worker",
                    task_index=0, ps_hosts=["h:2"]), "ps_hosts"),
    ("kwargs", dict(strategy="multi_worker_mirrored", worker_hosts=["nohost"], task_type="worker",
                    task_index=0), "worker_hosts"),
    ("kwargs", dict(strategy="multi_worker_mirrored", worker_hosts=["h:70000"], task_type="worker",
                    task_index=0), "worker_hosts"),
    ("kwargs", dict(strategy="multi_worker_mirrored", worker_hosts=["h:1", "h:1"], task_type="worker",
                    task_index=0), "worker_hosts"),
    ("kwargs", dict(strategy="multi_worker_mirrored", worker_hosts=["h:1"], task_index=0), "task_type"),
    ("kwargs", dict(strategy="multi_worker_mirrored", worker_hosts=["h:1"], task_type="worker"),
     "task_index"),
    ("kwargs", dict(strategy="multi_worker_mirrored", worker_hosts=["h:1"], task_type="worker",
                    task_index=1), "task_index"),
    ("kwargs", dict(strategy="multi_worker_mirrored", worker_hosts=["h:1"], task_type="boss",
                    task_index=0), "task_type"),
    ("kwargs", dict(strategy="parameter_server", task_type="ps", task_index=0,
                    **{**_PS_HOSTS, "chief_host": None}), "chief_host"),
    ("kwargs", dict(strategy="parameter_server", task_type="ps", task_index=0,
                    **{**_PS_HOSTS, "ps_hosts": []}), "ps_hosts"),
    ("kwargs", dict(strategy="parameter_server", task_type="worker", task_index=0,
                    **{**_PS_HOSTS, "ps_hosts": ["127.0.0.1:2001"]}), "ps_hosts"),
    ("kwargs", dict(strategy="parameter_server", ps_shards=-1), "ps_shards"),
    ("kwargs", dict(strategy="auto", task_index=0), "task_index"),
    ("kwargs", dict(cluster_timeout=0), "cluster_timeout"),
    ("kwargs", dict(cluster_timeout=float("nan")), "cluster_timeout"),
    ("kwargs", dict(cluster_timeout="soon"), "cluster_timeout"),
    ("kwargs", dict(allow_public_addresses="yes"), "allow_public_addresses"),
    ("kwargs", dict(strategy="multi_worker_mirrored", heartbeat_timeout=0.5), "heartbeat_timeout"),
    ("kwargs", dict(strategy="multi_worker_mirrored", heartbeat_timeout=float("nan")), "heartbeat_timeout"),
    ("kwargs", dict(strategy="mirrored", heartbeat_timeout=5), "heartbeat_timeout"),
    ("kwargs", dict(strategy="tpu", tpu="My TPU!"), "tpu"),
    ("kwargs", dict(strategy="tpu", tpu="grpc://10.0.0.2"), "tpu"),
    ("kwargs", dict(strategy="tpu", tpu="local", tpu_zone="us-central2-b"), "tpu_zone"),
    ("kwargs", dict(strategy="tpu", gcp_project="Bad Project"), "gcp_project"),
    ("kwargs", dict(strategy="mirrored", tpu="local"), "tpu"),
    ("kwargs", dict(worker_hosts=42), "worker_hosts"),
    ("build", dict(strategy="one_device", devise="/cpu:0"), "devise"),
    ("build", dict(strategy="mirrored", virtual_cpus=2, all_reduce="nccl"), "all_reduce"),
    ("build", dict(strategy="one_device", device="/cpu:7"), "device"),
    ("flags", ["prog", "--strategy=mirrored", "--tpu=local"], "tpu"),
    ("flags", ["prog", "--task_index=1"], "task_index"),
    ("flags", ["prog", "--strategy=gpu"], "strategy"),
    ("flags", ["prog", "--virtual_cpus=two"], "virtual_cpus"),
    ("flags", ["prog", "--cluster_timeout=-3"], "cluster_timeout"),
    ("flags", ["prog", "--mixed_precision=bf16"], "mixed_precision"),
    ("flags", ["prog", "--stratgy=mirrored"], "stratgy"),
    ("flags", ["prog", "--strategy=multi_worker_mirrored", "--worker_hosts=h:1", "--task_type=ps",
               "--task_index=0"], "task_type"),
    ("flags", ["prog", "--worker_hosts"], "worker_hosts"),
    ("tf_config", "{not json", "TF_CONFIG"),
    ("tf_config", "[]", "TF_CONFIG"),
    ("tf_config", {"cluster": {}}, "TF_CONFIG['cluster']"),
    ("tf_config", {"cluster": {"boss": ["h:1"]}, "task": {"type": "boss", "index": 0}},
     "TF_CONFIG['cluster']"),
    ("tf_config", {"cluster": {"worker": "h:1"}, "task": {"type": "worker", "index": 0}},
     "TF_CONFIG['cluster']['worker']"),
    ("tf_config", {"cluster": _WORKERS, "task": {"type": "worker", "index": 2}},
     "TF_CONFIG['task']['index']"),
    ("tf_config", {"cluster": _WORKERS, "task": {"type": "worker", "index": "0"}},
     "TF_CONFIG['task']['index']"),
    ("tf_config", {"cluster": _WORKERS, "task": {"type": "ps", "index": 0}},
     "TF_CONFIG['task']['type']"),
    ("tf_config", {"cluster": _WORKERS}, "TF_CONFIG['task']"),
    ("tf_config", {"cluster": {"worker": ["h:1", "h:1"]}, "task": {"type": "worker", "index": 0}},
     "TF_CONFIG['cluster']['worker'][1]"),
    ("tf_config", {"cluster": {"chief": ["h:1", "h:2"]}, "task": {"type": "chief", "index": 0}},
     "TF_CONFIG['cluster']['chief']"),
    ("tf_config", {"cluster": {"worker": ["h:0"]}, "task": {"type": "worker", "index": 0}},
     "TF_CONFIG['cluster']['worker'][0]"),
    ("env", '{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}}',
     "TF_CONFIG['task']['index']"),
    ("env", json.dumps({"cluster": {"chief": ["h:1"], "worker": ["h:2"], "ps": ["h:3"]},
                        "task": {"type": "chief", "index": 0}}), "TF_CONFIG['cluster']['ps']"),
]  # fmt: skip


def _case_id(case):
    kind, value, key = case
    # zlib.crc32, not hash(): ids must be stable across processes (pytest-xdist).
    return f"{kind}-{key}-{zlib.crc32(repr(value).encode()) % 10_000}"


@pytest.mark.parametrize("kind,value,key", BAD_INPUTS, ids=[_case_id(c) for c in BAD_INPUTS])
def test_bad_input_raises_strategy_error_naming_key(kind, value, key, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(StrategyError) as info:
        if kind == "kwargs":
            StrategyConfig(**value)
        elif kind == "build":
            strategies.build(**value)
        elif kind == "flags":
            strategy_flags.parse_notebook_flags(value)
        elif kind == "tf_config":
            strategies.cluster.validate(value)
        else:
            monkeypatch.setenv("TF_CONFIG", value)
            strategies.build("multi_worker_mirrored", cluster_timeout=0.5)
    message = str(info.value)
    assert key in message, message
    assert "Received:" in message, message  # Every message quotes what it got.
    assert "\n" not in message, message


def test_bad_input_table_is_large_and_covers_every_entry_point():
    kinds = {kind for kind, _, _ in BAD_INPUTS}
    assert len(BAD_INPUTS) >= 30
    assert kinds == {"kwargs", "build", "flags", "tf_config", "env"}


def test_every_config_field_has_a_bad_input_row():
    # A new field without a rejection test would slip through unvalidated.
    named = {key for _, _, key in BAD_INPUTS}
    fields = {f.name for f in dataclasses.fields(StrategyConfig)}
    assert fields <= named, sorted(fields - named)


def test_error_is_a_value_error():
    assert issubclass(StrategyError, ValueError)
