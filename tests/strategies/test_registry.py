"""The registry is the one source of strategy names: pinned here and in --strategy."""

import pytest
import tensorflow as tf
from absl import flags

import strategies
from strategies import StrategyError
from strategies import flags as strategy_flags  # noqa: F401  (defines --strategy)
from strategies.building import _registry

EXPECTED_NAMES = [
    "auto", "default", "one_device", "mirrored", "multi_worker_mirrored", "parameter_server", "tpu",
]  # fmt: skip


def test_available_is_pinned():
    assert strategies.available() == EXPECTED_NAMES


def test_strategy_flag_enum_equals_registry():
    assert flags.FLAGS["strategy"].parser.enum_values == strategies.available()


def test_all_is_pinned():
    assert sorted(strategies.__all__) == sorted([
        "CheckpointMismatchError", "CheckpointWriteError", "KerasCompatError", "Preempted", "StrategyConfig",
        "StrategyError", "available",
        "build", "cluster", "describe", "detect", "evaluate_checkpoints", "fit", "flags", "is_server_task", "load_model",
        "mirrored_strategy", "register", "serve_forever", "split_cpu", "task_role",
    ])  # fmt: skip
    for name in strategies.__all__:
        assert getattr(strategies, name) is not None


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(_registry, "_BUILDERS", dict(_registry._BUILDERS))


def test_duplicate_name_raises(scratch_registry):
    with pytest.raises(StrategyError, match="'mirrored' is already registered"):
        strategies.register("mirrored")


@pytest.mark.parametrize("name", ["", "Mirrored", "two words", 3], ids=["empty", "upper", "space", "int"])
def test_bad_name_raises(scratch_registry, name):
    with pytest.raises(StrategyError, match="lower-case identifier"):
        strategies.register(name)


def test_unknown_name_lists_available():
    with pytest.raises(StrategyError) as info:
        _registry.get_builder("central_storage")
    assert "central_storage" in str(info.value)
    for name in EXPECTED_NAMES:
        assert name in str(info.value)


def test_registered_builder_is_built_and_appended(scratch_registry):
    calls = []

    @strategies.register("pinned_cpu")
    def _build(config):
        calls.append(config)
        return tf.distribute.OneDeviceStrategy("/cpu:1")

    assert strategies.available() == [*EXPECTED_NAMES, "pinned_cpu"]
    strategy = strategies.build("pinned_cpu")
    assert [c.strategy for c in calls] == ["pinned_cpu"]
    assert strategy.extended.worker_devices[0].endswith("CPU:1")


def test_user_builder_may_read_any_field(scratch_registry):
    # Built-in strategies reject fields they ignore; a user's builder decides.
    strategies.register("custom")(lambda config: tf.distribute.get_strategy())
    assert strategies.StrategyConfig(strategy="custom", device="/cpu:1").device == "/cpu:1"
