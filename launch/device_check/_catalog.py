"""The fixed list of `launch.device_check` checks: names, device layouts, time boxes.

This module imports no TensorFlow: the parent process of ``device_check``
reads it to plan the run and to report a check that never started (a worker
that could not even import TensorFlow, a time budget spent) under its name.
The checks themselves live in `launch.device_check._checks` and run in child
processes (`launch.device_check._worker`).
"""

from __future__ import annotations

import dataclasses

# A check's outcome. Only PASS is a pass.
PASS = "PASS"
FAILED = "FAILED"  # It ran and a condition failed, or it raised or crashed.
TIMEOUT = "TIMEOUT"  # It outran its own time box and was killed.
MISSING = "MISSING"  # The accelerator it needs is not there.
SKIPPED = "SKIPPED"  # Not run, for the reason given (e.g. --time_budget_s spent).
STATUSES = (PASS, FAILED, TIMEOUT, MISSING, SKIPPED)

# Device layouts. TensorFlow fixes its logical devices when it initializes, so
# each layout gets its own worker process.
ONE = "one"  # The devices as found: one GPU (or the CPU).
TWO = "two"  # The first GPU (or the CPU) split into two logical devices.
LAYOUTS = (ONE, TWO)

QUICK = "quick"
FULL = "full"
_QUICK_BOX_S = 60.0

# Parameter counts of the fused-kernel checks (M = 2**20, K = 2**10).
FUSED_SIZES = {FULL: (16 << 20, 64 << 20), QUICK: (256 << 10,)}


@dataclasses.dataclass(frozen=True)
class Check:
    """One check: what it measures, where it runs and how long it may take."""

    name: str
    kind: str  # The function in launch.device_check._checks.CHECKS that runs it.
    layout: str
    box_s: float  # Its own time box, from its start to its result.
    what: str
    params: int | None = None  # Fused-kernel checks: parameters per variable.


def size_label(n: int) -> str:
    """``16 << 20`` -> ``"16M"``; ``64 << 10`` -> ``"64K"``."""
    if n % (1 << 20) == 0:
        return f"{n >> 20}M"
    return f"{n >> 10}K" if n % (1 << 10) == 0 else str(n)


def checks(profile: str) -> list[Check]:
    """Every check of ``profile``, in the order they run.

    The full profile's boxes add up to 480 s, the 8 minutes one GPU gets.
    The quick profile (the CPU stand-in, ``make test``) is about 40 s of CPU
    work in all; its boxes, 60 s each, only catch hangs, loose enough for a
    2-core machine shared with other work.
    """
    full = profile == FULL
    quick_box = _QUICK_BOX_S
    fused_box = (60.0, 80.0) if full else (quick_box,)
    fused = [
        Check(f"fused_kernels_{size_label(n)}", "fused_kernels", ONE, box,
              "SGD+momentum, Adagrad, Adam, LARS, LAMB, RAdam: fused == keras.ops to 1e-6; "
              "step time, tfopt and Keras, XLA off/on, as a fraction of the measured memory roof; "
              "every other tfopt optimizer's fraction of the roof",
              params=n)
        for n, box in zip(FUSED_SIZES[profile], fused_box, strict=True)
    ]  # fmt: skip
    return [
        Check("accelerators", "accelerators", ONE, 20.0 if full else quick_box,
              "GPUs TensorFlow sees, its CUDA build, and nvidia-smi's view"),
        *fused,
        Check("job_auto", "job", ONE, 60.0 if full else quick_box,
              "the default launch.train job under strategy=auto: accuracy, steps/s"),
        Check("second_order", "second_order", ONE, 50.0 if full else quick_box,
              "Shampoo and SOAP step cost vs Keras AdamW (digits CNN; full: and the 784-wide "
              "autoencoder), precondition_frequency=10"),
        Check("mixed_precision_one", "mixed_precision", ONE, 40.0 if full else quick_box,
              "mixed_float16 vs float32 steps/s; an fp16 overflow skips the step"),
        Check("xla_cnn", "xla_cnn", ONE, 30.0 if full else quick_box,
              "digits CNN, jit_compile off/on: step time ratio"),
        Check("xla_convnet", "xla_convnet", ONE, 40.0 if full else quick_box,
              "ResNet-8 on 32x32x3, jit_compile off/on: step time ratio"),
        Check("job_mirrored", "job", TWO, 60.0 if full else quick_box,
              "the default job under mirrored over 2 logical devices: accuracy, steps/s, all-reduce"),
        Check("mixed_precision_two", "mixed_precision", TWO, 40.0 if full else quick_box,
              "mixed_float16 on 2 logical devices: steps/s; overflow on replica 1 only "
              "skipped on every replica"),
    ]  # fmt: skip
