r"""An accelerator check that one command runs: ``python -m launch.device_check``.

It finds the accelerators present and runs a fixed, time-boxed set of checks
(`launch._device_catalog`): the fused optimizer kernels against a memory roof
measured in the same run, the default training job under ``auto`` and under
``mirrored`` over two logical devices, ``mixed_float16`` (speed, and an fp16
overflow on one replica skipped on every replica) and XLA on two convnets.
The full profile is sized for one GPU in at most 8 minutes; ``--quick`` runs
the same checks, much smaller, on whatever is there (on a CPU-only machine,
the CPU stands in, in well under a minute; ``make test`` runs it).

Every check has its own time box. A check that fails, raises, crashes its
process or outruns its box is reported FAILED or TIMEOUT with the reason; an
accelerator that is not there is MISSING; nothing is reported as a pass that
did not run and pass. It writes ``device_check.json`` and ``device_check.md``
to ``--output_dir`` and prints the table. Exit status: 0 when no check FAILED
or TIMED OUT, 1 otherwise, 2 for a bad flag::

    python -m launch.device_check --output_dir=runs/device_check
    python -m launch.device_check --quick

This process imports no TensorFlow: each device layout's checks run in a
`launch._device_worker` child, because TensorFlow fixes its logical devices
when it initializes, and so that a hung or crashed check can be killed and
reported while the others go on. See docs/accelerators.md.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
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
    "SKIPPED. Default: 480 (8 minutes), or 180 with --quick.", lower_bound=1.0,
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


def _tail(path: str, chars: int = 800) -> str:
    try:
        with open(path, errors="replace") as f:
            return " ".join(f.read()[-chars:].split())
    except OSError:
        return ""


def _kill(proc: subprocess.Popen) -> None:
    # The worker leads its own process group (start_new_session): end it and its children.
    try:
        os.killpg(proc.pid, 9)
    except ProcessLookupError:
        pass
    proc.wait()


def _run_worker(checks: list[catalog.Check], spec: dict[str, Any], workdir: str, deadline: float,
                startup_s: float, box_override: float | None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Runs ``checks`` in one worker; returns the results of those that ended (all but
    those a killed or dead worker never reached)."""
    spec_path = os.path.join(workdir, f"spec-{checks[0].name}.json")
    with open(spec_path, "w") as f:
        json.dump({**spec, "layout": checks[0].layout, "checks": [c.name for c in checks],
                   "workdir": workdir}, f)
    log = os.path.join(workdir, f"worker-{checks[0].name}.log")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "launch._device_worker", spec_path],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    started, results = time.monotonic(), {}

    def path(c: catalog.Check, ext: str) -> str:
        return os.path.join(workdir, f"{c.name}.{ext}")

    while True:
        code = proc.poll()
        for c in checks:
            if c.name not in results and os.path.exists(path(c, "json")):
                with open(path(c, "json")) as f:
                    results[c.name] = json.load(f)
        running = [c for c in checks if c.name not in results and os.path.exists(path(c, "start"))]
        if code is not None:
            break
        now = time.monotonic()
        if running:
            c = running[0]
            with open(path(c, "start")) as f:
                elapsed = time.time() - json.load(f)["began"]
            box = box_override or c.box_s
            if elapsed > box or now > deadline:
                _kill(proc)
                why = f"outran its {box:.0f} s time box" if elapsed > box else "--time_budget_s ran out"
                results[c.name] = {**_result(catalog.TIMEOUT, f"{why}; killed after {elapsed:.0f} s"),
                                   "seconds": round(elapsed, 2)}  # fmt: skip
                return results
        elif now > deadline:
            _kill(proc)
            return {c.name: _result(catalog.SKIPPED, "--time_budget_s ran out before it began")
                    for c in checks}  # fmt: skip
        elif now - started > startup_s:
            _kill(proc)
            return {c.name: _result(catalog.TIMEOUT, f"its worker did not start within "
                                    f"{now - started:.0f} s: {_tail(log)}") for c in checks}  # fmt: skip
        time.sleep(_POLL_S)
    for c in running:  # Started, no result: the process died under it.
        results[c.name] = _result(catalog.FAILED, f"its worker process died (exit status {code}) "
                                  f"during this check: {_tail(log)}")  # fmt: skip
    if not running and not results:
        for c in checks:
            results[c.name] = _result(catalog.FAILED, f"its worker could not start (exit status "
                                      f"{code}): {_tail(log)}")  # fmt: skip
    return results


