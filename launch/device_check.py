r"""An accelerator check that one command runs: ``python -m launch.device_check``.

It finds the accelerators present and runs a fixed, time-boxed set of checks
(`launch._device_catalog`): the fused optimizer kernels against a memory roof
measured in the same run, the default training job under ``auto`` and under
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
`launch._device_worker` child, because TensorFlow fixes its logical devices
when it initializes, and so that a hung or crashed check can be killed and
reported while the others go on. See docs/accelerators.md.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from absl import app, flags

from launch import _device_catalog as catalog
from launch import _device_report

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/device_check", "Where to write the report.")
_QUICK = flags.DEFINE_bool("quick", False, "The small profile: the CPU stand-in, for make test.")
_TIME_BUDGET_S = flags.DEFINE_float(
    "time_budget_s", None, "Wall-clock budget for all checks; checks that no longer fit are "
    "SKIPPED. Default: 480 (8 minutes), or 300 with --quick.", lower_bound=1.0,
)  # fmt: skip
_CHECKS = flags.DEFINE_list("checks", None, "Run only these checks (default: all).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir for the digits job.")
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

PROG = "launch.device_check"
_POLL_S = 0.1
_FAULTS = ("fail", "hang", "crash")


def _result(status: str, reason: str) -> dict[str, Any]:
    return {"status": status, "reason": reason}


def _tail(path: str, lines: int = 3, chars: int = 600) -> str:
    """The last few lines of a worker's log (a traceback ends with its exception)."""
    try:
        with open(path, errors="replace") as f:
            last = [line.strip() for line in f.read()[-20_000:].splitlines() if line.strip()]
    except OSError:
        return ""
    return " | ".join(last[-lines:])[-chars:]


def _kill(proc: subprocess.Popen) -> None:
    # The worker leads its own process group (start_new_session): end it and its children.
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait()


def _progress(name: str, result: dict[str, Any] | None) -> None:
    """One line on stderr as each check starts and ends: a long GPU run shows where it is."""
    if result is None:
        line = f"{name}: started"
    else:
        line = f"{name}: {result['status']} ({result.get('seconds', 0) or 0:.1f} s) {result.get('reason', '')}"
    print(f"{PROG}: {' '.join(line.split())[:300]}", file=sys.stderr, flush=True)


class Interrupted(Exception):
    """SIGTERM or SIGINT reached this process (an outer ``timeout``, Ctrl-C)."""


def _on_signal(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _run_worker(checks: list[catalog.Check], spec: dict[str, Any], workdir: str, deadline: float,
                startup_s: float, box_override: float | None,
                results: dict[str, dict[str, Any]]) -> None:  # fmt: skip
    """Runs ``checks`` in one worker, adding to ``results`` each check that ends.

    A check the worker never reached (it was killed, or it died) stays out of
    ``results``, for a fresh worker to run. On `Interrupted`, the worker is
    killed and the check it was running is recorded before re-raising.
    """
    spec_path = os.path.join(workdir, f"spec-{checks[0].name}.json")
    with open(spec_path, "w") as f:
        json.dump({**spec, "layout": checks[0].layout, "checks": [c.name for c in checks],
                   "workdir": workdir}, f)  # fmt: skip
    log = os.path.join(workdir, f"worker-{checks[0].name}.log")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "launch._device_worker", spec_path],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    started, mine = time.monotonic(), [c for c in checks if c.name not in results]

    def path(c: catalog.Check, ext: str) -> str:
        return os.path.join(workdir, f"{c.name}.{ext}")

    def stop(c: catalog.Check, status: str, why: str) -> None:
        _kill(proc)
        with open(path(c, "start")) as f:
            began = json.load(f)["began"]
        results[c.name] = {**_result(status, f"{why}; killed after {time.time() - began:.0f} s"),
                           "seconds": round(time.time() - began, 2), "worker_pid": proc.pid}  # fmt: skip
        _progress(c.name, results[c.name])

    running: list[catalog.Check] = []
    announced: set[str] = set()
    try:
        while True:
            code = proc.poll()
            for c in mine:
                if c.name not in results and os.path.exists(path(c, "json")):
                    with open(path(c, "json")) as f:
                        results[c.name] = json.load(f)
                    _progress(c.name, results[c.name])
            running = [c for c in mine if c.name not in results and os.path.exists(path(c, "start"))]
            if running and running[0].name not in announced:
                announced.add(running[0].name)
                _progress(running[0].name, None)
            if code is not None:
                break
            now = time.monotonic()
            if running:
                c = running[0]
                with open(path(c, "start")) as f:
                    elapsed = time.time() - json.load(f)["began"]
                box = box_override or c.box_s
                if elapsed > box:
                    return stop(c, catalog.TIMEOUT, f"outran its {box:.0f} s time box")
                if now > deadline:
                    return stop(c, catalog.TIMEOUT, "--time_budget_s ran out")
            elif now > deadline or now - started > startup_s:
                _kill(proc)
                for c in mine:
                    results[c.name] = (
                        _result(catalog.SKIPPED, "--time_budget_s ran out before it began")
                        if now > deadline else _result(catalog.TIMEOUT, "its worker did not start "
                                                       f"within {now - started:.0f} s: {_tail(log)}"))  # fmt: skip
                return None
            time.sleep(_POLL_S)
    except Interrupted as signal_name:
        if running:
            stop(running[0], catalog.TIMEOUT, f"the run was stopped by {signal_name} during this check")
        raise
    finally:
        if proc.poll() is None:
            _kill(proc)
    for c in running:  # Started, no result: the process died under it.
        results[c.name] = _result(catalog.FAILED, f"its worker process died (exit status {code}) "
                                  f"during this check: {_tail(log)}")  # fmt: skip
    if not any(c.name in results for c in mine):
        for c in mine:
            results[c.name] = _result(catalog.FAILED, f"its worker could not start (exit status "
                                      f"{code}): {_tail(log)}")  # fmt: skip
    return None


