r"""One small reproducer per workaround in `strategies.compat`: is the upstream bug still there?

    python -m strategies.compat._reproducers                 # the table, on this Keras and TensorFlow
    python -m strategies.compat._reproducers clip_before_all_reduce   # one, alone
    make test-upstream                                        # the same on keras-nightly + tf-nightly

Each reproducer runs stock Keras and TensorFlow (none of the fixes installed)
in a fresh process, because several need two logical CPUs configured before
TensorFlow starts, and returns ``BROKEN`` (the upstream behaviour the
workaround exists for is still there) or ``FIXED`` (it is gone: the
workaround may be unnecessary; check, then drop it or widen its version
guard). A reproducer that fails in another way reports ``ERROR`` with the
first line of the error, which itself is news: the API it needs changed.

`main` prints the table; ``--report=PATH`` writes it to a Markdown page with
the date and versions, and ``--suite`` then runs the fast test suite in this
interpreter and records its last line there too (``make test-upstream``).
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import datetime
import os
import re
import subprocess
import sys
from collections.abc import Callable

BROKEN, FIXED = "still broken", "fixed upstream"
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TIMEOUT = 300
_MODULE = "strategies.compat._reproducers"


@dataclasses.dataclass(frozen=True)
class Reproducer:
    name: str
    workaround: str  # Where the fix lives.
    issue: str  # The upstream report, or why there is none.
    run: Callable[[], str]


def _two_cpus() -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def _mirrored():  # A MirroredStrategy over the two logical CPUs.
    import tensorflow as tf

    _two_cpus()
    return tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])


def clip_before_all_reduce() -> str:
    """``clipnorm`` clips each replica's gradient before the all-reduce.

    Two replicas each with gradient 2 for one weight, ``SGD(1, clipnorm=1)``:
    one device (gradient 4, clipped to 1) moves the weight by -1; clipping per
    replica (1 + 1) moves it by -2.
    """
    import keras
    import tensorflow as tf

    strategy = _mirrored()
    with strategy.scope():
        weight = keras.Variable(0.0)
        optimizer = keras.optimizers.SGD(1.0, clipnorm=1.0)
        optimizer.build([weight])

    @tf.function
    def step():
        strategy.run(lambda: optimizer.apply_gradients([(tf.constant(2.0), weight)]))

    step()
    moved = float(weight.numpy())
    return BROKEN if abs(moved + 2.0) < 1e-6 else FIXED if abs(moved + 1.0) < 1e-6 else f"moved {moved}"


def merge_call_in_cond() -> str:
    """``gradient_accumulation_steps`` under MirroredStrategy: merge_call inside a cond."""
    import keras
    import tensorflow as tf

    strategy = _mirrored()
    with strategy.scope():
        weight = keras.Variable(0.0)
        optimizer = keras.optimizers.SGD(1.0, gradient_accumulation_steps=2)
        optimizer.build([weight])

    @tf.function
    def step():
        strategy.run(lambda: optimizer.apply_gradients([(tf.constant(1.0), weight)]))

    try:
        step()
        step()
    except RuntimeError as error:
        if "merge_call" in str(error):
            return BROKEN
        raise
    return FIXED


def loss_scale_finite_per_replica() -> str:
    """``LossScaleOptimizer`` decides "finite" per replica: one replica's inf reaches every weight.

    Replica 1's gradient is inf, replica 0's is finite. One device would skip
    the step (weight unchanged); per-replica checks apply the all-reduced inf.
    """
    import keras
    import tensorflow as tf

    strategy = _mirrored()
    with strategy.scope():
        weight = keras.Variable(1.0)
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
        optimizer.build([weight])

    @tf.function
    def step():
        def replica():
            replica_id = tf.distribute.get_replica_context().replica_id_in_sync_group
            grad = tf.where(replica_id == 1, tf.constant(float("inf")), tf.constant(1.0))
            optimizer.apply_gradients([(grad, weight)])

        strategy.run(replica)

    step()
    value = float(weight.numpy())
    return FIXED if value == 1.0 else BROKEN


def steps_per_execution_mirrored() -> str:
    """``model.fit(steps_per_execution=2)`` under MirroredStrategy (keras-team/keras#19246)."""
    import keras
    import numpy as np
    import tensorflow as tf

    strategy = _mirrored()
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile("sgd", "mse", steps_per_execution=2)
    x, y = np.zeros((16, 4), "float32"), np.zeros((16, 2), "float32")
    try:
        model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), epochs=1, verbose=0)
    except Exception as error:  # InvalidArgumentError from the placeholder, as reported.
        if "placeholder" in str(error).lower():
            return BROKEN
        raise
    return FIXED


