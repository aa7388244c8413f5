"""absl flags for `strategies`, and the two ways to turn them into a `StrategyConfig`.

Scripts define these flags by importing this module before `app.run` parses
argv, then call `config_from_flags()` inside ``main``. Notebooks call
`parse_notebook_flags()`, which ignores the kernel's own arguments. Library
code never reads ``FLAGS``: it takes a `StrategyConfig`.

Every flag has the name of the `StrategyConfig` field it sets, and every rule is
the config's own: the multi-flag validators below build a config from their
group of flags, so a flag combination and the equivalent Python call fail with
the same sentence.
"""

from __future__ import annotations

import difflib
import math
import sys
from collections.abc import Sequence
from typing import Any

from absl import flags

from strategies.building import _config, _registry
from strategies.building._config import StrategyConfig
from strategies.building._errors import StrategyError, invalid

_STRATEGY = flags.DEFINE_enum(
    "strategy", "auto", _registry.available(),
    "tf.distribute strategy; 'auto' picks TPU > cluster (TF_CONFIG/hosts/Slurm) > several GPUs > one device.",
)  # fmt: skip
_DEVICE = flags.DEFINE_string(
    "device", None, "one_device: device such as /cpu:0 or /gpu:1 (default: /gpu:0 if a GPU exists, else /cpu:0)."
)
_NUM_GPUS = flags.DEFINE_integer("num_gpus", None, "mirrored: number of GPUs to use (default: all).", lower_bound=1)
_VIRTUAL_CPUS = flags.DEFINE_integer(
    "virtual_cpus", 0, "mirrored: split the CPU into N logical devices, one replica each (0 = off).",
    lower_bound=0, upper_bound=256,
)
_ALL_REDUCE = flags.DEFINE_enum(
    "all_reduce", "auto", list(_config.ALL_REDUCE_CHOICES),
    "Cross-device reduction. mirrored: auto|nccl|hierarchical_copy|reduce_to_one; "
    "multi_worker_mirrored: auto|ring|nccl.",
)  # fmt: skip
_WORKER_HOSTS = flags.DEFINE_list("worker_hosts", [], "Comma-separated host:port of every worker, in task order.")
_PS_HOSTS = flags.DEFINE_list("ps_hosts", [], "parameter_server: comma-separated host:port of every ps task.")
_CHIEF_HOST = flags.DEFINE_string("chief_host", None, "host:port of the chief (required by parameter_server).")
_TASK_TYPE = flags.DEFINE_enum(
    "task_type", None, list(_config.FLAG_TASK_TYPES),
    "This process's role in the cluster given by the *_hosts flags; 'evaluator' watches it from outside.",
)
_TASK_INDEX = flags.DEFINE_integer(
    "task_index", None, "This process's index within --task_type.", lower_bound=0
)
_CLUSTER_TIMEOUT = flags.DEFINE_float(
    "cluster_timeout", 120.0, "Seconds to wait for every peer (or a grpc:// TPU) before failing with its name."
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_float(
    "heartbeat_timeout", 0.0,
    "multi_worker_mirrored: seconds without a heartbeat before a task counts as lost and the step "
    "fails (a hung peer); 0: TensorFlow's default, 10 s. See docs/reliability.md.",
)  # fmt: skip
_PS_SHARDS = flags.DEFINE_integer(
    "ps_shards", 0,
    "parameter_server: 0 = shard variables by size (>=256 KiB a shard, at most one per ps); N = N shards each.",
    lower_bound=0,
)  # fmt: skip
_TPU = flags.DEFINE_string("tpu", None, "tpu: 'local' on a TPU VM, a TPU name, or grpc://HOST:PORT.")
_TPU_ZONE = flags.DEFINE_string("tpu_zone", None, "tpu: GCP zone of a named TPU.")
_GCP_PROJECT = flags.DEFINE_string("gcp_project", None, "tpu: GCP project of a named TPU.")
_MIXED_PRECISION = flags.DEFINE_enum(
    "mixed_precision", "float32", list(_config.MIXED_PRECISION),
    "Keras global dtype policy that strategies.build sets (mixed_bfloat16 suits TPUs, mixed_float16 GPUs).",
)  # fmt: skip
_ALLOW_PUBLIC_ADDRESSES = flags.DEFINE_boolean(
    "allow_public_addresses", False,
    "Accept a cluster with public IP addresses. TF's gRPC servers have no authentication: anyone who "
    "reaches a task can run code in it. Only behind a firewall that admits the cluster alone.",
)  # fmt: skip

HOLDERS: dict[str, flags.FlagHolder] = {
    h.name: h
    for h in (
        _STRATEGY, _DEVICE, _NUM_GPUS, _VIRTUAL_CPUS, _ALL_REDUCE, _WORKER_HOSTS, _PS_HOSTS, _CHIEF_HOST,
        _TASK_TYPE, _TASK_INDEX, _CLUSTER_TIMEOUT, _HEARTBEAT_TIMEOUT, _PS_SHARDS, _TPU, _TPU_ZONE, _GCP_PROJECT, _MIXED_PRECISION,
        _ALLOW_PUBLIC_ADDRESSES,
    )
}  # fmt: skip

# Cross-flag rule groups; each is checked by building a config from its flags.
_GROUPS = {
    "device": ("strategy", "device", "num_gpus", "virtual_cpus", "all_reduce"),
    "cluster": ("strategy", "worker_hosts", "ps_hosts", "chief_host", "task_type", "task_index",
                "ps_shards", "cluster_timeout", "heartbeat_timeout"),
    "tpu": ("strategy", "tpu", "tpu_zone", "gcp_project"),
}  # fmt: skip


def _group_validator(values: dict[str, Any]) -> bool:
    try:
        StrategyConfig(**values)
    except StrategyError as e:
        raise flags.ValidationError(str(e)) from None
    return True


for _names in _GROUPS.values():
    flags.register_multi_flags_validator(list(_names), _group_validator)


# Counts and sizes beyond this overflow the int32 TensorFlow uses for them.
MAX_INT = 2**31 - 1


def register_number_validators(module: Any) -> None:
    """Rejects NaN, +-inf and integers beyond `MAX_INT` for every number flag ``module`` defines.

    NaN passes every absl bound (each comparison with it is False) and inf
    passes a lower one; neither is a usable value, and a run would train on
    NaN or never time out. A huge integer fails deep inside TensorFlow.
    """
    for flag in flags.FLAGS.get_flags_for_module(module):
        parser = flag.parser
        if isinstance(parser, flags.FloatParser):
            flags.register_validator(flag.name, _finite, f"--{flag.name} must be a finite number")
        elif isinstance(parser, flags.IntegerParser) and parser.upper_bound is None:
            flags.register_validator(flag.name, _not_huge, f"--{flag.name} must be at most {MAX_INT}")


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def _not_huge(value: int | None) -> bool:
    return value is None or value <= MAX_INT


register_number_validators(sys.modules[__name__])


def config_from_flags() -> StrategyConfig:
    """Returns the `StrategyConfig` the parsed command-line flags describe.

    Raises:
        StrategyError: If flags are not parsed yet, or their values cannot work.
    """
    try:
        values = {name: holder.value for name, holder in HOLDERS.items()}
    except flags.UnparsedFlagAccessError:
        raise StrategyError(
            "`strategies.flags` were read before flags were parsed; run main through absl's app.run, "
            "or call strategies.flags.parse_notebook_flags() in a notebook. Received: flags parsed=False."
        ) from None
    return StrategyConfig(**values)


def parse_notebook_flags(argv: Sequence[str] | None = None, **values: Any) -> StrategyConfig:
    """Parses only this module's flags and returns their `StrategyConfig`.

    Made for notebooks, where ``sys.argv`` holds the kernel's own arguments
    (Colab: ``-f /root/.local/share/jupyter/runtime/kernel-….json``) that
    absl would reject. Every call starts from the flags' defaults, so re-running
    a cell gives the same result. Afterwards ``FLAGS`` counts as parsed, so
    other flags can be read with their defaults.

    Args:
        argv: Command-line style arguments; default ``sys.argv``. Arguments
            that are not this module's flags are ignored, unless one looks like
            a misspelling of a flag.
        **values: Flag values as Python values, applied after ``argv``, e.g.
            ``strategy="mirrored", virtual_cpus=2``. ``None`` means the default.

    Raises:
        StrategyError: On an unknown keyword, a misspelled flag, or any value or
            combination that `StrategyConfig` rejects; ``FLAGS`` is then unchanged.

    Example:

    ```python
    config = strategies.flags.parse_notebook_flags(strategy="mirrored", virtual_cpus=2)
    strategy = strategies.build(config)
    ```
    """
    given = _our_args(sys.argv if argv is None else argv)
    for name, value in values.items():
        if name not in HOLDERS:
            raise StrategyError(
                f"`{name}` is not a strategies flag; valid flags are {sorted(HOLDERS)}. Received: {name}={value!r}."
            )
        given[name] = value
    # Check everything before touching FLAGS, so a bad call changes nothing.
    parsed = {name: _parse(name, value) for name, value in given.items() if value is not None}
    config = StrategyConfig(**{name: parsed.get(name, flags.FLAGS[name].default) for name in HOLDERS})
    for name in HOLDERS:
        flags.FLAGS[name].unparse()
        if name in parsed:
            flags.FLAGS[name].parse(given[name])  # Sets .present, as a command line would.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return config


def _parse(name: str, value: Any) -> Any:
    try:
        return flags.FLAGS[name].parser.parse(value)
    except (flags.IllegalFlagValueError, ValueError, TypeError) as e:
        raise invalid(name, value, f"a valid --{name} value ({_first_line(e)})") from None


def _is_boolean(name: str) -> bool:
    for candidate in (name, name[2:] if name.startswith("no") else None):
        if candidate in HOLDERS and isinstance(flags.FLAGS[candidate], flags.BooleanFlag):
            return True
    return False


def _our_args(argv: Sequence[str]) -> dict[str, str]:
    """Picks ``--name=value`` / ``--name value`` pairs of our flags out of ``argv``."""
    found: dict[str, str] = {}
    args = list(argv[1:])  # argv[0] is the program, as for absl.
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if not isinstance(arg, str) or not arg.startswith("-") or arg == "-":
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if not eq and _is_boolean(name):
            # --allow_public_addresses, --noallow_public_addresses: as absl reads them.
            name, value = (name, "true") if name in HOLDERS else (name[2:], "false")
            found[name] = value
            continue
        if name not in HOLDERS:
            _reject_misspelling(arg, name)
            continue
        if not eq:
            if i >= len(args):
                raise invalid(name, None, f"given a value, as --{name}=VALUE")
            value = args[i]
            i += 1
        found[name] = value
    return found


def _reject_misspelling(arg: str, name: str) -> None:
    if not arg.startswith("--") or name in flags.FLAGS:
        return
    close = difflib.get_close_matches(name, HOLDERS, n=1, cutoff=0.75)
    if close:
        raise StrategyError(
            f"`{name}` is not a strategies flag; did you mean --{close[0]}? Received: {arg!r}."
        )


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
