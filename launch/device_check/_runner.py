"""`launch.device_check`'s runner: worker processes, per-check time boxes, signals.

Each device layout's checks run in one `launch.device_check._worker` process. The
worker writes ``<check>.start`` when a check begins and ``<check>.json`` when
it ends; from these the runner gives every check its own time box, kills the
worker's process group when one overruns (or the run's budget ends, or a
SIGTERM arrives), and starts a fresh worker for the checks left. A check that
a dead worker never finished is FAILED with the tail of the worker's log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import launch.device_check._catalog as catalog

PROG = "launch.device_check"
_POLL_S = 0.1


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


def on_signal(signum: int, frame: Any) -> None:
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
        proc = subprocess.Popen([sys.executable, "-m", "launch.device_check._worker", spec_path],
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
            elif now > deadline or (now - started > startup_s and not any(
                    c.name in results or os.path.exists(path(c, "start")) for c in mine)):
                # The startup limit holds until the first check starts: between
                # two checks (one's result written, the next not yet started)
                # the worker is running, not starting, however long it has lived.
                _kill(proc)
                for c in [c for c in mine if c.name not in results]:
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
