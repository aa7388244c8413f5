"""Every strategies flag is parsed here, through absl and through the notebook parser."""

import sys

import pytest
from absl import flags
from absl.testing import flagsaver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies
from strategies import StrategyConfig, StrategyError
from strategies import flags as strategy_flags

FLAGS = flags.FLAGS
COLAB_ARGV = [
    "/usr/local/lib/python3.11/dist-packages/colab_kernel_launcher.py",
    "-f",
    "/root/.local/share/jupyter/runtime/kernel-3d0f1c2e-5b7a-4c8e-9f6d-2a1b3c4d5e6f.json",
]


@pytest.fixture(autouse=True)
def _restore_flags(monkeypatch):
    # pytest never runs absl's app.run, so mark FLAGS parsed for FlagHolder
    # reads, and restore every value (and the parsed bit) afterwards.
    monkeypatch.setitem(FLAGS.__dict__, "__flags_parsed", True)
    with flagsaver.flagsaver():
        for name in strategy_flags.HOLDERS:  # Start from defaults, whatever ran before.
            FLAGS[name].unparse()
        yield


# One row per platform; together they set every flag of the module.
PLATFORM_FLAGS = {
    "cpu": dict(strategy="one_device", device="/cpu:0"),
    "multi_gpu": dict(strategy="mirrored", num_gpus="2", all_reduce="nccl", mixed_precision="mixed_float16"),
    "virtual_cpus": dict(strategy="mirrored", virtual_cpus="2", all_reduce="reduce_to_one"),
    "multi_worker": dict(strategy="multi_worker_mirrored", worker_hosts="10.0.0.1:2222,10.0.0.2:2222",
                         task_type="worker", task_index="1", all_reduce="ring", cluster_timeout="30",
                         heartbeat_timeout="5"),
    "parameter_server": dict(strategy="parameter_server", chief_host="10.0.0.1:2222",
                             worker_hosts="10.0.0.2:2222", ps_hosts="10.0.0.3:2222",
                             task_type="ps", task_index="0", ps_shards="4"),
    "public_cluster": dict(strategy="multi_worker_mirrored", worker_hosts="34.1.2.3:2222,34.1.2.4:2222",
                           task_type="worker", task_index="0", allow_public_addresses="true"),
    "tpu_vm": dict(strategy="tpu", tpu="local", mixed_precision="mixed_bfloat16"),
    "tpu_named": dict(strategy="tpu", tpu="my-tpu", tpu_zone="us-central2-b", gcp_project="my-project"),
}  # fmt: skip


def test_platform_rows_cover_every_flag():
    used = {name for row in PLATFORM_FLAGS.values() for name in row}
    assert used == set(strategy_flags.HOLDERS)


@pytest.mark.parametrize("row", PLATFORM_FLAGS.values(), ids=PLATFORM_FLAGS.keys())
def test_as_parsed_flags_give_the_same_config_as_python(row):
    with flagsaver.as_parsed(**row):
        config = strategy_flags.config_from_flags()
    expected = StrategyConfig(**{k: FLAGS[k].parser.parse(v) for k, v in row.items()})
    assert config == expected


@pytest.mark.parametrize("row", PLATFORM_FLAGS.values(), ids=PLATFORM_FLAGS.keys())
def test_command_line_parse_gives_the_same_config(row):
    argv = ["prog", *(f"--{k}={v}" for k, v in row.items())]
    assert strategy_flags.parse_notebook_flags(argv) == strategy_flags.parse_notebook_flags(**{
        k: FLAGS[k].parser.parse(v) for k, v in row.items()
    })  # fmt: skip


@pytest.mark.parametrize(
    "overrides,key",
    [
        (dict(strategy="mirrored", tpu="local"), "tpu"),
        (dict(task_index="0"), "task_index"),
        (dict(strategy="one_device", virtual_cpus="2"), "virtual_cpus"),
        (dict(strategy="tpu", tpu="local", tpu_zone="us-central2-b"), "tpu_zone"),
        (dict(strategy="parameter_server", worker_hosts="h:1", task_type="worker", task_index="0"), "chief_host"),
    ],
    ids=["tpu-with-mirrored", "index-without-hosts", "vcpus-with-one-device", "zone-with-local", "ps-without-chief"],
)
def test_multi_flag_validators_reject_combinations(overrides, key):
    with pytest.raises(flags.IllegalFlagValueError) as info:
        with flagsaver.as_parsed(**overrides):
            pass
    assert f"`{key}`" in str(info.value)


