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

from typing import TypeVar

from absl import flags

_T = TypeVar("_T")

EPOCHS = flags.DEFINE_integer(
    "epochs", None,
    "Epochs to run. Unset: launch.train trains 15; launch.bench_fit runs 4 per "
    "measurement (the first is not timed).",
    lower_bound=1,
)  # fmt: skip
STEPS_PER_EPOCH = flags.DEFINE_integer(
    "steps_per_epoch", None,
    "Steps per epoch. Unset: launch.train makes one pass over the train split "
    "(set, it repeats the data); launch.bench_fit runs 200.",
    lower_bound=1,
)  # fmt: skip

SHARED = (EPOCHS, STEPS_PER_EPOCH)


def value_or(holder: flags.FlagHolder[_T | None], default: _T) -> _T:
    """The flag's value, or the entry point's own ``default`` when it is unset."""
    return default if holder.value is None else holder.value
