"""Where this process's cluster comes from: host flags, ``TF_CONFIG`` or Slurm."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from strategies import cluster as cluster_lib
from strategies.building._config import StrategyConfig, check_private
from strategies.building._errors import StrategyError

if TYPE_CHECKING:
    import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Cluster:
    """A resolved cluster and this process's place in it."""

    spec: dict[str, list[str]]
    task_type: str
    task_index: int
    source: str  # "flags", "TF_CONFIG" or "Slurm", for messages and logs.

    @property
    def is_chief(self) -> bool:
        return cluster_lib.is_chief(self.spec, self.task_type, self.task_index)

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
    """Returns the cluster from, in order, host fields, ``TF_CONFIG``, Slurm; else None.

    Explicit flags win over the environment because a user who typed them meant
    them; ``TF_CONFIG`` wins over Slurm because schedulers that set it (Vertex,
    `launch.local_cluster`) describe the TensorFlow job exactly.
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
        parsed = cluster_lib.validate(raw)
        spec = {job: list(addrs) for job, addrs in parsed["cluster"].items()}
        return Cluster(spec, parsed["task"]["type"], parsed["task"]["index"], "TF_CONFIG")
    if slurm_num_tasks(environ) > 1:
        return _from_slurm(environ)
    return None


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