def test_absl_command_line_runs_the_validators():
    with pytest.raises(flags.IllegalFlagValueError, match="`tpu` must be left unset"):
        FLAGS(["prog", "--strategy=mirrored", "--tpu=local"], known_only=True)


def test_config_from_flags_before_parsing_says_how(monkeypatch):
    monkeypatch.setitem(FLAGS.__dict__, "__flags_parsed", False)
    with pytest.raises(StrategyError, match="parse_notebook_flags"):
        strategy_flags.config_from_flags()


def test_notebook_parse_ignores_colab_kernel_args_and_is_repeatable(monkeypatch):
    monkeypatch.setattr(sys, "argv", COLAB_ARGV)
    first = strategy_flags.parse_notebook_flags()
    second = strategy_flags.parse_notebook_flags()
    assert first == second == StrategyConfig()
    assert FLAGS.is_parsed()


def test_notebook_parse_rerun_does_not_keep_earlier_values(monkeypatch):
    monkeypatch.setattr(sys, "argv", COLAB_ARGV)
    mirrored = strategy_flags.parse_notebook_flags(strategy="mirrored", virtual_cpus=2)
    again = strategy_flags.parse_notebook_flags(strategy="mirrored", virtual_cpus=2)
    plain = strategy_flags.parse_notebook_flags()
    assert mirrored == again == StrategyConfig(strategy="mirrored", virtual_cpus=2)
    assert plain == StrategyConfig()


def test_notebook_parse_mixes_argv_and_keywords():
    argv = [*COLAB_ARGV, "--strategy", "multi_worker_mirrored", "--worker_hosts=h:1,h:2", "--task_type=worker"]
    config = strategy_flags.parse_notebook_flags(argv, task_index=1, cluster_timeout=5)
    assert config.worker_hosts == ("h:1", "h:2") and config.task_index == 1
    assert config.cluster_timeout == 5.0


def test_failed_notebook_parse_changes_no_flag():
    strategy_flags.parse_notebook_flags(strategy="mirrored", virtual_cpus=2)
    with pytest.raises(StrategyError, match="`tpu` must be left unset"):
        strategy_flags.parse_notebook_flags(["prog", "--strategy=mirrored", "--tpu=local"])
    assert strategy_flags.config_from_flags() == StrategyConfig(strategy="mirrored", virtual_cpus=2)


def test_notebook_parse_rejects_unknown_keyword():
    with pytest.raises(StrategyError, match="`virtual_gpus` is not a strategies flag"):
        strategy_flags.parse_notebook_flags([], virtual_gpus=2)


def test_notebook_config_builds():
    config = strategy_flags.parse_notebook_flags(COLAB_ARGV, strategy="mirrored", virtual_cpus=2)
    assert strategies.build(config).num_replicas_in_sync == 2


_NAMES = sorted(strategy_flags.HOLDERS)
_VALUES = st.one_of(
    st.text(max_size=12),
    st.integers(-5, 70000).map(str),
    st.floats(allow_nan=True).map(str),
    st.sampled_from([
        "auto", "mirrored", "multi_worker_mirrored", "parameter_server", "tpu", "local", "chief", "worker",
        "ps", "nccl", "ring", "h:1", "127.0.0.1:2222,127.0.0.1:2223", "grpc://h:8470", "/cpu:0", "/gpu:3",
        "mixed_bfloat16", "",
    ]),
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(_NAMES), _VALUES), max_size=6))
def test_random_flag_values_raise_only_strategy_error(pairs):
    argv = ["prog", *(f"--{name}={value}" for name, value in pairs)]
    try:
        config = strategy_flags.parse_notebook_flags(argv)
    except StrategyError as e:
        assert "Received" in str(e)
    else:
        assert isinstance(config, StrategyConfig)


_PY_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 5), st.floats(), st.text(max_size=8),
    st.lists(st.sampled_from(["h:1", "h:2", "x"]), max_size=3), st.sampled_from(["auto", "mirrored", "tpu"]),
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(_NAMES), _PY_VALUES, max_size=5))
def test_random_python_values_raise_only_strategy_error(kwargs):
    try:
        StrategyConfig(**kwargs)
    except StrategyError:
        pass
