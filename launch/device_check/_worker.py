"""A child process of `launch.device_check`: one device layout, some checks, one result file each.

``python -m launch.device_check._worker SPEC.json``. The parent writes the spec
(profile, layout, check names, work directory, injected faults) and watches
the work directory: this process writes ``<check>.start`` when a check begins
and ``<check>.json`` when it ends, so that the parent can give every check its
own time box, kill this process when one outruns it, and report a check that
crashed the process under its own name.

The device layout is set before anything initializes TensorFlow, which fixes
its logical devices at first use: that is why each layout needs a process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from typing import Any

import launch.device_check._catalog as catalog

# Each logical GPU of the TWO layout gets this share of the GPU's memory.
_SPLIT_MEMORY_FRACTION = 0.4
_SPLIT_MEMORY_FALLBACK_MB = 4096


def gpu_memory_mb() -> int | None:
    """The first GPU's total memory as nvidia-smi reports it, or None."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout  # fmt: skip
        return int(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def set_layout(layout: str) -> dict[str, Any]:
    """Creates the logical devices of ``layout``; returns what was made."""
    import tensorflow as tf

    if layout == catalog.ONE:
        return {"layout": layout}
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        total = gpu_memory_mb()
        limit = int(total * _SPLIT_MEMORY_FRACTION) if total else _SPLIT_MEMORY_FALLBACK_MB
        config = [tf.config.LogicalDeviceConfiguration(memory_limit=limit)] * 2
        # Only the first GPU, split: on a multi-GPU machine the two replicas
        # must still share one physical device.
        tf.config.set_visible_devices(gpus[0], "GPU")
        tf.config.set_logical_device_configuration(gpus[0], config)
        return {"layout": layout, "split": f"{gpus[0].name} into 2 logical GPUs of {limit} MB"}
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return {"layout": layout, "split": "the CPU into 2 logical CPUs"}


def _write(path: str, value: dict[str, Any]) -> None:
    # Atomic: the parent never reads half a file.
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1, default=str)
    os.replace(path + ".tmp", path)


def _inject(mode: str) -> None:
    """The faults the harness's own tests inject, so that they see each status."""
    if mode == "fail":
        raise AssertionError("injected failure (--inject_fault)")
    if mode == "hang":
        time.sleep(10**6)
    if mode == "crash":
        os._exit(70)  # As a segfault or the OOM killer would: no result file.
    raise ValueError(f"unknown injected fault {mode!r}")


def main(spec_path: str) -> None:
    # Never reach for the network (TFDS's GCS probes, GCE metadata): set before
    # set_layout() and the checks import TensorFlow and TFDS.
    os.environ.setdefault("TFDS_DISABLE_GCS", "1")
    os.environ.setdefault("NO_GCE_CHECK", "True")
    with open(spec_path) as f:
        spec = json.load(f)
    workdir = spec["workdir"]
    layout_info = set_layout(spec["layout"])

    import launch.device_check._checks as _checks  # TensorFlow, Keras and the project.

    context = _checks.Context(
        profile=spec["profile"], workdir=workdir, data_dir=spec.get("data_dir"), layout=layout_info
    )
    by_name = {c.name: c for c in catalog.checks(spec["profile"])}
    for name in spec["checks"]:
        check = by_name[name]
        began = time.time()
        _write(os.path.join(workdir, f"{name}.start"), {"began": began})
        try:
            if name in spec.get("inject", {}):
                _inject(spec["inject"][name])
            result = _checks.CHECKS[check.kind](check, context)
        except Exception as error:  # Any error is this check's FAILED.
            lines = traceback.format_exception_only(type(error), error)
            result = {
                "status": catalog.FAILED,
                "reason": " ".join("".join(lines).split())[:500],
                "traceback": traceback.format_exc()[-4000:],
            }
        result.setdefault("device", context.device)
        result["layout"] = layout_info
        result["seconds"] = round(time.time() - began, 2)
        _write(os.path.join(workdir, f"{name}.json"), result)
        if name == "accelerators" and spec["profile"] == catalog.FULL and result["status"] != catalog.PASS:
            return  # The full profile is for an accelerator; the parent reports the rest MISSING.


def run(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m launch.device_check._worker SPEC.json`` (started by device_check)."""
    main((sys.argv if argv is None else argv)[1])


if __name__ == "__main__":
    run()
