"""Builders for the multi-process strategies: multi-worker mirrored and parameter servers."""

from __future__ import annotations

import tensorflow as tf

from strategies import cluster as cluster_lib
from strategies.building import _resolve
from strategies.building._config import StrategyConfig
from strategies.building._errors import StrategyError, invalid

_NO_CLUSTER = (
    "needs a cluster: set TF_CONFIG (see strategies.cluster.tf_config), or --worker_hosts with "
    "--task_type and --task_index, or run under Slurm's srun"
)
# TF's guidance: at least 256 KiB per shard, and no more shards than ps tasks.
_MIN_SHARD_BYTES = 256 << 10


def multi_worker_mirrored(config: StrategyConfig) -> tf.distribute.Strategy:
    found = _require_cluster(config, "multi_worker_mirrored", "for one machine use strategy='mirrored'")
    if "ps" in found.spec:
        raise _cluster_key_error(found, "ps", "absent for multi-worker training", "use strategy='parameter_server'")
    if found.task_type not in ("chief", "worker"):
        raise _task_error(found, "'chief' or 'worker' for multi-worker training")
    gpus = len(tf.config.list_physical_devices("GPU"))
    implementation = tf.distribute.experimental.CommunicationImplementation
    if config.all_reduce == "nccl" and not gpus:
        raise invalid("all_reduce", "nccl", "'auto' or 'ring' without GPUs", "NCCL runs only between GPUs")
    # Every chief/worker waits for the others; without this TF waits forever.
    cluster_lib.wait_for_peers(found.spec, timeout=config.cluster_timeout, task=found.task)
    options = tf.distribute.experimental.CommunicationOptions(
        implementation={"auto": implementation.AUTO, "ring": implementation.RING, "nccl": implementation.NCCL}[
            config.all_reduce
        ]
    )
    if config.heartbeat_timeout:
        # How long a hung peer (alive, silent) blocks a collective before the step fails.
        from strategies.compat import _tf_internals  # Lazily: it loads Keras.

        _tf_internals.configure_heartbeat(found.spec, found.task_type, config.heartbeat_timeout)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=found.resolver(gpus), communication_options=options)
    except RuntimeError as e:
        if "startup" not in str(e) and "initialized" not in str(e):
            raise
        raise StrategyError(
            "`strategy`='multi_worker_mirrored' must be built before TensorFlow runs its first op "
            "(it configures collective ops at start-up); call strategies.build first thing in the "
            "program. Received: strategy='multi_worker_mirrored'."
        ) from None


def parameter_server(config: StrategyConfig) -> tf.distribute.Strategy:
    found = _require_cluster(config, "parameter_server", "see strategies.cluster.tf_config")
    check_parameter_server_cluster(found)
    if found.task_type != "chief":
        raise StrategyError(
            f"This process is {cluster_lib.task_name(*found.task)} of a parameter-server cluster "
            f"(from {found.source}), which serves variables or steps rather than training; run "
            f"strategies.serve_forever(config) in it instead of build (strategies.is_server_task(config) "
            f"tells launch code which). Received: task_type={found.task_type!r}."
        )
    # The chief's own port must stay closed until TF opens it: its servers
    # read an open chief port as "training is running".
    cluster_lib.wait_for_peers(found.spec, timeout=config.cluster_timeout, task=found.task, hold_port=False)
    num_ps = len(found.spec["ps"])
    if config.ps_shards:
        partitioner = tf.distribute.experimental.partitioners.FixedShardsPartitioner(config.ps_shards)
    else:
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=_MIN_SHARD_BYTES, max_shards=num_ps
        )
    return tf.distribute.experimental.ParameterServerStrategy(found.resolver(), variable_partitioner=partitioner)


def check_parameter_server_cluster(found: _resolve.Cluster) -> None:
    """Raises unless ``found`` has a chief, workers and ps tasks, and this task is one of them."""
    for job in ("chief", "worker", "ps"):
        if job not in found.spec:
            raise _cluster_key_error(found, job, "present in a parameter-server cluster", "add that task")
    if found.task_type not in ("chief", "worker", "ps"):
        raise _task_error(found, "'chief', 'worker' or 'ps' in a parameter-server cluster")


def _require_cluster(config: StrategyConfig, name: str, hint: str) -> _resolve.Cluster:
    found = _resolve.resolve(config)
    if found is None:
        raise StrategyError(f"`strategy`={name!r} {_NO_CLUSTER}; {hint}. Received: strategy={name!r}.")
    if found.is_evaluator:
        raise StrategyError(
            f"This process is the side-car evaluator (from {found.source}), which joins no cluster; run "
            "strategies.evaluate_checkpoints in it instead of build (strategies.task_role(config) == "
            "'evaluator' tells launch code which). Received: task_type='evaluator'."
        )
    return found


def _cluster_key_error(found: _resolve.Cluster, job: str, expected: str, fix: str) -> StrategyError:
    key = {"flags": f"{job}_hosts" if job != "chief" else "chief_host", "JobSet": "TFOPT_JOBSET_REPLICAS",
           "Slurm": "SLURM_STEP_NUM_TASKS"}.get(found.source, f"{found.source}['cluster'][{job!r}]")
    return invalid(key, found.spec.get(job), expected, fix)


def _task_error(found: _resolve.Cluster, expected: str) -> StrategyError:
    key = {"flags": "task_type", "JobSet": "REPLICATED_JOB_NAME"}.get(found.source, f"{found.source}['task']['type']")
    return invalid(key, found.task_type, expected)
