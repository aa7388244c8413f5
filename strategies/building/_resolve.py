"""Where this process's cluster comes from: host flags, ``TF_CONFIG``, ``CLUSTER_SPEC``, JobSet or Slurm."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from absl import logging

from strategies import cluster as cluster_lib
from strategies.building import _engines
from strategies.building._config import StrategyConfig, check_private
from strategies.building._errors import StrategyError

if TYPE_CHECKING:
    import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A resolved cluster and this process's place in it.

    ``spec`` never lists an evaluator: a side-car evaluator (``task_type`` is
    ``"evaluator"``) joins no cluster, starts no server and runs no collective.
    A ``master`` is listed as ``chief``.
    """

    spec: dict[str, list[str]]
    task_type: str
    task_index: int
    # "flags", "TF_CONFIG", "CLUSTER_SPEC", "JobSet" or "Slurm", for messages and logs.
    source: str

    @property
    def is_chief(self) -> bool:
        return cluster_lib.is_chief(self.spec, self.task_type, self.task_index)

    @property
    def is_evaluator(self) -> bool:
        return self.task_type == "evaluator"

    @property
    def task(self) -> tuple[str, int]:
        return self.task_type, self.task_index

    def addresses(self) -> dict[str, str]:
        """Every task's address, keyed as the user wrote it (``worker_hosts[1]``, ``TF_CONFIG[...]``)."""
        flag_keys = {"chief": "chief_host", "worker": "worker_hosts", "ps": "ps_hosts"}
        named = {}
        for job, addresses in self.spec.items():
            for i, address in enumerate(addresses):
                if self.source == "flags":
                    key = flag_keys[job] if job == "chief" else f"{flag_keys[job]}[{i}]"
                elif self.source == "TF_CONFIG":
                    key = f"TF_CONFIG['cluster']['{job}'][{i}]"
                elif self.source == "CLUSTER_SPEC":
                    pool = {role: pool for pool, role in _engines.VERTEX_POOLS.items()}[job]
                    key = f"CLUSTER_SPEC['cluster']['{pool}'][{i}]"
                else:
                    key = f"{self.source} {job} {i}"
                named[key] = address
        return named

    def resolver(self, num_gpus: int = 0) -> tf.distribute.cluster_resolver.ClusterResolver:
        """A resolver equivalent to ``TFConfigClusterResolver``, without touching ``os.environ``."""
        import tensorflow as tf

        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(self.spec),
            task_type=self.task_type,
            task_id=self.task_index,
            rpc_layer="grpc",
            num_accelerators={"GPU": num_gpus} if num_gpus else None,
        )


def resolve(config: StrategyConfig, environ: Mapping[str, str] | None = None) -> Cluster | None:
    """Returns the cluster from, in order, host fields, ``TF_CONFIG``, ``CLUSTER_SPEC``, JobSet, Slurm; else None.

    Explicit flags win over the environment because a user who typed them meant
    them. ``TF_CONFIG`` comes next because the engines that set it (Vertex,
    TFJob, `launch.local_cluster`) describe the TensorFlow job exactly; Vertex's
    ``CLUSTER_SPEC`` says the same with pool names, for a container that drops
    ``TF_CONFIG``. JobSet's variables (`strategies.building._engines`) are set
    by a manifest written for this project, so they come before Slurm, whose
    ``SLURM_*`` variables only count tasks.
    """
    cluster = _find(config, os.environ if environ is None else environ)
    if cluster is not None:
        check_private(cluster.addresses(), config.allow_public_addresses)
    return cluster


def _find(config: StrategyConfig, environ: Mapping[str, str]) -> Cluster | None:
    if config.has_cluster_hosts:
        spec: dict[str, list[str]] = {}
        if config.chief_host:
            spec["chief"] = [config.chief_host]
        if config.worker_hosts:
            spec["worker"] = list(config.worker_hosts)
        if config.ps_hosts:
            spec["ps"] = list(config.ps_hosts)
        return Cluster(spec, config.task_type, config.task_index, "flags")
    raw = environ.get("TF_CONFIG", "").strip()
    if raw and raw != "{}":
        return _from_tf_config(cluster_lib.validate(raw), "TF_CONFIG")
    raw = environ.get("CLUSTER_SPEC", "").strip()
    if raw and raw != "{}":
        return _from_tf_config(_engines.from_cluster_spec(raw), "CLUSTER_SPEC")
    if _engines.jobset_active(environ):
        return _from_tf_config(_engines.from_jobset(environ), "JobSet")
    if slurm_num_tasks(environ) > 1:
        return _from_slurm(environ)
    return None


def _from_tf_config(parsed: dict[str, Any], source: str) -> Cluster:
    """A validated ``TF_CONFIG``-shaped dict as a `Cluster`: ``master`` read as ``chief``, no evaluator."""
    spec = {job: list(addrs) for job, addrs in parsed["cluster"].items() if job != "evaluator"}
    task_type = parsed["task"]["type"]
    if cluster_lib.CHIEF_ALIAS in spec:
        logging.info("%s names the chief 'master' (older AI Platform runtimes, SageMaker); "
                     "reading it as 'chief'", source)
        spec["chief"] = spec.pop(cluster_lib.CHIEF_ALIAS)
        task_type = "chief" if task_type == cluster_lib.CHIEF_ALIAS else task_type
    return Cluster(spec, task_type, parsed["task"]["index"], source)


def slurm_num_tasks(environ: Mapping[str, str]) -> int:
    """Number of tasks in this Slurm step, or 0 outside Slurm."""
    if "SLURM_PROCID" not in environ:
        return 0
    raw = environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1"))
    try:
        return int(raw)
    except ValueError:
        raise StrategyError(
            f"`SLURM_STEP_NUM_TASKS` must be an integer; run inside `srun`. Received: "
            f"SLURM_STEP_NUM_TASKS={raw!r}."
        ) from None


def _from_slurm(environ: Mapping[str, str]) -> Cluster:
    # SlurmClusterResolver reads os.environ itself, so `environ` must be it here.
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    # SlurmClusterResolver (TF 2.21) lists one task per GPU slot, zipping tasks
    # with range(0, gpus_per_node, gpus_per_task), so a CPU-only node would
    # list none. There, give it one notional slot per task; the slots are never
    # used because auto_set_gpu=False.
    slots, per_task = (gpus, None) if gpus else (1 << 16, 1)
    try:
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
            jobs={"worker": slurm_num_tasks(environ)},
            gpus_per_node=slots,
            gpus_per_task=per_task,
            # CUDA_VISIBLE_DEVICES is read when TF initializes, which has
            # already happened here; setting it now would only mislead.
            auto_set_gpu=False,
        )
        spec = resolver.cluster_spec().as_dict()
    except (RuntimeError, ValueError, KeyError) as e:
        raise StrategyError(
            f"`SLURM_*` environment could not describe a cluster ({e}); run the job with `srun` "
            f"or give --worker_hosts. Received: SLURM_PROCID={environ.get('SLURM_PROCID')!r}."
        ) from None
    return Cluster({k: list(v) for k, v in spec.items()}, resolver.task_type, resolver.task_id, "Slurm")


def task_role(config: StrategyConfig, environ: Mapping[str, str] | None = None) -> str:
    """This process's role: ``chief``, ``worker``, ``ps`` or ``evaluator``.

    A process outside any cluster is its own ``chief``. Launch code uses this to
    send parameter-server ``worker``/``ps`` tasks to `strategies.serve_forever`
    and everyone else to `strategies.build`.
    """
    found = resolve(config, environ)
    if found is None:
        return "chief"
    if found.is_chief:
        return "chief"
    return found.task_type