def collective_keys_mirrored() -> str:
    """Two MirroredStrategy objects in one process share collective keys (tensorflow/tensorflow#62790)."""
    import keras
    import numpy as np
    import tensorflow as tf

    _two_cpus()
    for width in (3, 5):  # Two models of other shapes, each under its own strategy.
        strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
        with strategy.scope():
            model = keras.Sequential([keras.Input((width,)), keras.layers.Dense(width)])
            model.compile("sgd", "mse")
        x = np.zeros((8, width), "float32")
        try:
            model.fit(x, x, batch_size=4, epochs=1, verbose=0)
        except Exception as error:
            if "mismatch" in str(error).lower() or "aborted" in str(error).lower():
                return BROKEN
            raise
    return FIXED


def final_ema_overwrite() -> str:
    """``model.fit`` ends by overwriting the weights with their EMA, and no switch turns it off.

    Not a bug: the resumed run needs two ``fit`` calls to act as one
    (`no_final_ema_overwrite`). "Fixed" here means a public switch appeared.
    """
    import inspect

    import keras

    switches = {"finalize", "overwrite_with_ema", "ema_overwrite_at_end"}
    names = set(inspect.signature(keras.Model.fit).parameters)
    names |= set(inspect.signature(keras.optimizers.Optimizer.__init__).parameters)
    return FIXED if names & switches else BROKEN


def ram_rename_directory() -> str:
    """TensorFlow's ``ram://`` file system renames a directory's entry but not its files."""
    import tensorflow as tf

    tf.io.gfile.makedirs("ram://reproducer/a")
    with tf.io.gfile.GFile("ram://reproducer/a/file", "w") as f:
        f.write("x")
    tf.io.gfile.rename("ram://reproducer/a", "ram://reproducer/b")
    return FIXED if tf.io.gfile.exists("ram://reproducer/b/file") else BROKEN


def ram_prefix_is_directory() -> str:
    """On ``ram://``, any prefix of a file's path is a directory: a checkpoint prefix looks like one."""
    import tensorflow as tf

    with tf.io.gfile.GFile("ram://prefix/ckpt-3.index", "w") as f:
        f.write("x")
    return BROKEN if tf.io.gfile.isdir("ram://prefix/ckpt-3") else FIXED


