"""Native CPU kernels for LARS and LAMB: two passes over memory, built on first use.

TensorFlow has no kernel that fuses a layer's norms with its update, so the
``keras.ops`` path of LARS and LAMB (and the norms before TF's momentum kernel)
reads and writes every tensor 12 to 14 times per step. ``native/trust_ratio_ops.cc``
holds two TensorFlow custom ops that take two passes: the squared norms
(summed in double, per fixed-size chunk, added in chunk order: deterministic
whatever the thread count), then the update. See that file for the rules;
they are the ``keras.ops`` code of ``_lars.py`` and ``_lamb.py``, line for line.

The library is compiled on first use with the C++ compiler (``$TFOPT_CXX``,
default ``g++``) and TensorFlow's own flags, into
``$XDG_CACHE_HOME/tfopt`` (default ``~/.cache/tfopt``), under a name keyed by
the digest of the source, the TensorFlow version, the compiler and the flags.
Concurrent processes (pytest-xdist workers, cluster tasks) are safe: one
compiles under a file lock, into a temporary file moved into place with
``os.replace``; the others wait and load it.

Never a crash: without a compiler, after a failed build, or with
``TFOPT_NATIVE=0``, :func:`load` returns None and logs why once; the
optimizers then take their previous path.

:func:`applies` says where the ops are correct: TensorFlow backend, not inside
an XLA context (the ops have no XLA kernel), float32/float64 variables and
slots with resource handles, placed on a CPU of this process (not on a
parameter server, another process that may not have loaded the library).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import keras
from absl import logging

from tfopt import _fused

_SOURCE = Path(__file__).parent / "native" / "trust_ratio_ops.cc"
DTYPES = ("float32", "float64")
# Optimization flags, part of the cache key. -fno-math-errno lets sqrt vectorize
# (it changes no result). No -march=native: the cache may be
# shared (an NFS home) by machines with different CPUs.
_OPT_FLAGS = ("-O3", "-fno-math-errno", "-fPIC", "-shared", "-w")

_lock = threading.Lock()
_state: dict[str, Any] = {}  # "module" (or None), "reason": this process's one answer.


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tfopt``, or ``~/.cache/tfopt``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tfopt"


def load() -> Any | None:
    """The loaded op library, or None (with the reason logged once per process)."""
    with _lock:
        if "module" not in _state:
            module, reason = _load()
            _state["module"], _state["reason"] = module, reason
            if module is None:
                logging.info("tfopt: native LARS/LAMB kernels not used: %s", reason)
        return _state["module"]


def unavailable_reason() -> str | None:
    """Why :func:`load` returned None, or None when the kernels are loaded."""
    load()
    return _state["reason"]


def reset() -> None:
    """Forget this process's answer (tests change the environment between loads)."""
    with _lock:
        _state.clear()


def _load() -> tuple[Any | None, str | None]:
    if os.environ.get("TFOPT_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "TFOPT_NATIVE=0"
    if keras.backend.backend() != "tensorflow":
        return None, f"the Keras backend is {keras.backend.backend()!r}"
    import tensorflow as tf

    compiler = os.environ.get("TFOPT_CXX", "g++")
    if shutil.which(shlex.split(compiler)[0] if compiler.strip() else "") is None:
        return None, f"no C++ compiler {compiler!r} on PATH (set TFOPT_CXX)"
    command = [
        *shlex.split(compiler), str(_SOURCE), *_OPT_FLAGS,
        *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags(),
    ]  # fmt: skip
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join([source, tf.__version__.encode(), " ".join(command).encode()])
    ).hexdigest()[:20]
    library = cache_dir() / f"trust_ratio_ops-{key}.so"
    try:
        if not library.exists():
            _build(command, library)
        return tf.load_op_library(str(library)), None
    except (OSError, subprocess.SubprocessError, tf.errors.OpError) as error:
        return None, f"{type(error).__name__}: {error}"


