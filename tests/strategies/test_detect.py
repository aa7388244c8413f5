"""Auto-detection: the fixed order, with each seam faked, and the real path here."""

import pytest
import tensorflow as tf

import strategies
from strategies import StrategyConfig, StrategyError
from strategies import cluster as cluster_lib
from strategies.building import _detect, _tpu

_MWM_TF_CONFIG = cluster_lib.tf_config(workers=["h:1", "h:2"], task=("worker", 0))
_PS_TF_CONFIG = cluster_lib.tf_config(chief="h:3", workers=["h:1"], ps=["h:2"], task=("worker", 0))


@pytest.fixture
def fake(monkeypatch):
    """Fakes the probes: fake(tpu=reason_or_None, gpus=n)."""

    def apply(tpu=None, gpus=0):
        monkeypatch.setattr(_detect, "tpu_probe", lambda config, environ: tpu)
        monkeypatch.setattr(_detect, "gpu_count", lambda: gpus)

    return apply


@pytest.mark.parametrize(
    "tpu,environ,gpus,expected",
    [
        ("fake TPU", {}, 0, "tpu"),
        (None, {"TF_CONFIG": _MWM_TF_CONFIG}, 0, "multi_worker_mirrored"),
        (None, {"TF_CONFIG": _PS_TF_CONFIG}, 0, "parameter_server"),
        (None, {}, 2, "mirrored"),
        (None, {}, 1, "default"),
        (None, {}, 0, "default"),
        ("fake TPU", {"TF_CONFIG": _MWM_TF_CONFIG}, 8, "tpu"),
        (None, {"TF_CONFIG": _MWM_TF_CONFIG}, 8, "multi_worker_mirrored"),
    ],
    ids=["tpu", "tf-config", "tf-config-ps", "two-gpus", "one-gpu", "nothing", "tpu-first", "cluster-before-gpus"],
)
def test_detect_order_with_faked_seams(fake, tpu, environ, gpus, expected):
    fake(tpu=tpu, gpus=gpus)
    name, reason = strategies.detect(StrategyConfig(), environ)
    assert name == expected
    assert reason  # Logged by launchers next to the name.


def test_reasons_say_why(fake):
    fake(gpus=2)
    assert strategies.detect(StrategyConfig(), {})[1] == "2 GPUs are visible"
    fake(tpu=None, gpus=0)
    assert "TF_CONFIG" in strategies.detect(StrategyConfig(), {"TF_CONFIG": _MWM_TF_CONFIG})[1]


def test_cluster_flags_mean_multi_worker(fake):
    fake()
    config = StrategyConfig(worker_hosts=["h:1", "h:2"], task_type="worker", task_index=1)
    assert strategies.detect(config, {}) == ("multi_worker_mirrored", "flags describes a cluster (2 worker)")


@pytest.mark.parametrize(
    "environ,config,reason",
    [
        ({"TPU_NAME": "my-tpu"}, StrategyConfig(), "TPU_NAME=my-tpu is set"),
        ({"COLAB_TPU_ADDR": "10.0.0.2:8470"}, StrategyConfig(), "COLAB_TPU_ADDR=10.0.0.2:8470 is set"),
        ({}, StrategyConfig(tpu="local"), "--tpu=local was given"),
    ],
    ids=["tpu-name", "colab", "flag"],
)
def test_real_tpu_probe_reads_environment(environ, config, reason):
    assert _detect.tpu_probe(config, environ) == reason


def test_tpu_argument_from_colab_address():
    assert _detect.tpu_argument(StrategyConfig(), {"COLAB_TPU_ADDR": "10.0.0.2:8470"}) == "grpc://10.0.0.2:8470"


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="needs a machine without GPUs")
@pytest.mark.skipif(_detect.tpu_probe(StrategyConfig(), {}) is not None, reason="needs a machine without a TPU")
def test_real_no_accelerator_path(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for var in ("TPU_NAME", "COLAB_TPU_ADDR", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    name, reason = strategies.detect()
    assert (name, reason) == ("default", "no TPU, cluster or GPU found; using the CPU")
    strategy = strategies.build("auto")
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1


def test_auto_dispatches_to_tpu_builder(fake, monkeypatch):
    fake(tpu="fake TPU")
    monkeypatch.delenv("TPU_NAME", raising=False)

    def no_tpu(tpu, zone, project):
        raise ValueError("Please provide a TPU Name to connect to.")

    monkeypatch.setattr(_tpu, "make_resolver", no_tpu)
    with pytest.raises(StrategyError, match="Please provide a TPU Name"):
        strategies.build("auto", tpu="local")


def test_auto_dispatches_to_parameter_server_builder(fake, monkeypatch):
    fake()
    monkeypatch.setenv("TF_CONFIG", _PS_TF_CONFIG)
    with pytest.raises(StrategyError, match="serve_forever"):
        strategies.build("auto")


def test_auto_drops_options_of_strategies_it_did_not_pick(fake, monkeypatch):
    fake()
    monkeypatch.delenv("TF_CONFIG", raising=False)
    strategy = strategies.build("auto", all_reduce="ring")  # Only multi-worker reads it.
    assert strategy is tf.distribute.get_strategy()



def test_auto_reports_its_choice_when_an_option_conflicts(fake):
    fake(gpus=2)
    with pytest.raises(StrategyError, match=r"strategy=auto chose 'mirrored' because 2 GPUs are visible"):
        strategies.build("auto", all_reduce="ring")