# Multi-worker reproducers: two processes on 127.0.0.1, each runs `_mwms_task`.
def _mwms_task(which: str) -> str:
    import keras
    import numpy as np
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile("sgd", "mse")
    x, y = np.zeros((16, 4), "float32"), np.zeros((16, 2), "float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    if which == "symbolic_build":
        try:
            model.fit(data, epochs=1, verbose=0)
        except Exception as error:
            if "PerReplica" in str(error):
                return BROKEN
            if "reduction dimension" in str(error):
                return FIXED  # Past the build; the next failure is scalar_log_reduction's.
            raise
        return FIXED
    # scalar_log_reduction: Keras' own reduction of a scalar log, past the build.
    from keras.src.backend.tensorflow import trainer

    @tf.function
    def step():
        return strategy.run(lambda: tf.constant(1.0))

    try:
        trainer.reduce_per_replica(step(), strategy, reduction="auto")
    except Exception as error:
        if "reduction dimension" in str(error):
            return BROKEN
        raise
    return FIXED


def _two_workers(which: str) -> str:
    import json

    import portpicker

    ports = [portpicker.pick_unused_port() for _ in range(2)]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    processes = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        processes.append(subprocess.Popen([sys.executable, "-m", _MODULE, "--mwms-task", which], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=_TIMEOUT)[0])
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            return "ERROR: timed out"
    answers = {_answer(out) for out in outputs}
    return answers.pop() if len(answers) == 1 else "ERROR: the workers disagree: " + ", ".join(sorted(answers))


def symbolic_build_mwms() -> str:
    """``model.fit`` under MultiWorkerMirroredStrategy: an eager reduce of a PerReplica batch."""
    return _two_workers("symbolic_build")


def scalar_log_reduction_mwms() -> str:
    """Keras reduces scalar logs under MultiWorkerMirroredStrategy with ``axis=0``."""
    return _two_workers("scalar_log_reduction")


REPRODUCERS = (
    Reproducer("clip_before_all_reduce", "_keras_compat section 1 (synchronize_gradients)",
               "tensorflow/tensorflow#33929", clip_before_all_reduce),
    Reproducer("merge_call_in_cond", "_keras_compat section 1 (synchronize_gradients)",
               "keras-team/keras#20582 (fix: PR #23592)", merge_call_in_cond),
    Reproducer("loss_scale_finite_per_replica", "_keras_compat section 1 (synchronize_gradients)",
               "none filed (found here)", loss_scale_finite_per_replica),
    Reproducer("symbolic_build_mwms", "_keras_compat section 2 (build_from_spec)",
               "keras-team/keras#20585", symbolic_build_mwms),
    Reproducer("scalar_log_reduction_mwms", "_keras_compat section 3 (install_step_functions)",
               "keras-team/keras#20585, tensorflow/tensorflow#72388", scalar_log_reduction_mwms),
    Reproducer("steps_per_execution_mirrored", "_keras_compat section 3 (install_step_functions)",
               "keras-team/keras#19246", steps_per_execution_mirrored),
    Reproducer("collective_keys_mirrored", "_keras_compat section 5 (mirrored_strategy)",
               "tensorflow/tensorflow#62790", collective_keys_mirrored),
    Reproducer("final_ema_overwrite", "_keras_compat section 6 (no_final_ema_overwrite)",
               "none (by design: no public switch)", final_ema_overwrite),
    Reproducer("ram_rename_directory", "_keras_compat section 7 (rename_tree)",
               "none filed (found here)", ram_rename_directory),
    Reproducer("ram_prefix_is_directory", "_keras_compat section 7 (checkpoint_reader)",
               "none filed (found here)", ram_prefix_is_directory),
)
# Not reproduced here: section 4, non-atomic counters under ParameterServerStrategy
# (keras-team/keras#18668), needs a chief, a ps and two workers racing; it is
# exercised by tests/launch/test_fault_tolerance.py (every scheduled step, once).
NOT_REPRODUCED = (("_keras_compat section 4 (make_counters_atomic)", "keras-team/keras#18668",
                   "not reproduced standalone: needs a parameter-server cluster racing"),)


def _answer(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("RESULT: ")]
    if lines:
        return lines[-1][len("RESULT: "):]
    tail = [line for line in output.splitlines() if line.strip()]
    return "ERROR: " + (tail[-1][:160] if tail else "no output")


def run_one(name: str) -> str:
    """Runs reproducer ``name`` in a fresh interpreter; returns its answer."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": _REPO}
    try:
        proc = subprocess.run([sys.executable, "-m", _MODULE, name], env=env, capture_output=True,
                              text=True, timeout=_TIMEOUT * 2)
    except subprocess.TimeoutExpired:
        return "ERROR: timed out"
    return _answer(proc.stdout + proc.stderr)


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in ("keras", "keras-nightly", "tensorflow", "tf-nightly"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def table(results: dict[str, str]) -> str:
    rows = ["| reproducer | workaround | upstream issue | result |", "|---|---|---|---|"]
    for r in REPRODUCERS:
        rows.append(f"| `{r.name}` | {r.workaround} | {r.issue} | {results[r.name]} |")
    for workaround, issue, why in NOT_REPRODUCED:
        rows.append(f"| - | {workaround} | {issue} | {why} |")
    return "\n".join(rows)


def requirements() -> list[str]:
    """setup.cfg's dependencies and test extra, less TensorFlow and Keras (the nightlies replace them)."""
    config = configparser.ConfigParser()
    config.read(os.path.join(_REPO, "setup.cfg"))
    lines = config["options"]["install_requires"].split("\n")
    lines += config["options.extras_require"]["test"].split("\n")
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return [n for n in names if re.split(r"[<>=!~ \[]", n)[0].lower() not in ("tensorflow", "keras")]


def _suite() -> str:
    from strategies.compat import _upstream_suite

    return _upstream_suite.run(_REPO)


NOTES_MARKER = "<!-- Notes by hand below this line; make test-upstream keeps them. -->"


def kept_notes(path: str) -> str:
    """The hand-written notes at the end of an earlier report (from NOTES_MARKER on), or ""."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    return text[text.index(NOTES_MARKER):] if NOTES_MARKER in text else ""


def report(results: dict[str, str], suite: str | None, notes: str = "") -> str:
    found = ", ".join(f"{k} {v}" for k, v in versions().items())
    parts = [
        "# Upstream: are the workarounds still needed?",
        "",
        f"Written by `make test-upstream` on {datetime.date.today().isoformat()}, with {found} "
        f"(Python {sys.version.split()[0]}; {os.cpu_count()} CPUs, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} when this was written). Each workaround in `strategies/compat` has a "
        "reproducer of its upstream bug (`strategies/compat/_reproducers.py`), run in a fresh "
        "process on stock Keras and TensorFlow, without the workaround. \"fixed upstream\" means "
        "the workaround may be unnecessary on these versions: check, then remove it or widen its "
        "version guard. `ERROR` means the reproducer itself no longer runs: an API it needs changed.",
        "",
        table(results),
        "",
    ]
    if suite is not None:
        parts += ["## The fast suite on these versions", "",
                  "`pytest -m \"not cluster and not notebook and not slow\"`, run in the same venv, in the "
                  "same `make test-upstream` run, after the reproducers:", "",
                  "```text", suite, "```", ""]
    if notes:
        parts += [notes.rstrip("\n"), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="strategies.compat._reproducers")
    parser.add_argument("names", nargs="*", help="reproducers to run (default: all)")
    parser.add_argument("--report", help="write the Markdown report here")
    parser.add_argument("--suite", action="store_true", help="also run the fast suite; record it")
    parser.add_argument("--requirements", action="store_true", help="print the non-TF/Keras requirements")
    parser.add_argument("--mwms-task", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.requirements:
        print(" ".join(requirements()))  # For $(...): no quotes (they would stay literal).
        return 0
    if args.mwms_task:
        print("RESULT: " + _mwms_task(args.mwms_task), flush=True)
        return 0
    by_name = {r.name: r for r in REPRODUCERS}
    if len(args.names) == 1 and not args.report:  # One reproducer, in this process.
        print("RESULT: " + by_name[args.names[0]].run(), flush=True)
        return 0
    results = {}
    for r in REPRODUCERS:
        if not args.names or r.name in args.names:
            results[r.name] = run_one(r.name)
            print(f"{r.name}: {results[r.name]}", flush=True)
    for r in REPRODUCERS:
        results.setdefault(r.name, "not run")
    print(table(results))
    notes = kept_notes(args.report) if args.report else ""
    if args.report:  # Written now too, so that a suite cut short still leaves the table.
        with open(args.report, "w") as f:
            f.write(report(results, "(running)" if args.suite else None, notes))
    suite = _suite() if args.suite else None
    if suite is not None:
        print(suite)
    if args.report:
        with open(args.report, "w") as f:
            f.write(report(results, suite, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
