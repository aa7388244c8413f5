"""Flags more than one launch entry point reads, defined once.

absl flags are process-global: two modules that each define ``--epochs``
cannot be imported into one process (a notebook, a test session, a script that
drives both). So a flag with the same meaning in several entry points lives
here, and each entry point reads the holder. Its default is ``None`` where the
entry points' defaults differ; each entry point says what unset means in the
help text below, and resolves it with :func:`value_or`.

Entry points whose flags have other meanings keep them, under names that do
not collide (``launch.tpu_vm --steps`` are the steps of its plan).
"""

from __future__ import annotations

import sys
from typing import TypeVar

from absl import flags

_T = TypeVar("_T")

EPOCHS = flags.DEFINE_integer(
    "epochs", None,
    "Epochs to run. Unset: launch.train trains 15; launch.bench.fit runs 4 per "
    "measurement (the first is not timed).",
    lower_bound=1,
)  # fmt: skip
STEPS_PER_EPOCH = flags.DEFINE_integer(
    "steps_per_epoch", None,
    "Steps per epoch. Unset: launch.train makes one pass over the train split per epoch; "
    "launch.bench.fit runs 200.",
    lower_bound=1,
)  # fmt: skip

DATA_DIR = flags.DEFINE_string(
    "data_dir", None,
    "TFDS data directory (launch.train; launch.device_check's training checks). "
    "Unset: $TFDS_DATA_DIR, else ~/tensorflow_datasets.",
)  # fmt: skip
OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None,
    "Where to write the results. Unset: launch.bench.optimizers writes to "
    "runs/bench_optimizers; launch.device_check to runs/device_check.",
)  # fmt: skip
QUICK = flags.DEFINE_bool(
    "quick", False,
    "A small run. launch.bench.optimizers: --sizes=1M --timed_steps=5 --noisolate unless "
    "those are given. launch.device_check: the small profile, the CPU stand-in that "
    "make test runs.",
)  # fmt: skip

SHARED = (EPOCHS, STEPS_PER_EPOCH, DATA_DIR, OUTPUT_DIR, QUICK)


def declare_key_flags(module_name: str, *holders: flags.FlagHolder) -> None:
    """Lists ``holders`` in ``module_name``'s ``--help``, as if it defined them.

    Each entry point declares the shared flags it reads, and no others: a
    blanket ``flags.adopt_module_key_flags(_flags)`` would show ``--quick`` in
    ``launch.train --help``.
    """
    if module_name == "__main__":
        # Run as `python -m`: absl names the main module by sys.argv[0], as
        # flags.declare_key_flag does for its caller.
        module_name = sys.argv[0]
    for holder in holders:
        flags.FLAGS.register_key_flag_for_module(module_name, flags.FLAGS[holder.name])


def value_or(holder: flags.FlagHolder[_T | None], default: _T) -> _T:
    """The flag's value, or the entry point's own ``default`` when it is unset."""
    return default if holder.value is None else holder.value
