"""`StrategyConfig`: everything a strategy needs, validated when it is built.

Field names equal the absl flag names in `strategies.flags`, so one set of rules
(the checks below) serves the Python API, the flags' validators and the launch
scripts, and an error can name the flag the user typed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

from strategies.building import _registry
from strategies.building._errors import StrategyError, invalid, one_of

MIXED_PRECISION = ("float32", "mixed_float16", "mixed_bfloat16")
# Cross-device ops differ by strategy; `auto` lets TensorFlow pick.
ALL_REDUCE = {
    "mirrored": ("auto", "nccl", "hierarchical_copy", "reduce_to_one"),
    "multi_worker_mirrored": ("auto", "ring", "nccl"),
}
ALL_REDUCE_CHOICES = ("auto", "nccl", "hierarchical_copy", "reduce_to_one", "ring")
# Task types that flags can describe; an `evaluator` watches the cluster from outside it.
FLAG_TASK_TYPES = ("chief", "worker", "ps", "evaluator")
# The coordination service takes milliseconds in an int32 (and beats twice per timeout).
MAX_HEARTBEAT_TIMEOUT = 86_400.0
_HOST_KEYS = ("chief_host", "worker_hosts", "ps_hosts")
_CLUSTER_STRATEGIES = ("auto", "multi_worker_mirrored", "parameter_server")
# Which strategies read each optional field; a built-in strategy given a field
# it ignores is a user mistake (e.g. --tpu with --strategy=mirrored).
_USED_BY = {
    "device": ("one_device",),
    "num_gpus": ("mirrored",),
    "virtual_cpus": ("mirrored",),
    "all_reduce": ("auto", "mirrored", "multi_worker_mirrored"),
    "worker_hosts": _CLUSTER_STRATEGIES,
    "chief_host": _CLUSTER_STRATEGIES,
    "task_type": _CLUSTER_STRATEGIES,
    "task_index": _CLUSTER_STRATEGIES,
    "ps_hosts": ("auto", "parameter_server"),
    "ps_shards": ("auto", "parameter_server"),
    "heartbeat_timeout": ("auto", "multi_worker_mirrored"),
    "tpu": ("auto", "tpu"),
    "tpu_zone": ("auto", "tpu"),
    "gcp_project": ("auto", "tpu"),
}
BUILTIN = (
    "auto", "default", "one_device", "mirrored", "multi_worker_mirrored", "parameter_server", "tpu",
)  # fmt: skip
_ADDRESS = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})$")
_TPU_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_GCP_ID = re.compile(r"^[a-z0-9]([-a-z0-9.:]*[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
    """Everything `strategies.build` needs, validated at construction.

    Every field has the name of its absl flag (`strategies.flags`). Fields that
    a strategy does not read must keep their defaults, so that a typo such as
    ``--tpu`` with ``--strategy=mirrored`` fails instead of being ignored.

    Attributes:
        strategy: A name from `strategies.available()`.
        device: `one_device` only: e.g. ``"/cpu:0"`` or ``"/gpu:1"``. ``None``
            means ``"/gpu:0"`` when a GPU exists, else ``"/cpu:0"``.
        num_gpus: `mirrored` only: how many GPUs to use. ``None`` means all.
        virtual_cpus: `mirrored` only: split the CPU into this many logical
            devices, one replica each, before TensorFlow initializes. 0 = off.
        all_reduce: Cross-device reduction. `mirrored`: ``auto``, ``nccl``,
            ``hierarchical_copy``, ``reduce_to_one``; `multi_worker_mirrored`:
            ``auto``, ``ring``, ``nccl``.
        worker_hosts: ``host:port`` of every worker, in task order.
        ps_hosts: ``host:port`` of every parameter server (`parameter_server`).
        chief_host: ``host:port`` of the chief (required by `parameter_server`).
        task_type: This process's role: ``chief``, ``worker``, ``ps``, or
            ``evaluator`` (a side-car evaluator, which has no host of its own).
        task_index: This process's index within ``task_type``.
        cluster_timeout: Seconds to wait for every peer to be reachable.
        heartbeat_timeout: `multi_worker_mirrored`: seconds without a heartbeat
            after which TensorFlow's coordination service declares a task lost
            and aborts every collective, so that a hung peer (a stopped VM, a
            partitioned network) fails the step instead of blocking it
            forever. 0 keeps TensorFlow's default (10 s). It does not cover a
            hung *leader* (the chief, else worker 0), which hosts the service
            (docs/reliability.md).
        ps_shards: `parameter_server`: 0 shards each variable with
            ``MinSizePartitioner(256 KiB, max_shards=#ps)``; N > 0 with
            ``FixedShardsPartitioner(N)``.
        tpu: ``"local"`` (TPU VM), a TPU name, or ``"grpc://HOST:PORT"``.
            ``None`` lets `TPUClusterResolver` discover it (Colab, ``TPU_NAME``).
        tpu_zone: GCP zone of a named TPU.
        gcp_project: GCP project of a named TPU.
        mixed_precision: Keras global dtype policy that `build` sets.
        allow_public_addresses: accept a cluster (host fields, ``TF_CONFIG`` or
            Slurm) with a public IP address. TensorFlow's gRPC servers have no
            authentication: anyone who reaches a task's port can run code in it
            (TensorFlow's SECURITY.md). Set it only behind a firewall that admits
            the cluster's own machines alone. Hostnames are not checked.

    Example:

    ```python
    config = strategies.StrategyConfig(strategy="mirrored", virtual_cpus=2)
    strategy = strategies.build(config)
    ```
    """

    strategy: str = "auto"
    device: str | None = None
    num_gpus: int | None = None
    virtual_cpus: int = 0
    all_reduce: str = "auto"
    worker_hosts: tuple[str, ...] = ()
    ps_hosts: tuple[str, ...] = ()
    chief_host: str | None = None
    task_type: str | None = None
    task_index: int | None = None
    cluster_timeout: float = 120.0
    heartbeat_timeout: float = 0.0
    ps_shards: int = 0
    tpu: str | None = None
    tpu_zone: str | None = None
    gcp_project: str | None = None
    mixed_precision: str = "float32"
    allow_public_addresses: bool = False

    def __post_init__(self) -> None:
        for key in ("worker_hosts", "ps_hosts"):
            object.__setattr__(self, key, _as_hosts(key, getattr(self, key)))
        for key in ("cluster_timeout", "heartbeat_timeout"):
            value = getattr(self, key)
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                object.__setattr__(self, key, float(value))
        _check_types(self)
        _check_values(self)
        _check_used(self)
        _check_cluster(self)

    @property
    def has_cluster_hosts(self) -> bool:
        """Whether the cluster is given by host fields rather than the environment."""
        return bool(self.worker_hosts or self.ps_hosts or self.chief_host)


def replace(config: StrategyConfig, overrides: Mapping[str, Any]) -> StrategyConfig:
    """`dataclasses.replace` that answers an unknown key with a `StrategyError`."""
    fields = [f.name for f in dataclasses.fields(StrategyConfig)]
    for key in overrides:
        if key not in fields:
            raise StrategyError(
                f"Unknown strategy option `{key}`; valid options are {fields}. "
                f"Received: {key}={overrides[key]!r}."
            )
    return dataclasses.replace(config, **overrides)


def _as_hosts(key: str, value: Any) -> Any:
    if value is None:
        return ()
    if isinstance(value, str):  # "a:1,b:2", as typed on a command line
        return tuple(value.split(",")) if value else ()
    if isinstance(value, Sequence):
        return tuple(value)
    return value  # left for _check_types to reject with the key's name


def _check_types(c: StrategyConfig) -> None:
    def is_int(v: Any) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    for key in ("strategy", "all_reduce", "mixed_precision"):
        if not isinstance(getattr(c, key), str):
            raise invalid(key, getattr(c, key), "a string")
    for key in ("device", "chief_host", "task_type", "tpu", "tpu_zone", "gcp_project"):
        if getattr(c, key) is not None and not isinstance(getattr(c, key), str):
            raise invalid(key, getattr(c, key), "a string or None")
    for key in ("worker_hosts", "ps_hosts"):
        value = getattr(c, key)
        if not isinstance(value, tuple) or not all(isinstance(h, str) for h in value):
            raise invalid(key, value, "a list of 'host:port' strings")
    for key in ("virtual_cpus", "ps_shards"):
        if not is_int(getattr(c, key)):
            raise invalid(key, getattr(c, key), "an integer")
    for key in ("num_gpus", "task_index"):
        if getattr(c, key) is not None and not is_int(getattr(c, key)):
            raise invalid(key, getattr(c, key), "an integer or None")
    for key in ("cluster_timeout", "heartbeat_timeout"):
        if not isinstance(getattr(c, key), float):
            raise invalid(key, getattr(c, key), "a number of seconds")
    if not isinstance(c.allow_public_addresses, bool):
        raise invalid("allow_public_addresses", c.allow_public_addresses, "True or False")


def _check_values(c: StrategyConfig) -> None:
    if c.strategy not in _registry.available():
        raise invalid("strategy", c.strategy, one_of(_registry.available()))
    if c.mixed_precision not in MIXED_PRECISION:
        raise invalid("mixed_precision", c.mixed_precision, one_of(MIXED_PRECISION))
    # Other built-in strategies read no all_reduce; _check_used rejects one.
    choices = ALL_REDUCE.get(c.strategy, ALL_REDUCE_CHOICES)
    if c.all_reduce not in choices:
        raise invalid("all_reduce", c.all_reduce, f"{one_of(choices)} for strategy={c.strategy!r}")
    if c.device is not None:
        _check_device(c.device)
    if c.num_gpus is not None and c.num_gpus < 1:
        raise invalid("num_gpus", c.num_gpus, "at least 1, or unset to use every GPU")
    if not 0 <= c.virtual_cpus <= 1024:
        raise invalid("virtual_cpus", c.virtual_cpus, "between 0 (off) and 1024")
    if c.num_gpus is not None and c.virtual_cpus:
        raise invalid(
            "virtual_cpus", c.virtual_cpus, "0 when num_gpus is set",
            "mirror over GPUs or over virtual CPUs, not both",
        )  # fmt: skip
    if c.task_index is not None and c.task_index < 0:
        raise invalid("task_index", c.task_index, "a non-negative integer")
    if c.task_type is not None and c.task_type not in FLAG_TASK_TYPES:
        raise invalid("task_type", c.task_type, one_of(FLAG_TASK_TYPES))
    if not (math.isfinite(c.cluster_timeout) and c.cluster_timeout > 0):
        raise invalid("cluster_timeout", c.cluster_timeout, "a positive, finite number of seconds")
    if not (math.isfinite(c.heartbeat_timeout) and (c.heartbeat_timeout == 0 or 1 <= c.heartbeat_timeout <= MAX_HEARTBEAT_TIMEOUT)):
        raise invalid("heartbeat_timeout", c.heartbeat_timeout,
                      f"0 (TensorFlow's default) or 1 to {MAX_HEARTBEAT_TIMEOUT:g} seconds")
    if c.ps_shards < 0:
        raise invalid("ps_shards", c.ps_shards, "0 (size-based sharding) or a positive shard count")
    for key in ("worker_hosts", "ps_hosts"):
        for host in getattr(c, key):
            check_address(key, host)
    if c.chief_host is not None:
        check_address("chief_host", c.chief_host)
    _check_tpu(c)


def check_address(key: str, address: str) -> None:
    """Raises a `StrategyError` naming ``key`` unless ``address`` is ``host:port``."""
    match = _ADDRESS.match(address)
    if not match or not 1 <= int(match["port"]) <= 65535:
        raise invalid(key, address, "a 'host:port' address with a port in 1..65535", "e.g. 10.0.0.2:2222")


def public_ip(address: str) -> str | None:
    """The IP literal of a ``host:port`` if it is a public (globally routable) one, else None.

    Private (10/8, 172.16/12, 192.168/16, fc00::/7), loopback, link-local and
    shared (100.64/10) addresses are not public. A hostname is not resolved
    here: it may name a private machine or a public one, and only the network
    knows (docs/guarantees.md, guarantee 10).
    """
    host = address.rpartition(":")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None  # A hostname.
    return host if ip.is_global else None


def check_private(addresses: Mapping[str, str], allow_public: bool) -> None:
    """Refuses, in one line naming the key, the first ``{key: address}`` with a public IP address.

    TensorFlow's gRPC servers (every task of a multi-worker or
    parameter-server job) listen on every interface and authenticate no one:
    whoever reaches the port can run arbitrary ops, so code, in the job.
    TensorFlow's SECURITY.md, "Running a TensorFlow server": the server "is not
    built for use in an untrusted network", has no authorization protocol and
    sends messages unencrypted. ``allow_public`` (``--allow_public_addresses``)
    accepts them.
    """
    if allow_public:
        return
    for key, address in addresses.items():
        if public_ip(address) is not None:
            raise StrategyError(
                f"`{key}` is the public IP address {address!r}: TensorFlow's gRPC servers have no "
                "authentication, so anyone who can reach it could run code in this job. Use private "
                "addresses (e.g. 10.x.x.x) or hostnames on a private network, or, behind a firewall "
                "that admits only the cluster, pass allow_public_addresses=True "
                f"(--allow_public_addresses). Received: {key}={address!r}."
            )


def _check_device(device: str) -> None:
    import tensorflow as tf  # Lazy: config validation should not pay for TF unless needed.

    try:
        spec = tf.DeviceSpec.from_string(device)
    except (ValueError, TypeError):
        spec = None
    if spec is None or spec.device_type not in ("CPU", "GPU", "TPU"):
        raise invalid("device", device, "a CPU, GPU or TPU device such as '/cpu:0' or '/gpu:1'")


def _check_tpu(c: StrategyConfig) -> None:
    tpu = c.tpu
    if tpu is not None:
        if tpu.startswith("grpc://"):
            check_address("tpu", tpu[len("grpc://") :])
        elif tpu != "local" and not _TPU_NAME.match(tpu):
            raise invalid(
                "tpu", tpu, "'local' (on a TPU VM), a TPU name such as 'my-tpu', or 'grpc://HOST:PORT'"
            )
    for key in ("tpu_zone", "gcp_project"):
        value = getattr(c, key)
        if value is None:
            continue
        if not _GCP_ID.match(value):
            raise invalid(key, value, "a GCP identifier such as 'us-central2-b' or 'my-project'")
        if tpu == "local" or (tpu or "").startswith("grpc://"):
            raise invalid(key, value, "unset unless tpu is a TPU name", f"tpu={tpu!r} needs no lookup")


def _check_used(c: StrategyConfig) -> None:
    if c.strategy not in BUILTIN:  # A user's own builder may read any field.
        return
    defaults = StrategyConfig.__dataclass_fields__
    for key, users in _USED_BY.items():
        value = getattr(c, key)
        if value != defaults[key].default and c.strategy not in users:
            raise invalid(
                key, value, f"left unset with strategy={c.strategy!r}",
                f"it is read only by strategy {' or '.join(repr(u) for u in users)}",
            )  # fmt: skip


def _check_cluster(c: StrategyConfig) -> None:
    if not c.has_cluster_hosts:
        for key in ("task_type", "task_index"):
            if getattr(c, key) is not None:
                raise invalid(
                    key, getattr(c, key), "set only together with worker_hosts/chief_host/ps_hosts",
                    "give the cluster's hosts, or drop it and let TF_CONFIG describe the task",
                )  # fmt: skip
        return
    for key in ("task_type", "task_index"):
        if getattr(c, key) is None:
            raise invalid(key, None, "set when cluster hosts are given", "say which task this process is")
    if c.strategy == "parameter_server":
        if c.chief_host is None:
            raise invalid("chief_host", None, "set for a parameter-server cluster", "the chief runs the training loop")
        for key in ("worker_hosts", "ps_hosts"):
            if not getattr(c, key):
                raise invalid(key, getattr(c, key), "at least one 'host:port' for a parameter-server cluster")
    if c.strategy == "multi_worker_mirrored" and not c.worker_hosts:
        raise invalid("worker_hosts", c.worker_hosts, "at least one 'host:port' for multi-worker training")
    tasks = {"chief": (c.chief_host,) if c.chief_host else (), "worker": c.worker_hosts, "ps": c.ps_hosts}
    if c.task_type == "evaluator":
        pass  # Outside the cluster: no host of its own, and any index names it.
    elif not tasks[c.task_type]:
        jobs = [job for job, hosts in tasks.items() if hosts]
        raise invalid("task_type", c.task_type, f"{one_of([*jobs, 'evaluator'])}, the roles given hosts")
    elif c.task_index >= len(tasks[c.task_type]):
        raise invalid(
            "task_index", c.task_index,
            f"below {len(tasks[c.task_type])}, the number of {c.task_type} hosts",
        )  # fmt: skip
    seen: dict[str, str] = {}
    for key, hosts in zip(_HOST_KEYS, tasks.values(), strict=True):
        for host in hosts:
            if host in seen:
                raise invalid(key, host, "an address used by no other task", f"it is also in {seen[host]}")
            seen[host] = key
