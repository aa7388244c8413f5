r"""A chaos soak: SIGKILL tasks of a training job at seeded moments, check that nothing is lost.

    python -m launch.chaos                       # 2-worker MWMS, 300 steps, 5 kills, then a PS job
    python -m launch.chaos --epochs=2 --steps_per_epoch=10 --kills=2 --noparameter_server   # a short one
    python -m launch.chaos --kill=ps          # a parameter-server job, killing its ps task (or --kill=chief)
    python -m launch.chaos --hang --noparameter_server --job_heartbeat_timeout=3   # SIGSTOP: hung peers
    python -m launch.chaos --kill=evaluator   # the side-car evaluator of a multi-worker job

For the multi-worker (MultiWorkerMirrored) job it runs, on 127.0.0.1:

1. a reference: the job, uninterrupted (``launch.local_cluster`` semantics);
2. the same job under ``local_cluster --max_restarts``, while a seeded
   schedule SIGKILLs a random task at ``--kills`` random steps; one of the
   kills lands inside a checkpoint write (between the data files and the
   commit of the ``checkpoint`` state file, see ``launch._chaos_task``).

It then checks that the job ended by itself (exit 0) with exactly the planned
number of optimizer steps, and that every weight and optimizer variable is
bit-identical to the reference's, and prints one table: each kill (step,
task, how, the checkpoint it resumed from, steps redone), then the totals
(kills, restarts, steps redone, time lost against the reference, final max
|dw|). The parameter-server job (``--parameter_server``) gets worker kills only, and is
checked for the exact step count: its updates are asynchronous, so equality
with a reference is not defined; its final eval accuracy is reported beside an
uninterrupted PS run's. ``--kill=ps`` and ``--kill=chief`` soak only a
parameter-server job, killing its ps task or its chief (which restarts every
task, resuming from the newest checkpoint). ``--hang`` SIGSTOPs the victim
instead and never resumes it, so that the job's heartbeat (``--heartbeat_timeout``,
see docs/reliability.md) must fail the step; the table then says how long
that took. ``--kill=evaluator`` runs the multi-worker job with ``local_cluster
--evaluator`` and SIGKILLs its side-car evaluator, which is restarted alone:
the trainers must never be restarted (steps redone: 0) and end bit-identical
to the reference, and the restarted evaluator must record the final
checkpoint; the table adds the steps it evaluated, and its final eval
accuracy beside the uninterrupted run's evaluator's.

Exit status: 0 when every check holds, 1 when one fails (the table says which).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

from absl import flags

from launch import _console, _flags, local_cluster

PROG = "launch.chaos"

# --epochs (default here: 10) and --steps_per_epoch (30) are the flags launch.train shares
# (launch/_flags.py); the other names differ from launch.train's, since absl flags are global.
_flags.declare_key_flags(__name__, _flags.EPOCHS, _flags.STEPS_PER_EPOCH)
flags.adopt_module_key_flags(local_cluster)
_EVERY = flags.DEFINE_integer("save_every_steps", 7, "The job's --checkpoint_every_steps.", lower_bound=1)
_KILLS = flags.DEFINE_integer("kills", 5, "SIGKILLs to deliver (one inside a checkpoint write).", lower_bound=1)
_SEED = flags.DEFINE_integer("chaos_seed", 0, "Seeds the kill schedule (and the job's --seed).", lower_bound=0)
_PS = flags.DEFINE_boolean("parameter_server", True,
                           "Also soak a parameter-server job (worker kills, step count only).")
_KILL = flags.DEFINE_enum(
    "kill", "worker", ["worker", "ps", "chief", "evaluator"],
    "Which task type to kill. worker: the multi-worker job, then (with --parameter_server) a PS job's "
    "workers; ps or chief: a parameter-server job's ps task or its chief (coordinator) only; "
    "evaluator: the side-car evaluator of the multi-worker job (local_cluster --evaluator) only.")
_HANG = flags.DEFINE_boolean(
    "hang", False, "SIGSTOP the victim instead of SIGKILL, and never resume it (a hung peer); "
                   "the multi-worker job only (--kill=worker, no PS job).")
_HEARTBEAT = flags.DEFINE_float(
    "job_heartbeat_timeout", 0.0, "Passed to the job as --heartbeat_timeout (0: TensorFlow's default).",
    lower_bound=0.0)
_WORK_DIR = flags.DEFINE_string("work_dir", None, "Where runs go (default: a new temporary directory).")
_DATA_DIR = flags.DEFINE_string("digits_dir", None, "TFDS data_dir for the digits (default: under work_dir).")
_REUSE = flags.DEFINE_boolean(
    "reuse_reference", False,
    "Reuse an uninterrupted reference run that an earlier launch.chaos left in --work_dir, when it ran "
    "the same job (the same launch.train flags and cluster shape); otherwise run it. Several soaks of "
    "one job (--kill=worker, ps, chief) then share one reference.")
# --workers (2) and --timeout (seconds per job; 0: 900) are launch.local_cluster's own flags.
_WORKERS, _TIMEOUT = local_cluster._WORKERS, local_cluster._TIMEOUT

_POLL = 0.02


class _Shared:
    """The shared flags' values, with this soak's defaults."""

    @property
    def epochs(self) -> int:
        return _flags.value_or(_flags.EPOCHS, 10)

    @property
    def steps_per_epoch(self) -> int:
        return _flags.value_or(_flags.STEPS_PER_EPOCH, 30)


_SHARED = _Shared()


def _timeout() -> float:
    return _TIMEOUT.value or 900.0


@dataclasses.dataclass
class Kill:
    """One planned kill and what it did."""

    target_step: int
    victim: str
    in_write: bool
    at_epoch_end: bool = False  # The target is an epoch's last step.
    step: int | None = None  # The victim's cluster was at this step when killed.
    resumed_from: int | None = None  # The newest committed checkpoint then.
    at_seconds: float | None = None
    hang: bool = False  # SIGSTOP, never resumed.
    detected_after: float | None = None  # Seconds from the signal to local_cluster's restart.

    @property
    def redone(self) -> int | None:
        return None if self.step is None or self.resumed_from is None else self.step - self.resumed_from


@dataclasses.dataclass
class Report:
    name: str
    planned_steps: int
    kills: list[Kill]
    returncode: int
    restarts: int
    steps: int | None
    seconds: float
    reference_seconds: float | None
    max_abs_dw: float | None
    failures: list[str]
    accuracy: float | None = None  # Final eval accuracy (asynchronous jobs; the evaluator's).
    reference_accuracy: float | None = None
    evaluated: list[int] | None = None  # Steps of the checkpoints the side-car evaluator recorded.
    reference_evaluated: list[int] | None = None

    def table(self) -> str:
        rows = [f"{self.name}: {self.planned_steps} planned steps",
                "| kill | at step | task | how | resumed from | steps redone |",
                "|---|---|---|---|---|---|"]  # fmt: skip
        for i, kill in enumerate(self.kills, 1):
            how = ("SIGKILL inside a checkpoint write" if kill.in_write
                   else "SIGKILL after an epoch's last step" if kill.at_epoch_end else "SIGKILL")
            if kill.hang:
                how = "SIGSTOP, never resumed" + ("" if kill.detected_after is None
                                                  else f"; step failed after {kill.detected_after:.1f} s")
            rows.append(f"| {i} | {_s(kill.step)} | {kill.victim} | {how} | {_s(kill.resumed_from)} | "
                        f"{_s(kill.redone)} |")
        known = [k.redone for k in self.kills if k.redone is not None]
        redone = sum(known) if known or self.max_abs_dw is not None else "n/a"
        lost = None if self.reference_seconds is None else self.seconds - self.reference_seconds
        rows += ["", "| kills | restarts | steps redone | time lost | final steps | final max abs dw |",
                 "|---|---|---|---|---|---|",
                 f"| {sum(k.step is not None for k in self.kills)} | {self.restarts} | {redone} | "
                 f"{'n/a' if lost is None else f'{lost:.1f} s'} | {_s(self.steps)} | "
                 f"{self._outcome()} |"]  # fmt: skip
        if self.evaluated is not None:
            rows.append(f"evaluated steps: {self.evaluated}; uninterrupted: {self.reference_evaluated}")
        rows.append("result: " + ("OK" if not self.failures else "FAILED: " + "; ".join(self.failures)))
        return "\n".join(rows)


    def _outcome(self) -> str:
        if self.max_abs_dw is not None and self.evaluated is not None:
            return (f"{self.max_abs_dw:g}; evaluator's eval accuracy {_f(self.accuracy)}, "
                    f"uninterrupted {_f(self.reference_accuracy)}")
        if self.max_abs_dw is not None:
            return f"{self.max_abs_dw:g}"
        if self.accuracy is None or self.reference_accuracy is None:
            return "n/a (asynchronous)"
        return f"n/a (asynchronous); eval accuracy {self.accuracy:.4f}, uninterrupted {self.reference_accuracy:.4f}"


def _s(value: Any) -> str:
    return "-" if value is None else str(value)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def train_args(model_dir: str, data_dir: str, strategy: str) -> list[str]:
    return [f"--strategy={strategy}", "--model=mlp", "--dataset=digits", f"--data_dir={data_dir}",
            "--batch_size=32", f"--epochs={_SHARED.epochs}", f"--steps_per_epoch={_SHARED.steps_per_epoch}",
            f"--checkpoint_every_steps={_EVERY.value}", f"--seed={_SEED.value}", f"--model_dir={model_dir}",
            "--cluster_timeout=120",
            *([f"--heartbeat_timeout={_HEARTBEAT.value:g}"] if _HEARTBEAT.value and strategy != "parameter_server"
              else [])]  # fmt: skip


def _newest_checkpoint(model_dir: str) -> int:
    steps = [int(m.group(1)) for p in glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*.index"))
             if (m := re.search(r"ckpt-(\d+)\.index$", p))]  # fmt: skip
    from tensorflow.python.checkpoint import checkpoint_management  # Reads only the state file.

    state = checkpoint_management.get_checkpoint_state(os.path.join(model_dir, "checkpoints"))
    if state is None or not state.model_checkpoint_path:
        return 0
    committed = int(state.model_checkpoint_path.rsplit("-", 1)[1])
    return committed if committed in steps else 0


def _progress(progress_dir: str) -> int:
    best = 0
    for path in glob.glob(os.path.join(progress_dir, "*.step")):
        try:
            best = max(best, int(open(path).read() or 0))
        except (OSError, ValueError):
            pass
    return best


def _kill_steps(rng: random.Random, low: int, planned: int, steps_per_epoch: int, n: int) -> list[int]:
    """``n`` distinct steps in [low, planned) to kill after; one is an epoch's last step when any is.

    A kill right after an epoch's last step is where a checkpoint taken on that
    step once resumed into an epoch with no steps left (issue 24), so every
    soak draws one.
    """
    boundaries = list(range(max(steps_per_epoch, low + (-low) % steps_per_epoch), planned, steps_per_epoch))
    chosen = {rng.choice(boundaries)} if boundaries else set()
    others = [s for s in range(low, planned) if s not in chosen]
    chosen |= set(rng.sample(others, max(0, min(n - len(chosen), len(others)))))
    return sorted(chosen)


def _soak(name: str, strategy: str, work: str, data_dir: str, *, ps: bool,
          reference_seconds: float | None, evaluator: bool = False) -> tuple[Report, str]:
    """Runs the job under local_cluster --max_restarts while killing on schedule."""
    model_dir, progress = os.path.join(work, f"{name}-chaos"), os.path.join(work, f"{name}-progress")
    os.makedirs(progress, exist_ok=True)
    planned = _SHARED.epochs * _SHARED.steps_per_epoch
    rng = random.Random(_SEED.value)
    kills_n = _KILLS.value
    low = min(_EVERY.value + 2, planned - 1)
    targets = _kill_steps(rng, low, planned, _SHARED.steps_per_epoch, kills_n)
    # The in-write kill is not the epoch-end one, so that both land; a PS job (whose chief
    # writes) and a hang get none.
    plain = [i for i, t in enumerate(targets) if t % _SHARED.steps_per_epoch] or list(range(len(targets)))
    in_write = rng.choice(plain) if not ps and not _HANG.value and not evaluator else -1
    victims = {"worker": [f"worker {i}" for i in range(_WORKERS.value)], "ps": ["ps 0"],
               "chief": ["chief 0"], "evaluator": ["evaluator 0"]}[
        "evaluator" if evaluator else _KILL.value if ps else "worker"]  # fmt: skip
    kills = [Kill(t, "worker 0" if i == in_write else rng.choice(victims), i == in_write,
                  at_epoch_end=t % _SHARED.steps_per_epoch == 0, hang=_HANG.value and not ps and not evaluator)
             for i, t in enumerate(targets)]  # fmt: skip
    # A lost PS worker's steps are re-run by the coordinator, which is not restarted;
    # a lost ps or chief restarts every task, which resume from the newest checkpoint.
    # A lost evaluator is restarted alone; the trainers go on (checked below: nothing redone).
    resumes = (not ps or _KILL.value != "worker") and not evaluator
    command = [sys.executable, "-m", "launch._chaos_task", progress, *train_args(model_dir, data_dir, strategy)]
    cluster = local_cluster.LocalCluster(
        command, workers=_WORKERS.value, ps=1 if ps else 0, chief=ps, timeout=_timeout(),
        output=None, max_restarts=len(kills) + 1, env={"TF_CPP_MIN_LOG_LEVEL": "2"},
        evaluator=evaluator)  # fmt: skip
    result: dict[str, Any] = {}
    start = time.monotonic()
    cluster.start()
    waiter = threading.Thread(target=lambda: result.setdefault("r", cluster.wait()), daemon=True)
    waiter.start()
    try:
        for kill in kills:
            while _progress(progress) < kill.target_step and waiter.is_alive():
                time.sleep(_POLL)
            if not waiter.is_alive():
                break
            request = os.path.join(progress, "kill-in-write")
            if kill.in_write:
                open(request, "w").close()
                marker = os.path.join(progress, "worker0.in-write")
                deadline = time.monotonic() + 120
                while not os.path.exists(marker) and waiter.is_alive() and time.monotonic() < deadline:
                    time.sleep(_POLL)
            task = next(t for t in cluster.tasks if t.name == kill.victim)
            # A parameter-server coordinator is not restarted for a worker: it re-runs
            # the lost worker's steps elsewhere, so "resumed from" does not apply.
            kill.step, kill.resumed_from = _progress(progress), _newest_checkpoint(model_dir) if resumes else None
            if evaluator:
                kill.resumed_from = kill.step  # The trainers go on: redone 0, unless restarted (a failure).
            kill.at_seconds = time.monotonic() - start
            restarts, victim_pid = sum(cluster.restarts.values()), task.pid
            if task.process is not None:
                # A stopped task is SIGKILLed by local_cluster's restart (and by its stop()).
                local_cluster._signal_group(task.process, signal.SIGSTOP if kill.hang else signal.SIGKILL)
            # Wait for local_cluster to restart it (and, for MWMS, every task), so
            # that no old process reports progress after the files are cleared.
            while waiter.is_alive() and sum(cluster.restarts.values()) == restarts:
                time.sleep(_POLL)
            kill.detected_after = time.monotonic() - start - kill.at_seconds
            while waiter.is_alive() and task.pid == victim_pid:
                time.sleep(_POLL)
            for path in glob.glob(os.path.join(progress, "*")):  # The restarted tasks report afresh.
                os.remove(path)
        waiter.join(timeout=_timeout())
    finally:
        cluster.stop()  # SIGTERM, then SIGKILL: a stopped task too.
    seconds = time.monotonic() - start
    outcome = result.get("r")
    failures = []
    returncode = outcome.returncode if outcome is not None else -1
    if returncode != 0:
        failures.append(f"exit {returncode}: {outcome.reason if outcome else 'hung'}")
    steps = _final_steps(model_dir)
    if steps != planned:
        failures.append(f"{steps} steps, planned {planned}")
    trainer_restarts = {k: v for k, v in cluster.restarts.items() if evaluator and k != "evaluator 0"}
    if trainer_restarts:
        failures.append(f"trainers restarted for a lost evaluator: {trainer_restarts}")
    lines = "\n".join(f"[{t.name}] {line}" for t in cluster.tasks for line in list(t.lines)[-15:])
    report = Report(name, planned, kills, returncode, sum(cluster.restarts.values()), steps, seconds,
                    reference_seconds, None, failures, accuracy=_final(model_dir, "accuracy"))  # fmt: skip
    if evaluator:
        report.evaluated, report.accuracy = _evaluations(model_dir)
        if not report.evaluated or report.evaluated[-1] != planned:
            failures.append(f"the evaluator's last evaluated step is not the final {planned}: {report.evaluated}")
    return report, lines


def _evaluations(model_dir: str) -> tuple[list[int], float | None]:
    """The side-car evaluator's steps, oldest first, and its last eval accuracy (eval.jsonl)."""
    import json

    path = os.path.join(model_dir, "eval.jsonl")
    if not os.path.exists(path):
        return [], None
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r["step"] for r in records], (records[-1]["metrics"].get("accuracy") if records else None)


