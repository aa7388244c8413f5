r"""An accelerator check that one command runs: ``python -m launch.device_check``.

It finds the accelerators present and runs a fixed, time-boxed set of checks
(`launch.device_check._catalog`): the fused optimizer kernels, and every tfopt
optimizer's fraction of a memory roof measured in the same run; Shampoo's and
SOAP's step cost against Keras' AdamW; the default training job under ``auto`` and under
``mirrored`` over two logical devices, ``mixed_float16`` (speed, and an fp16
overflow on one replica skipped on every replica) and XLA on two convnets.
The full profile is sized for one GPU in at most 8 minutes; ``--quick`` runs
the same checks, much smaller, on whatever is there (on a CPU-only machine
the CPU stands in: about 40 s of CPU work; ``make test`` runs it).

Every check has its own time box. A check that fails, raises, crashes its
process or outruns its box is reported FAILED or TIMEOUT with the reason; an
accelerator that is not there is MISSING; nothing is reported as a pass that
did not run and pass. It writes ``device_check.json``, ``device_check.md``
and each worker's log to ``--output_dir``, and prints the table. Exit status:
0 when no check FAILED or TIMED OUT, 1 otherwise, 2 for a bad flag::

    python -m launch.device_check --output_dir=runs/device_check
    python -m launch.device_check --quick

This process imports no TensorFlow: each device layout's checks run in a
`launch.device_check._worker` child, because TensorFlow fixes its logical devices
when it initializes, and so that a hung or crashed check can be killed and
reported while the others go on. See docs/accelerators.md.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Sequence

from absl import flags

from launch import _console, _flags, _paths
from launch.device_check import _catalog as catalog
from launch.device_check import _report, _runner

# --output_dir and --quick are shared with launch.bench.optimizers, --data_dir with
# launch.train (launch/_flags.py): entry points must import into one process.
_OUTPUT_DIR, _QUICK, _DATA_DIR = _flags.OUTPUT_DIR, _flags.QUICK, _flags.DATA_DIR
_flags.declare_key_flags(__name__, _OUTPUT_DIR, _QUICK, _DATA_DIR)
_DEFAULT_OUTPUT_DIR = "runs/device_check"
_TIME_BUDGET_S = flags.DEFINE_float(
    "time_budget_s", None, "Wall-clock budget for all checks; checks that no longer fit are "
    "SKIPPED. Default: 480 (8 minutes), or 300 with --quick.", lower_bound=1.0,
)  # fmt: skip
_CHECKS = flags.DEFINE_list("checks", None, "Run only these checks (default: all).")
_CHECK_TIMEOUT_S = flags.DEFINE_float(
    "check_timeout_s", None, "Override every check's own time box (seconds).", lower_bound=0.1
)
_STARTUP_TIMEOUT_S = flags.DEFINE_float(
    "startup_timeout_s", 120.0, "Time a worker may take to import TensorFlow and set up devices.",
    lower_bound=1.0,
)  # fmt: skip
_INJECT_FAULT = flags.DEFINE_list(
    "inject_fault", [], "For testing the harness: CHECK=fail|hang|crash makes that check fail, "
    "hang or kill its process, so that the report shows FAILED/TIMEOUT for it.",
)  # fmt: skip

PROG = _runner.PROG
_FAULTS = ("fail", "hang", "crash")


def _plan(profile: str) -> tuple[list[catalog.Check], dict[str, str]]:
    plan = catalog.checks(profile)
    names = [c.name for c in plan]
    if _CHECKS.value:
        unknown = sorted(set(_CHECKS.value) - set(names))
        if unknown:
            _console.fail(PROG, f"--checks takes {', '.join(names)}. Received: {','.join(unknown)}.")
        plan = [c for c in plan if c.name in _CHECKS.value]
    inject = {}
    for item in _INJECT_FAULT.value:
        name, _, mode = item.partition("=")
        if name not in names or mode not in _FAULTS:
            _console.fail(PROG, f"--inject_fault takes CHECK={'|'.join(_FAULTS)} with CHECK one of "
                  f"{', '.join(names)}. Received: {item!r}.")  # fmt: skip
        inject[name] = mode
    return plan, inject


def _keep_logs(workdir: str, output_dir: str, max_bytes: int = 1 << 20) -> None:
    """Copies each worker's log (its last MiB) next to the report: a one-shot GPU
    run has no second chance to look."""
    for name in sorted(os.listdir(workdir)):
        if name.startswith("worker-") and name.endswith(".log"):
            with open(os.path.join(workdir, name), "rb") as f:
                f.seek(max(0, os.path.getsize(f.name) - max_bytes))
                tail = f.read()
            _paths.write_text(os.path.join(output_dir, name), tail)  # gs:// too.


def main(argv: Sequence[str]) -> None:
    """Runs the checks, writes ``device_check.json`` and ``.md``, prints the table."""
    _console.check_no_positional(PROG, argv)
    profile = catalog.QUICK if _QUICK.value else catalog.FULL
    plan, inject = _plan(profile)
    budget = _TIME_BUDGET_S.value or (300.0 if _QUICK.value else 480.0)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    began = time.monotonic()
    output_dir = _paths.makedirs(_flags.value_or(_OUTPUT_DIR, _DEFAULT_OUTPUT_DIR))  # gs:// as given.
    spec = {"profile": profile, "inject": inject,
            "data_dir": _paths.resolve(_DATA_DIR.value) if _DATA_DIR.value else None}  # fmt: skip
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _runner.on_signal)
    with tempfile.TemporaryDirectory(prefix="device_check-") as workdir:
        results = _runner.run_checks(plan, spec, workdir, budget, _STARTUP_TIMEOUT_S.value, _CHECK_TIMEOUT_S.value)
        _keep_logs(workdir, output_dir)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)  # Let the report be written whole.
    report = _report.build_report(plan, results, profile, date, time.monotonic() - began, budget)
    json_path = os.path.join(output_dir, "device_check.json")
    md_path = os.path.join(output_dir, "device_check.md")
    _paths.write_text(json_path, json.dumps(report, indent=1, default=str))
    table = _report.markdown(report)
    _paths.write_text(md_path, table)
    print(table)
    print(f"Wrote {json_path}, {md_path}")
    bad = report["counts"][catalog.FAILED] + report["counts"][catalog.TIMEOUT]
    sys.exit(_console.EXIT_FAILED if bad else _console.EXIT_OK)


def run(argv: list[str] | None = None) -> None:
    """Entry point: absl parses the flags; a bad value exits with status 2."""
    _console.run(main, PROG, __name__, argv)