def run_checks(plan: list[catalog.Check], spec: dict[str, Any], workdir: str, budget_s: float,
               startup_s: float, box_override: float | None = None) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every check of ``plan`` -> its result; one worker per layout, a new one after a kill."""
    deadline = time.monotonic() + budget_s
    results: dict[str, dict[str, Any]] = {}
    for layout in catalog.LAYOUTS:
        pending = [c for c in plan if c.layout == layout]
        while pending:
            accel = results.get("accelerators")
            if spec["profile"] == catalog.FULL and accel and accel["status"] != catalog.PASS:
                # The full profile's sizes are for an accelerator (the worker
                # stopped after `accelerators`); the CPU stand-in is --quick.
                for c in pending:
                    results[c.name] = _result(catalog.MISSING, "no usable GPU (see accelerators: "
                                              f"{accel['reason']}); --quick runs the CPU stand-in")  # fmt: skip
                break
            if time.monotonic() >= deadline:
                for c in pending:
                    results[c.name] = _result(catalog.SKIPPED, "--time_budget_s was spent first")
                break
            done = _run_worker(pending, spec, workdir, deadline, startup_s, box_override)
            results.update(done)
            pending = [c for c in pending if c.name not in results]
    return results


def _git() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        run = dict(capture_output=True, text=True, timeout=10, check=True, cwd=here)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run)
        return commit + ("+uncommitted changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def build_report(plan: list[catalog.Check], results: dict[str, dict[str, Any]], profile: str,
                 date: str, wall_s: float, budget_s: float) -> dict[str, Any]:  # fmt: skip
    """``device_check.json``'s content: the machine, then every check of ``plan`` with a status."""
    checks = []
    for c in plan:
        r = results.get(c.name) or _result(catalog.FAILED, "no result was recorded")
        checks.append({"name": c.name, "status": r["status"], "reason": r.get("reason", ""),
                       "what": c.what, "layout": c.layout, "box_s": c.box_s,
                       "seconds": r.get("seconds"), "device": r.get("device"),
                       "metrics": r.get("metrics", {}),
                       **({"traceback": r["traceback"]} if "traceback" in r else {})})  # fmt: skip
    accel = results.get("accelerators") or _result(catalog.SKIPPED, "the accelerators check did not run")
    device = accel.get("device") or next((c["device"] for c in checks if c["device"]), "unknown")
    counts = {s: sum(c["status"] == s for c in checks) for s in catalog.STATUSES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if accel["status"] != catalog.PASS:
        summary += "; no accelerator was checked" + (" (the CPU stood in)" if profile == catalog.QUICK else "")
    return {
        "schema": "device_check/1",
        "profile": profile,
        "date": date,
        "wall_seconds": wall_s,
        "time_budget_s": budget_s,
        "machine": {"device": device, "tensorflow": _version("tensorflow"), "keras": _version("keras"),
                    "python": platform.python_version(), "platform": platform.platform(),
                    "cpu_count": os.cpu_count(), "git": _git()},  # fmt: skip
        "accelerator": {"status": accel["status"], "reason": accel.get("reason", "")},
        "summary": summary,
        "counts": counts,
        "checks": checks,
    }


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


def main(argv: Sequence[str]) -> None:
    """Runs the checks, writes ``device_check.json`` and ``.md``, prints the table."""
    if len(argv) > 1:
        _fail(f"unexpected positional arguments {list(argv[1:])}; every option is a --flag.")
    profile = catalog.QUICK if _QUICK.value else catalog.FULL
    plan, inject = _plan(profile)
    budget = _TIME_BUDGET_S.value or (180.0 if _QUICK.value else 480.0)
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    began = time.monotonic()
    os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
    spec = {"profile": profile, "inject": inject,
            "data_dir": os.path.abspath(_DATA_DIR.value) if _DATA_DIR.value else None}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="device_check-") as workdir:
        results = run_checks(plan, spec, workdir, budget, _STARTUP_TIMEOUT_S.value, _CHECK_TIMEOUT_S.value)
    report = build_report(plan, results, profile, date, time.monotonic() - began, budget)
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