def _build(command: list[str], library: Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{library}.lock", "w") as lock_file:
        # One process compiles; the others block here, then find the library.
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if library.exists():
            return
        fd, partial = tempfile.mkstemp(prefix=library.name, suffix=".tmp", dir=library.parent)
        os.close(fd)
        try:
            result = subprocess.run(
                [*command, "-o", partial], capture_output=True, text=True, timeout=600
            )
            if result.returncode != 0:
                tail = result.stderr.strip().splitlines()[-5:]
                raise subprocess.SubprocessError(
                    f"{command[0]} exited with {result.returncode}: " + " | ".join(tail)
                )
            os.replace(partial, library)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        logging.info("tfopt: built the native LARS/LAMB kernels into %s", library)


def unsupported_reason(variable: Any, *slots: Any) -> str | None:
    """Why the native ops cannot update ``variable`` (and ``slots``) here, or None."""
    reason = _fused.unsupported_reason(variable, *slots, dtypes=DTYPES)
    if reason is not None:
        return reason
    for v in (variable, *slots):
        device = v.handle.device
        if not _on_cpu(device):
            return f"{_fused._name(v)!r} is placed on {device}, and the kernels are CPU-only"
        if _job(device) == "ps":
            # The op runs where the variable lives; a parameter server is another
            # process, which may never have loaded the library (its kernels are
            # registered per process).
            return f"{_fused._name(v)!r} lives on a parameter server ({device})"
    return unavailable_reason()


def applies(optimizer: Any, variable: Any, *slots: Any, required: bool = False) -> bool:
    """Whether ``optimizer`` (unless ``fused=False``) may update ``variable`` natively.

    With ``required`` (an optimizer whose only fused path is native, asked with
    ``fused=True``), a ``ValueError`` names the reason where it may not.
    """
    if getattr(optimizer, "fused", "auto") is False:
        return False
    reason = unsupported_reason(variable, *slots)
    if reason is not None and required:
        raise ValueError(
            f"{type(optimizer).__name__}(fused=True) cannot use its native kernel for variable "
            f"{_fused._name(variable)!r}: {reason}. Pass fused='auto' to fall back to the "
            "keras.ops path. Received: fused=True."
        )
    return reason is None


def _job(device: str) -> str | None:
    import tensorflow as tf

    return tf.DeviceSpec.from_string(device).job if device else None


def _on_cpu(device: str) -> bool:
    import tensorflow as tf

    if device:
        return tf.DeviceSpec.from_string(device).device_type in (None, "CPU")
    # Not placed by name (a handle captured in a graph): on CPU unless this
    # process has an accelerator that the placer could choose.
    return not any(tf.config.list_logical_devices(kind) for kind in ("GPU", "TPU"))


def lars(variable, m, gradient, learning_rate, momentum, weight_decay,  # noqa: ANN001, PLR0913
         trust_coefficient, eps, nesterov, adapt) -> None:  # fmt: skip
    """One LARS step, in two passes (see native/trust_ratio_ops.cc for the rule)."""
    load().tfopt_lars_update(
        var=variable.handle, accum=m.handle, grad=gradient,
        lr=_fused._scalar(learning_rate, variable), momentum=_fused._scalar(momentum, variable),
        weight_decay=_fused._scalar(weight_decay, variable),
        trust_coefficient=_fused._scalar(trust_coefficient, variable),
        eps=_fused._scalar(eps, variable), use_nesterov=bool(nesterov), adapt=bool(adapt),
    )  # fmt: skip


def lamb(variable, m, v, gradient, learning_rate, beta_1, beta_2, bias_1, bias_2,  # noqa: ANN001, PLR0913
         epsilon, weight_decay, adapt) -> None:  # fmt: skip
    """One LAMB step, in two passes (see native/trust_ratio_ops.cc for the rule)."""
    load().tfopt_lamb_update(
        var=variable.handle, m=m.handle, v=v.handle, grad=gradient,
        lr=_fused._scalar(learning_rate, variable),
        one_minus_beta_1=_fused._scalar(1 - beta_1, variable),
        one_minus_beta_2=_fused._scalar(1 - beta_2, variable),
        bias_1=_fused._scalar(bias_1, variable), bias_2=_fused._scalar(bias_2, variable),
        epsilon=_fused._scalar(epsilon, variable),
        weight_decay=_fused._scalar(weight_decay, variable), adapt=bool(adapt),
    )  # fmt: skip