def _final_steps(model_dir: str) -> int | None:
    steps = _final(model_dir, "steps")
    return None if steps is None else int(steps)


def _final(model_dir: str, key: str) -> float | None:
    """``steps``, or the eval ``accuracy``, from the run's summary.json (None without one)."""
    import json

    path = os.path.join(model_dir, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    return summary["steps"] if key == "steps" else summary["eval"].get(key)


def max_abs_difference(model_dir: str, reference_dir: str) -> float:
    """max |a - b| over every weight and optimizer variable of the two runs' model.keras."""
    import keras
    import numpy as np

    import tfopt  # noqa: F401  Registers the optimizers that model.keras names.

    a = keras.saving.load_model(os.path.join(model_dir, "model.keras"), safe_mode=True)
    b = keras.saving.load_model(os.path.join(reference_dir, "model.keras"), safe_mode=True)
    pairs = list(zip(a.weights, b.weights, strict=True))
    pairs += list(zip(a.optimizer.variables, b.optimizer.variables, strict=True))
    return max(float(np.max(np.abs(np.asarray(x.numpy(), np.float64) - np.asarray(y.numpy(), np.float64))))
               for x, y in pairs)  # fmt: skip


def _reference(name: str, strategy: str, work: str, data_dir: str, *, ps: bool,
               evaluator: bool = False) -> tuple[str, float]:
    """Runs the job uninterrupted (or, with --reuse_reference, finds that run); returns its model_dir and wall time."""
    import json

    reference_dir = os.path.join(work, f"{name}-reference")
    args = train_args(reference_dir, data_dir, strategy)
    job = {"args": args, "workers": _WORKERS.value, "ps": ps, "evaluator": evaluator}
    record = os.path.join(work, f"{name}-reference.json")  # Beside the run: written once it succeeded.
    if _REUSE.value and os.path.exists(record) and _final_steps(reference_dir) is not None:
        with open(record) as f:
            earlier = json.load(f)
        if earlier["job"] == job:
            return reference_dir, earlier["seconds"]
    shutil.rmtree(reference_dir, ignore_errors=True)
    if os.path.exists(record):
        os.remove(record)
    start = time.monotonic()
    reference = local_cluster.run_cluster(
        [sys.executable, "-m", "launch.train", *args],
        workers=_WORKERS.value, ps=1 if ps else 0, chief=ps, timeout=_timeout(), output=None,
        env={"TF_CPP_MIN_LOG_LEVEL": "2"}, evaluator=evaluator)  # fmt: skip
    if reference.returncode != 0:
        raise RuntimeError(f"the reference run failed: {reference.reason}\n" +
                           "\n".join(line for lines in reference.output.values() for line in lines[-10:]))
    seconds = time.monotonic() - start
    with open(record, "w") as f:
        json.dump({"job": job, "seconds": seconds}, f)
    return reference_dir, seconds


def run_chaos(work: str, data_dir: str) -> list[Report]:
    """The MWMS soak against its reference (--kill=worker), then the PS soak against its own."""
    reports = []
    if _KILL.value == "evaluator":
        return [_mwms_chaos(work, data_dir, evaluator=True)]
    if _KILL.value == "worker":
        reports.append(_mwms_chaos(work, data_dir))
    if _KILL.value != "worker" or (_PS.value and not _HANG.value):
        reference_dir, reference_seconds = _reference("ps", "parameter_server", work, data_dir, ps=True)
        report, lines = _soak("ps", "parameter_server", work, data_dir, ps=True,
                              reference_seconds=reference_seconds)  # fmt: skip
        report.reference_accuracy = _final(reference_dir, "accuracy")
        if report.failures:
            print(lines, file=sys.stderr)
        reports.append(report)
    return reports


def _mwms_chaos(work: str, data_dir: str, evaluator: bool = False) -> Report:
    reference_dir, reference_seconds = _reference("mwms", "multi_worker_mirrored", work, data_dir, ps=False,
                                                  evaluator=evaluator)  # fmt: skip
    report, lines = _soak("mwms", "multi_worker_mirrored", work, data_dir, ps=False,
                          reference_seconds=reference_seconds, evaluator=evaluator)  # fmt: skip
    if evaluator:
        report.reference_evaluated, report.reference_accuracy = _evaluations(reference_dir)
    if report.steps is not None:
        report.max_abs_dw = max_abs_difference(os.path.join(work, "mwms-chaos"), reference_dir)
        if report.max_abs_dw != 0.0:
            report.failures.append(f"final max |dw| = {report.max_abs_dw:g}, not 0")
    if report.failures:
        print(lines, file=sys.stderr)
    return report


def main(argv: Sequence[str]) -> int:
    _console.check_no_positional(PROG, argv)
    work = _WORK_DIR.value or tempfile.mkdtemp(prefix="chaos-")
    os.makedirs(work, exist_ok=True)
    # A reference is cleared by _reference itself, unless --reuse_reference finds it reusable.
    for name in ("mwms-chaos", "mwms-progress", "ps-chaos", "ps-progress"):
        shutil.rmtree(os.path.join(work, name), ignore_errors=True)
    data_dir = _DATA_DIR.value or os.path.join(work, "data")
    from launch import _data

    _data.prepare("digits", data_dir)
    reports = run_chaos(work, data_dir)
    for report in reports:
        print(report.table(), flush=True)
        print()
    return _console.EXIT_OK if all(not r.failures for r in reports) else _console.EXIT_FAILED


def run() -> None:
    """Entry point: ``python -m launch.chaos``."""
    _console.run(main, PROG, __name__)


if __name__ == "__main__":
    run()
