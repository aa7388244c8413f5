"""Every strategy that can run in this process is built for real and used.

conftest.py split the CPU into 2 logical devices, so Mirrored gets 2 replicas.
Multi-worker and parameter-server builds against live processes are in
test_cluster_real.py; here they are driven up to their errors.
"""

import keras
import pytest
import tensorflow as tf

import strategies
from strategies import StrategyError
from strategies import cluster as cluster_lib
from strategies.building import _tpu

VERSIONS = f"TensorFlow {tf.__version__}, Keras {keras.__version__}"  # describe() ends with them.
NO_GPU = pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="needs a machine without GPUs")


@pytest.fixture(autouse=True)
def _clean_env_and_policy(monkeypatch):
    for var in ("TF_CONFIG", "TPU_NAME", "COLAB_TPU_ADDR", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    policy = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(policy)


def _replica_ids_sum(strategy):
    """Sum over replicas of (replica id + 1), reduced through the strategy."""

    @tf.function
    def step():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            return tf.cast(ctx.replica_id_in_sync_group, tf.float32) + 1.0

        return strategy.reduce("SUM", strategy.run(replica_fn), axis=None)

    return float(step())


def test_default_is_tf_default_strategy_never_none():
    strategy = strategies.build("default")
    assert strategy is tf.distribute.get_strategy()
    with strategy.scope():  # A real context manager, not a dummy.
        assert tf.distribute.get_strategy() is strategy
    assert strategies.describe(strategy) == (
        f"DefaultStrategy: 1 replica on the default device (no distribution); {VERSIONS}")


@NO_GPU
def test_one_device_defaults_to_cpu0():
    strategy = strategies.build("one_device")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategies.describe(strategy) == (
        f"OneDeviceStrategy: 1 replica on /job:localhost/replica:0/task:0/device:CPU:0; {VERSIONS}"
    )
    assert _replica_ids_sum(strategy) == 1.0


def test_one_device_honours_device():
    strategy = strategies.build("one_device", device="/cpu:1")
    assert strategy.extended.worker_devices == ("/job:localhost/replica:0/task:0/device:CPU:1",)


@NO_GPU
def test_one_device_missing_gpu_names_device():
    with pytest.raises(StrategyError, match=r"`device` must be one of the 0 GPU device\(s\)"):
        strategies.build("one_device", device="/gpu:0")


@pytest.mark.parametrize(
    "all_reduce,reduction",
    [("auto", "CollectiveAllReduce"), ("reduce_to_one", "ReductionToOneDevice"),
     ("hierarchical_copy", "HierarchicalCopyAllReduce")],
    ids=["auto", "reduce_to_one", "hierarchical_copy"],
)  # fmt: skip
def test_mirrored_over_two_virtual_cpus(all_reduce, reduction):
    strategy = strategies.build("mirrored", virtual_cpus=2, all_reduce=all_reduce)
    assert strategy.num_replicas_in_sync == 2
    assert _replica_ids_sum(strategy) == 3.0  # 1 + 2: both replicas ran and were reduced.
    assert strategies.describe(strategy) == (
        "MirroredStrategy: 2 replicas on /job:localhost/replica:0/task:0/device:CPU:0, ...:CPU:1 "
        f"(all-reduce: {reduction}); {VERSIONS}"
    )


def test_mirrored_trains_a_keras_model():
    strategy = strategies.build("mirrored", virtual_cpus=2)
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = tf.random.stateless_normal((32, 3), seed=(1, 2))
    y = tf.reduce_sum(x, axis=1, keepdims=True)
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_mirrored_with_other_virtual_cpu_count_says_restart():
    tf.config.list_logical_devices("CPU")  # TF is initialized (with conftest's 2 CPUs).
    with pytest.raises(StrategyError, match="`virtual_cpus` must be set before TensorFlow initializes.*has 2"):
        strategies.build("mirrored", virtual_cpus=3)


def test_mirrored_nccl_on_cpus_is_refused():
    with pytest.raises(StrategyError, match="NCCL runs only between GPUs"):
        strategies.build("mirrored", virtual_cpus=2, all_reduce="nccl")


@NO_GPU
def test_mirrored_without_gpus_or_virtual_cpus_has_one_replica():
    strategy = strategies.build("mirrored")
    assert strategy.num_replicas_in_sync == 1
    assert strategy.extended.worker_devices[0].endswith("CPU:0")


@NO_GPU
def test_mirrored_num_gpus_beyond_visible():
    with pytest.raises(StrategyError, match="`num_gpus` must be at most 0"):
        strategies.build("mirrored", num_gpus=2)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16", "float32"])
def test_build_sets_keras_mixed_precision_policy(policy):
    strategies.build("one_device", device="/cpu:0", mixed_precision=policy)
    assert keras.mixed_precision.global_policy().name == policy


def test_failed_build_leaves_policy_alone():
    keras.mixed_precision.set_global_policy("float32")
    with pytest.raises(StrategyError):
        strategies.build("one_device", device="/cpu:9", mixed_precision="mixed_bfloat16")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_build_accepts_config_with_overrides():
    config = strategies.StrategyConfig(strategy="mirrored", virtual_cpus=2)
    assert strategies.build(config, all_reduce="reduce_to_one").num_replicas_in_sync == 2


def test_build_rejects_non_config():
    with pytest.raises(StrategyError, match="config_or_name"):
        strategies.build(42)


def test_multi_worker_without_cluster_says_where_clusters_come_from():
    with pytest.raises(StrategyError, match="TF_CONFIG.*--worker_hosts.*Slurm"):
        strategies.build("multi_worker_mirrored")


def test_multi_worker_missing_peer_is_named_not_waited_for_forever():
    me, peer = (f"127.0.0.1:{p}" for p in cluster_lib.free_ports(2))
    with pytest.raises(StrategyError, match=f"Could not reach worker 1 at {peer} within 0.5 s"):
        strategies.build(
            "multi_worker_mirrored", worker_hosts=[me, peer], task_type="worker", task_index=0,
            cluster_timeout=0.5,
        )  # fmt: skip


def test_parameter_server_chief_names_missing_servers():
    chief, worker, ps = (f"127.0.0.1:{p}" for p in cluster_lib.free_ports(3))
    with pytest.raises(StrategyError) as info:
        strategies.build(
            "parameter_server", chief_host=chief, worker_hosts=[worker], ps_hosts=[ps], task_type="chief",
            task_index=0, cluster_timeout=0.5,
        )  # fmt: skip
    assert f"worker 0 at {worker}" in str(info.value) and f"ps 0 at {ps}" in str(info.value)


@pytest.mark.parametrize("task_type", ["worker", "ps"])
def test_parameter_server_non_chief_is_sent_to_serve_forever(task_type, monkeypatch):
    tf_config = cluster_lib.tf_config(chief="127.0.0.1:1", workers=["127.0.0.1:2"], ps=["127.0.0.1:3"],
                                      task=(task_type, 0))  # fmt: skip
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(StrategyError, match=f"is {task_type} 0 .*strategies.serve_forever"):
        strategies.build("parameter_server")


def test_serve_forever_refuses_the_chief():
    config = strategies.StrategyConfig(
        strategy="parameter_server", chief_host="127.0.0.1:1", worker_hosts=["127.0.0.1:2"],
        ps_hosts=["127.0.0.1:3"], task_type="chief", task_index=0,
    )  # fmt: skip
    with pytest.raises(StrategyError, match="call strategies.build"):
        strategies.serve_forever(config)


def test_tpu_seam_failure_says_what_was_tried_and_what_to_do(monkeypatch):
    seen = []

    def resolver(tpu, zone, project):
        seen.append((tpu, zone, project))
        raise ValueError("Please provide a TPU Name to connect to.")

    monkeypatch.setattr(_tpu, "make_resolver", resolver)
    with pytest.raises(StrategyError) as info:
        strategies.build("tpu", tpu="my-tpu", tpu_zone="us-central2-b", gcp_project="proj")
    message = str(info.value)
    assert seen == [("my-tpu", "us-central2-b", "proj")]
    assert "TPUClusterResolver(tpu='my-tpu', zone='us-central2-b', project='proj')" in message
    assert "Please provide a TPU Name" in message
    assert "Colab" in message and "tensorflow-tpu" in message and "--tpu=local" in message


@pytest.mark.parametrize("tpu", ["local", None], ids=["local", "unset"])
def test_real_tpu_build_without_tpu_fails_clearly(tpu):
    # No TPU here: the real resolver and initialization must fail as a StrategyError.
    with pytest.raises(StrategyError, match="No TPU could be reached with `tpu`="):
        strategies.build("tpu", tpu=tpu)


def test_tpu_grpc_address_down_fails_without_hanging():
    address = f"grpc://127.0.0.1:{cluster_lib.free_ports(1)[0]}"
    with pytest.raises(StrategyError, match="did not accept a connection"):
        strategies.build("tpu", tpu=address, cluster_timeout=0.5)