def run_checks(plan: list[catalog.Check], spec: dict[str, Any], workdir: str, budget_s: float,
               startup_s: float, box_override: float | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every check of ``plan`` -> its result; one worker per layout, a new one after a kill.

    SIGTERM or SIGINT stops the run: the check in progress is a TIMEOUT, the
    rest are SKIPPED, and the report is still written.
    """
    deadline = time.monotonic() + budget_s
    results: dict[str, dict[str, Any]] = {}
    try:
        for layout in catalog.LAYOUTS:
            pending = [c for c in plan if c.layout == layout]
            while pending:
                accel = results.get("accelerators")
                if spec["profile"] == catalog.FULL and accel and accel["status"] != catalog.PASS:
                    # The full profile's sizes are for an accelerator (the worker
                    # stopped after `accelerators`); the CPU stand-in is --quick.
                    for c in pending:
                        results[c.name] = (
                            _result(catalog.MISSING, "no GPU (see accelerators); --quick runs the "
                                    "CPU stand-in") if accel["status"] == catalog.MISSING
                            else _result(catalog.SKIPPED, f"not run: accelerators is {accel['status']}"))  # fmt: skip
                    break
                if time.monotonic() >= deadline:
                    for c in pending:
                        results[c.name] = _result(catalog.SKIPPED, "--time_budget_s was spent first")
                    break
                _run_worker(pending, spec, workdir, deadline, startup_s, box_override, results)
                pending = [c for c in pending if c.name not in results]
    except Interrupted as signal_name:
        for c in plan:
            results.setdefault(c.name, _result(catalog.SKIPPED, f"the run was stopped by {signal_name} first"))
    return results


def _fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _plan(profile: str) -> tuple[list[catalog.Check], dict[str, str]]:
    plan = catalog.checks(profile)
    names = [c.name for c in plan]
    if _CHECKS.value:
        unknown = sorted(set(_CHECKS.value) - set(names))
        if unknown:
            _fail(f"--checks takes {', '.join(names)}. Received: {','.join(unknown)}.")
        plan = [c for c in plan if c.name in _CHECKS.value]
    inject = {}
    for item in _INJECT_FAULT.value:
        name, _, mode = item.partition("=")
        if name not in names or mode not in _FAULTS:
            _fail(f"--inject_fault takes CHECK={'|'.join(_FAULTS)} with CHECK one of "
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
            with open(os.path.join(output_dir, name), "wb") as f:
                f.write(tail)


def main(argv: Sequence[str]) -> None:
    """Runs the checks, writes ``device_check.json`` and ``.md``, prints the table."""
    if len(argv) > 1:
        _fail(f"unexpected positional arguments {list(argv[1:])}; every option is a --flag.")
    profile = catalog.QUICK if _QUICK.value else catalog.FULL
    plan, inject = _plan(profile)
    budget = _TIME_BUDGET_S.value or (300.0 if _QUICK.value else 480.0)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    began = time.monotonic()
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    spec = {"profile": profile, "inject": inject,
            "data_dir": os.path.abspath(_DATA_DIR.value) if _DATA_DIR.value else None}  # fmt: skip
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _on_signal)
    with tempfile.TemporaryDirectory(prefix="device_check-") as workdir:
        results = run_checks(plan, spec, workdir, budget, _STARTUP_TIMEOUT_S.value, _CHECK_TIMEOUT_S.value)
        _keep_logs(workdir, _OUTPUT_DIR.value)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)  # Let the report be written whole.
    report = _device_report.build_report(plan, results, profile, date, time.monotonic() - began, budget)
    json_path = os.path.join(_OUTPUT_DIR.value, "device_check.json")
    md_path = os.path.join(_OUTPUT_DIR.value, "device_check.md")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1, default=str)
    table = _device_report.markdown(report)
    with open(md_path, "w") as f:
        f.write(table)
    print(table)
    print(f"Wrote {json_path}, {md_path}")
    bad = report["counts"][catalog.FAILED] + report["counts"][catalog.TIMEOUT]
    sys.exit(1 if bad else 0)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e))


def run(argv: list[str] | None = None) -> None:
    """Entry point: absl parses the flags; a bad value exits with status 2."""
    app.run(main, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
