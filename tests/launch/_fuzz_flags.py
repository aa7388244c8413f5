"""Property-based bad-input fuzzing of the flags of ``launch.train``, ``launch.local_cluster``,
``launch.vertex`` and ``launch.kubernetes``.

Run as ``python -m tests.launch._fuzz_flags PROGRAM ROOT EXAMPLES`` (PROGRAM is
``train``, ``local_cluster``, ``vertex`` or ``kubernetes``); prints one JSON report on stdout. The pytest
side is ``test_fuzz_inputs.py``; ``make fuzz`` runs a longer profile.

The flags are not listed here: they are read from absl's registry (every
flag that ``launch.train`` or ``strategies.flags`` defines, or
``launch.local_cluster``'s), and each gets values from adversarial classes
chosen by its parser: negative, zero, NaN, +-inf, huge, empty, non-ASCII, a
path that is a file, one that cannot be created, one that is not writable,
and ordinary values, so that pairs of flags can conflict. A new flag joins
without an edit here.

The property, for every example: the command either trains (and is stopped by
this harness after at most 2 training steps, or finishes by itself) or exits
2 with exactly one ``launch.train: error:`` line (``local_cluster:`` for the
launcher) that names one of the fuzzed flags; it never prints a traceback and
never changes an existing file in ``--model_dir`` (a user's file there
survives even a run that trains; a run that fails leaves it byte-identical).

``train`` examples run in this one process through ``launch.train.run(argv)``
(see ``_bad_inputs_driver``): a fresh interpreter per example would pay 5 s of
TensorFlow import. An example that trains is stopped after 2 steps by a
callback this harness adds, and its ``--model_dir`` is restored afterwards,
so each example starts from the same earlier run. Identical command lines are
run once (the hypothesis example count and the distinct count are both
reported).

Unwritable paths: tests run as root here, so permissions cannot make a
directory unwritable; a read-only mount can (``/proc/sys``, Linux only).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.launch import _bad_inputs_driver as driver

# The exit status this harness gives a run it stopped after its training steps.
CAPPED = 97
MAX_STEPS = 2
# How many runs that reach training get their MAX_STEPS steps; later ones are
# stopped when training begins (model, optimizer, checkpoint and callbacks
# built, no step taken): tracing a train step costs ~1 s per run. The budget
# comes from the command line (make test: 8, test_fuzz_inputs.FULL_RUNS; make fuzz: every run).
FULL_RUNS = {"left": 0}
UNCREATABLE = "/proc/1/tfopt-fuzz/run"  # /proc/1 refuses new entries, even for root.
UNWRITABLE = "/proc/sys"  # A read-only mount.
NON_ASCII = ["δεδομένα", "データ", "\u00e9t\u00e9", "\u0663", "\U0001f600"]  # "\u0663": an Arabic-Indic 3.

BASE_TRAIN = ["--model=mlp", "--optimizer=adam", "--epochs=2", "--steps_per_epoch=2", "--data_dir={data}",
              "--model_dir={model_dir}", "--cluster_timeout=1"]  # fmt: skip
SETUP_TRAIN = ["--model=mlp", "--optimizer=adam", "--epochs=1", "--steps_per_epoch=2", "--data_dir={data}",
               "--model_dir={model_dir}", "--strategy=mirrored", "--virtual_cpus=2"]  # fmt: skip
# Not the program's own: absl's logging and help flags, and TF's own.
_FOREIGN_MODULES = ("absl.", "tensorflow", "keras")
USER_FILE = "NOTES.txt"


def program_flags(module_names: tuple[str, ...]) -> dict[str, Any]:
    """``{name: Flag}`` of every key flag of the named modules (their own and those they adopt)."""
    from absl import flags

    found = {}
    for module in module_names:
        for flag in flags.FLAGS.get_key_flags_for_module(module):
            found[flag.name] = flag
    return found


def _numbers(kind: str) -> st.SearchStrategy[str]:
    ints = st.sampled_from(["-1", "-8", "0", "1", "2", "3", "33", str(2**31), str(2**63), str(10**30),
                            "-" + str(2**63)])  # fmt: skip
    big = st.integers(min_value=-(10**40), max_value=10**40).map(str)
    floats = st.sampled_from(["nan", "-nan", "inf", "-inf", "1e308", "1e400", "-1e400", "5e-324", "-0.0",
                              "0", "0.5", "0.9", "1", "1.5", "-0.1", "1e-3", "1e-8"])  # fmt: skip
    if kind == "int":
        return st.one_of(ints, big, st.sampled_from(["1.5", "nan", "inf", "0x10", "1_000", "\u0663"]))
    return st.one_of(floats, big, st.floats(allow_nan=True, allow_infinity=True).map(repr))


def _paths(root: str) -> list[str]:
    return [f"{root}/file", f"{root}/file/under", UNCREATABLE, UNWRITABLE, f"{UNWRITABLE}/under",
            f"{root}/fresh-\u00e9t\u00e9", f"{root}/fresh", "", ".", "/"]  # fmt: skip


def values_for(flag: Any, root: str) -> st.SearchStrategy[str]:
    """Adversarial (and a few ordinary) command-line values for ``flag``, by its parser."""
    from absl import flags

    common = st.sampled_from(["", " ", *NON_ASCII, "x" * 5000, "None", "-1", "0", "nan", "inf"])
    parser = flag.parser
    if isinstance(parser, flags.FloatParser):
        specific = _numbers("float")
    elif isinstance(parser, flags.IntegerParser):
        specific = _numbers("int")
    elif isinstance(parser, flags.EnumParser):
        members = list(parser.enum_values)
        specific = st.one_of(
            st.sampled_from(members),
            st.sampled_from(members).map(str.upper),
            st.sampled_from(members).map(lambda m: m + " "),
        )
    elif isinstance(parser, flags.BooleanParser):
        specific = st.sampled_from(["true", "false", "1", "0", "yes", "2"])
    elif isinstance(parser, flags.ListParser):
        host = st.sampled_from(["127.0.0.1:{port0}", "127.0.0.1:{port1}", "127.0.0.1", "127.0.0.1:0",
                                "127.0.0.1:70000", "127.0.0.1:-1", "[::1]:{port0}", "h\u00f6st:1", ":1"])
        specific = st.lists(host, min_size=0, max_size=3).map(",".join)
    else:
        specific = st.sampled_from(_paths(root) + ["digits", "mnist", "mlp", "cnn", "adam", "sgd", "adamw",
                                                   "lookahead", "/cpu:0", "/gpu:3", "local",
                                                   "127.0.0.1:{port0}", "grpc://127.0.0.1:{port0}"])
    return st.one_of(specific, common)


def examples(flag_table: dict[str, Any], root: str) -> st.SearchStrategy[list[tuple[str, str]]]:
    """One or two distinct flags, each with a drawn value: ``[(name, value), ...]``."""
    names = sorted(flag_table)
    pair = st.sampled_from(names).flatmap(lambda n: values_for(flag_table[n], root).map(lambda v: (n, v)))
    return st.lists(pair, min_size=1, max_size=2, unique_by=lambda p: p[0])


def check_result(result: dict[str, Any], names: list[str], prefix: str,
                 ran: tuple[int, ...] = (0, CAPPED)) -> str | None:
    """Why ``result`` breaks the property, or None; ``ran``: the statuses of a run that went ahead."""
    stderr = result["stderr"]
    if "Traceback" in stderr:
        return "traceback:\n" + stderr[-3000:]
    code = result["code"]
    if code in ran:
        return None if result.get("user_file_intact", True) else f"{USER_FILE} in --model_dir was changed"
    if code != 2:
        return f"exit {code}, want 0, 2 or a run stopped after {MAX_STEPS} steps; stderr:\n{stderr[-3000:]}"
    lines = [line for line in stderr.splitlines() if line.strip() and not driver_log_line(line)]
    if len(lines) != 1:
        return f"{len(lines)} stderr lines, want 1:\n" + "\n".join(lines[-20:])
    if not lines[0].startswith(prefix):
        return f"the line does not start with {prefix!r}: {lines[0]!r}"
    if not any(name in lines[0] for name in names):
        return f"{lines[0]!r} names none of {names}"
    if result["changes"]:
        return f"a failed run changed --model_dir: {result['changes']}"
    return None


def local_cluster_exit_out_of_restarts() -> int:
    from launch import local_cluster

    return local_cluster.EXIT_OUT_OF_RESTARTS


def driver_log_line(line: str) -> bool:
    from tests.launch.test_bad_inputs import _LOG_LINE

    return bool(_LOG_LINE.match(line))


class _Report:
    def __init__(self) -> None:
        self.examples = 0
        self.outcomes: dict[str, int] = {}
        self.cache: dict[tuple[str, ...], dict[str, Any]] = {}
        self.seconds = 0.0
        self.trained: list[list[str]] = []
        self.slowest: list[tuple[float, list[str]]] = []

    def count(self, result: dict[str, Any]) -> None:
        self.examples += 1
        key = str(result["code"])
        self.outcomes[key] = self.outcomes.get(key, 0) + 1


def _fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def _step_cap() -> Any:
    import keras

    class StopAfterSteps(keras.callbacks.Callback):
        """Ends the command (exit CAPPED) once it has trained MAX_STEPS steps."""

        steps = 0

        def on_train_begin(self, logs: Any = None) -> None:
            if self.steps == 0 and not getattr(self, "full", False):
                if FULL_RUNS["left"] <= 0:  # The cheap profile: stop once everything is built.
                    raise SystemExit(CAPPED)
                FULL_RUNS["left"] -= 1
                self.full = True

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.steps += 1
            if self.steps >= MAX_STEPS:
                raise SystemExit(CAPPED)

    return StopAfterSteps


def fuzz_train(root: str, max_examples: int) -> dict[str, Any]:
    import launch.train  # noqa: F401  Registers the flags.
    from launch import _job

    values = {"data": f"{root}/data", "model_dir": f"{root}/model_dir", "port0": str(driver_free_port()),
              "port1": str(driver_free_port()), "root": root}  # fmt: skip
    Path(root, "file").write_text("not a directory\n")
    setup = driver.run_one([_fill(a, values) for a in SETUP_TRAIN], {}, [], 120)
    if setup["code"] != 0:
        return {"error": "setup run failed", "stderr": setup["stderr"][-3000:]}
    model_dir = values["model_dir"]
    Path(model_dir, USER_FILE).write_text("a user's file, never to be touched\n")
    pristine = f"{root}/model_dir.pristine"
    shutil.copytree(model_dir, pristine)
    user_file = driver.snapshot([model_dir])[f"{model_dir}/{USER_FILE}"]
    import gc

    gc.collect()
    gc.freeze()  # Each example's collection then walks only what that example made (0.6 s less).

    # A harness shortcut that changes no outcome: the decoded arrays of a
    # prepared split are a function of its files, which no example changes;
    # decoding them again costs 0.8 s per example that gets that far.
    from launch import _data

    real_read, decoded = _data.ImageDataset.read_arrays, {}

    def read_once(self: Any, split: str) -> Any:
        key = (self.data_dir, self.name, split)
        if key not in decoded:
            decoded[key] = real_read(self, split)
        return decoded[key]

    _data.ImageDataset.read_arrays = read_once
    real_run = _job.run
    cap = _step_cap()

    def capped_run(job: Any, strategy: Any, *, callbacks: Any = (), verbose: Any = "auto") -> Any:
        return real_run(job, strategy, callbacks=[*callbacks, cap()], verbose=verbose)

    _job.run = capped_run
    real_evaluate = _job.evaluate

    def capped_evaluate(job: Any, *, timeout: float) -> Any:
        # An evaluator task (--task_type=evaluator) waits for checkpoints that no
        # example writes: a few seconds of waiting shows it runs, like the step cap.
        try:
            return real_evaluate(job, timeout=min(timeout, 3.0))
        except TimeoutError:
            raise SystemExit(CAPPED) from None

    _job.evaluate = capped_evaluate
    table = program_flags(("launch.train", "strategies.flags"))
    report = _Report()
    base = [_fill(a, values) for a in BASE_TRAIN]

    def run(pairs: list[tuple[str, str]]) -> dict[str, Any]:
        argv = tuple(base + [f"--{name}={_fill(value, values)}" for name, value in pairs])
        if argv in report.cache:
            return report.cache[argv]
        result = driver.run_one(list(argv), {"TF_CONFIG": None}, [model_dir], 30)
        result["user_file_intact"] = driver.snapshot([model_dir]).get(f"{model_dir}/{USER_FILE}") == user_file
        if result["code"] != 2 or result["changes"]:
            shutil.rmtree(model_dir, ignore_errors=True)
            shutil.copytree(pristine, model_dir)
        for leftover in ("runs",):  # An empty --model_dir means the default, under the cwd.
            shutil.rmtree(os.path.join(os.getcwd(), leftover), ignore_errors=True)
        report.cache[argv] = result
        report.slowest = sorted([*report.slowest, (result["seconds"], list(argv[len(base):]))])[-5:]
        return result

    # The base command's --model_dir holds an earlier run: a fuzzed flag that
    # contradicts it is reported against --model_dir (or --data_dir), which is right.
    return _fuzz(run, table, root, max_examples, report, "launch.train: error:", also=("model_dir", "data_dir"))


def driver_free_port() -> int:
    import portpicker

    return portpicker.pick_unused_port()


def fuzz_local_cluster(root: str, max_examples: int) -> dict[str, Any]:
    """``launch.local_cluster`` examples, in this process (it imports no TensorFlow)."""
    from absl import app, flags

    from launch import local_cluster

    table = program_flags(("launch.local_cluster",))
    Path(root, "file").write_text("not a directory\n")
    os.chmod(f"{root}/file", 0o644)
    report = _Report()
    commands = st.sampled_from([["true"], ["false"], [f"{root}/file"], ["/nonexistent/x"], []])

    def run(pairs: list[tuple[str, str]], command: list[str]) -> dict[str, Any]:
        # A base --timeout (a fuzzed one comes later and wins): `false` under a
        # large --max_restarts would otherwise restart for a long time, rightly.
        argv = tuple(["--timeout=5"] + [f"--{name}={_fill(value, {'root': root, 'port0': '1', 'port1': '2'})}"
                                        for name, value in pairs] + (["--", *command] if command else []))
        if argv in report.cache:
            return report.cache[argv]
        flags.FLAGS.unparse_flags()
        handler = signal.getsignal(signal.SIGTERM)
        result = capture(lambda: app.run(local_cluster.main, argv=["launch.local_cluster", *argv],
                                         flags_parser=local_cluster._parse_flags), 60)  # fmt: skip
        signal.signal(signal.SIGTERM, handler)
        report.cache[argv] = result
        report.slowest = sorted([*report.slowest, (result["seconds"], list(argv))])[-5:]
        return result

    return _fuzz(run, table, root, max_examples, report, "local_cluster:", extra=commands)


def fuzz_cluster_launcher(program: str, root: str, max_examples: int) -> dict[str, Any]:
    """``launch.vertex`` or ``launch.kubernetes`` examples, in this process (they import no TensorFlow).

    ``--execute`` reaches a spy, never Vertex or kubectl: a run that submits
    counts as one that went ahead. ``--rehearse`` runs the drawn command for
    real on 127.0.0.1 (``true``, ``false``...), bounded by the base ``--timeout``.
    """
    import importlib

    from absl import app, flags

    module = importlib.import_module(f"launch.{program}")
    if program == "vertex":
        module.submit = lambda job: "projects/spy/locations/spy/customJobs/0"
    else:
        module.apply = lambda text: 0
    table = program_flags((f"launch.{program}",))
    Path(root, "file").write_text("not a directory\n")
    os.chmod(f"{root}/file", 0o644)
    report = _Report()
    commands = st.sampled_from([["true"], ["false"], [f"{root}/file"], ["/nonexistent/x"], [],
                                ["python3", "-c", "pass", f"--model_dir={root}/run"]])

    def run(pairs: list[tuple[str, str]], command: list[str]) -> dict[str, Any]:
        argv = tuple(["--timeout=5", "--image=gcr.io/p/trainer:1"]
                     + [f"--{name}={_fill(value, {'root': root, 'port0': '1', 'port1': '2'})}"
                        for name, value in pairs] + (["--", *command] if command else []))
        if argv in report.cache:
            return report.cache[argv]
        flags.FLAGS.unparse_flags()
        result = capture(lambda: app.run(module.main, argv=[module.PROG, *argv],
                                         flags_parser=module._parse_flags), 60)  # fmt: skip
        report.cache[argv] = result
        report.slowest = sorted([*report.slowest, (result["seconds"], list(argv))])[-5:]
        return result

    return _fuzz(run, table, root, max_examples, report, f"{module.PROG}: error:", extra=commands)


def capture(call: Any, timeout: int) -> dict[str, Any]:
    """Runs ``call()`` as a program: its exit status and everything written to fd 2."""
    import tempfile
    import traceback

    start = time.monotonic()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        signal.alarm(timeout)
        try:
            call()
            code: Any = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except driver._Timeout:
            code = "timeout"
        except BaseException:  # What the interpreter would print, exit 1.
            traceback.print_exc()
            code = 1
        finally:
            signal.alarm(0)
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        stderr = captured.read().decode("utf-8", "replace")
    return {"code": code, "stderr": stderr, "changes": [], "seconds": time.monotonic() - start}


def _fuzz(run: Any, table: dict[str, Any], root: str, max_examples: int, report: _Report, prefix: str,
          extra: st.SearchStrategy[Any] | None = None, also: tuple[str, ...] = ()) -> dict[str, Any]:
    failures: list[dict[str, Any]] = []
    start = time.monotonic()

    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)  # fmt: skip
    @given(examples(table, root), extra if extra is not None else st.none())
    def prop(pairs: list[tuple[str, str]], more: Any) -> None:
        result = run(pairs, more) if extra is not None else run(pairs)
        report.count(result)
        if result["code"] in (0, CAPPED):
            report.trained.append([f"--{n}={v}" for n, v in pairs])
        names = [name for name, _ in pairs] + list(also)
        if extra is not None:  # local_cluster: its command, after `--`, is an input too.
            names.append(more[0] if more else "`--`")
        ran: tuple[Any, ...] = (0, CAPPED)
        if extra is not None:
            # A launched command's own failure is passed on (`false` exits 1), or ends
            # the restarts (3); the base --timeout may end a long run (124).
            ran = (0, 124, 1, local_cluster_exit_out_of_restarts()) if more == ["false"] else (0, 124)
        problem = check_result(result, names, prefix, ran)
        if problem is not None:
            failures.append({"flags": pairs, "extra": more, "problem": problem})
            raise AssertionError(problem)

    try:
        prop()
    except AssertionError:
        pass
    report.seconds = time.monotonic() - start
    return {
        "flags": sorted(table),
        "examples": report.examples,
        "distinct": len(report.cache),
        "outcomes": report.outcomes,
        "seconds": report.seconds,
        "slowest": report.slowest,
        "trained": report.trained,
        # Hypothesis shrinks a failure: the last one recorded is the smallest.
        "failure": failures[-1] if failures else None,
        "failures_seen": len(failures),
    }


def main() -> None:
    program, root, max_examples = sys.argv[1], sys.argv[2], int(sys.argv[3])
    FULL_RUNS["left"] = int(sys.argv[4]) if len(sys.argv) > 4 else max_examples
    os.makedirs(root, exist_ok=True)
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # What the commands print goes to stderr; the report to the real stdout.
    if program == "train":
        driver._go_offline()
        # An empty --data_dir means TFDS' default: keep it inside the sandbox.
        os.environ["TFDS_DATA_DIR"] = f"{root}/data"
        signal.signal(signal.SIGALRM, driver._on_alarm)
        os.chdir(root)
        report = fuzz_train(root, max_examples)
    elif program == "local_cluster":
        signal.signal(signal.SIGALRM, driver._on_alarm)
        report = fuzz_local_cluster(root, max_examples)
    else:
        signal.signal(signal.SIGALRM, driver._on_alarm)
        report = fuzz_cluster_launcher(program, root, max_examples)
    json.dump(report, out)
    out.close()


if __name__ == "__main__":
    main()
