r"""Does a second-order optimizer train faster? ``python -m launch.bench.convergence``.

Steps and wall-clock time to a fixed target, per optimizer, on two tasks over
the UCI digits (they ship with scikit-learn, so this runs offline):

* ``digits_cnn``: ``launch._models``' CNN, to a test accuracy (default 0.98);
* ``digits_autoencoder``: the classic deep autoencoder 64-128-32-8-32-128-64
  (tanh; linear 8-unit code; sigmoid output; pixels in [0, 1]), to a training
  mean squared error (default 0.01).

Every optimizer gets the same protocol: its learning rate is tuned on a
5-point log grid (half-decade steps around its own default) with every seed;
the tuned rate is the one with the fewest median steps to the target (ties,
or no run reaching it: the best median final metric). Where the tuned rate is
on the grid's edge, the sweep goes on past it by half decades
(``--extend_edges`` rates at most) until the best rate is inside. The target is checked
every ``--eval_every`` steps, so steps-to-target are multiples of it.
Reported, each also as a ratio to AdamW's:

* steps to target (median over seeds; "not reached" if the median run does not
  reach it within ``--max_steps``);
* the cost of one step, measured in rounds that alternate the optimizers
  (each round times ``--cost_steps`` steps of each), so that all see the same
  machine load; the ratio is the median over rounds of each round's ratio to
  AdamW's; second-order optimizers at ``--precondition_frequency``;
* wall-clock to target estimated as steps x step cost (the ratios' product),
  and as measured in the runs themselves (median over seeds, training steps
  only). Other processes share the CPU and the runs happen minutes apart,
  so the measured one carries the machine's load changes.

Details that shape the numbers: the weights of seed ``s`` are the same for
every optimizer and learning rate, and so is the batch order; dropout masks
are not seeded per run. ScheduleFreeAdamW is evaluated at the weights Keras
trains (its interpolated ``y`` sequence), as ``model.evaluate`` would.
Shampoo grafts RMSProp (Adam-like step sizes) and takes its default roots
(``root_method="eigh"``; the opt-in ``shampoo_newton`` takes optax's). A
second-order optimizer the installed ``tfopt`` does not have (``shampoo``
before its branch lands) is listed as not available, not run.

Outputs in ``--output_dir``: ``convergence.json`` (every run's curve, every
number, machine and git state), ``convergence_<task>.png`` (the tuned runs'
curves and the learning-rate sweep) and ``convergence.md`` (the table).
``--quick`` (shared flag) is a smoke profile (few steps, a 2-point grid, one seed) whose
numbers mean nothing::

    python -m launch.bench.convergence --output_dir=/tmp/conv
    python -m launch.bench.convergence --quick --output_dir=/tmp/conv_quick
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging

import tfopt
from launch import _console, _data, _flags, _models, _outputs, _paths, _provenance

BASELINE = "adamw"


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """How to build one benchmarked optimizer at a learning rate."""

    label: str
    default_lr: float
    build: Callable[[float, int], keras.optimizers.Optimizer]
    available: Callable[[], str | None] = lambda: None  # A reason it is not, or None.


def _tfopt_reason(class_name: str) -> Callable[[], str | None]:
    def reason() -> str | None:
        if hasattr(tfopt, class_name):
            return None
        return f"not available on this branch (tfopt has no {class_name})"

    return reason


OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adamw": OptimizerSpec("keras AdamW", 1e-3, lambda lr, pf: keras.optimizers.AdamW(lr)),
    "tfopt_adam": OptimizerSpec("tfopt.Adam", 1e-3, lambda lr, pf: tfopt.Adam(lr)),
    "muon": OptimizerSpec("keras Muon", 1e-3, lambda lr, pf: keras.optimizers.Muon(lr)),
    "schedule_free_adamw": OptimizerSpec(
        "keras ScheduleFreeAdamW", 2.5e-3, lambda lr, pf: keras.optimizers.ScheduleFreeAdamW(lr)
    ),
    "shampoo": OptimizerSpec(
        "tfopt.Shampoo",
        1e-3,
        # RMSProp grafting: Adam-style step sizes (AlgoPerf's Shampoo grafts Adam);
        # optax's default, SGD grafting, needs SGD's learning rates.
        lambda lr, pf: tfopt.Shampoo(lr, precondition_frequency=pf, graft_type="rmsprop"),
        _tfopt_reason("Shampoo"),
    ),
    "soap": OptimizerSpec(
        "tfopt.SOAP", 3e-3, lambda lr, pf: tfopt.SOAP(lr, precondition_frequency=pf),
        _tfopt_reason("SOAP"),
    ),
    # Opt-in (not in the default --candidates): Shampoo with optax's coupled Newton
    # roots, the default before "eigh" (same steps to target, a costlier refresh).
    "shampoo_newton": OptimizerSpec(
        "tfopt.Shampoo(root_method='newton')",
        1e-3,
        lambda lr, pf: tfopt.Shampoo(lr, precondition_frequency=pf, graft_type="rmsprop",
                                     root_method="newton"),
        _tfopt_reason("Shampoo"),
    ),
}
OPT_IN = ("shampoo_newton",)


# --- Tasks ---------------------------------------------------------------------


@dataclasses.dataclass
class Task:
    name: str
    metric: str  # What the target is on.
    higher_is_better: bool
    build_model: Callable[[], keras.Model]
    loss: Callable[[Any, Any], Any]
    train: tuple[np.ndarray, np.ndarray]
    evaluate: tuple[np.ndarray, np.ndarray]  # The split the metric is computed on.
    batch_size: int


def _digits(data_dir: str | None) -> tuple[np.ndarray, ...]:
    dataset = _data.prepare("digits", data_dir)
    x_train, y_train = dataset.read_arrays("train")
    x_test, y_test = dataset.read_arrays("test")
    return x_train, y_train.astype("int32"), x_test, y_test.astype("int32")


def _autoencoder() -> keras.Model:
    """64-128-32-8-32-128-64: tanh, a linear code, a sigmoid reconstruction."""
    inputs = keras.Input((64,))
    x = inputs
    for units in (128, 32):
        x = keras.layers.Dense(units, activation="tanh")(x)
    x = keras.layers.Dense(8, name="code")(x)
    for units in (32, 128):
        x = keras.layers.Dense(units, activation="tanh")(x)
    outputs = keras.layers.Dense(64, activation="sigmoid")(x)
    return keras.Model(inputs, outputs, name="digits_autoencoder")


def make_tasks(data_dir: str | None, batch_size: int) -> dict[str, Task]:
    x_train, y_train, x_test, y_test = _digits(data_dir)
    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    pixels = (x_train.reshape(len(x_train), 64) / 255.0).astype("float32")
    return {
        "digits_cnn": Task(
            "digits_cnn", "test accuracy", True,
            lambda: _models.build_model("cnn", x_train.shape[1:], 10),
            lambda y, out: cross_entropy(y, out),
            (x_train, y_train), (x_test, y_test), batch_size,
        ),
        "digits_autoencoder": Task(
            "digits_autoencoder", "training MSE", False, _autoencoder,
            lambda y, out: keras.ops.mean(keras.ops.square(y - out)),
            (pixels, pixels), (pixels, pixels), batch_size,
        ),
    }  # fmt: skip


class Runner:
    """One model and one optimizer per (task, optimizer), traced once and reset per run."""

    def __init__(self, task: Task, spec: OptimizerSpec, seeds: Sequence[int], pf: int) -> None:
        self.task = task
        self.initial_weights = {}
        for seed in seeds:
            keras.utils.set_random_seed(seed)
            self.initial_weights[seed] = task.build_model().get_weights()
        keras.utils.set_random_seed(seeds[0])
        self.model = task.build_model()
        self.optimizer = spec.build(spec.default_lr, pf)
        self.optimizer.build(self.model.trainable_variables)
        self.initial_state = [v.numpy() for v in self.optimizer.variables]
        model, optimizer, loss_fn = self.model, self.optimizer, task.loss

        @tf.function
        def train_step(x, y):
            with tf.GradientTape() as tape:
                loss = loss_fn(y, model(x, training=True))
            optimizer.apply(tape.gradient(loss, model.trainable_variables),
                            model.trainable_variables)
            return loss

        @tf.function
        def metric(x, y):
            out = model(x, training=False)
            if task.higher_is_better:
                return keras.ops.mean(keras.ops.cast(
                    keras.ops.equal(keras.ops.argmax(out, axis=-1), keras.ops.cast(y, "int64")),
                    "float32"))
            return keras.ops.mean(keras.ops.square(y - out))

        self.train_step, self.metric = train_step, metric
        x, y = task.train
        self.x_train, self.y_train = tf.constant(x), tf.constant(y)
        self.x_eval, self.y_eval = tf.constant(task.evaluate[0]), tf.constant(task.evaluate[1])

    def reset(self, seed: int, lr: float) -> None:
        self.model.set_weights(self.initial_weights[seed])
        for variable, value in zip(self.optimizer.variables, self.initial_state, strict=True):
            variable.assign(value)
        if isinstance(self.optimizer, keras.optimizers.ScheduleFreeAdamW):
            # Its build() copies the weights into its momentum.
            for momentum, variable in zip(self.optimizer._momentums,  # Keras' private slots: no public accessor.
                                          self.model.trainable_variables, strict=True):
                momentum.assign(variable)
        self.optimizer.learning_rate = lr

    def batches(self, seed: int, steps: int):
        rng = np.random.default_rng(seed)
        n, b = len(self.task.train[0]), self.task.batch_size
        order = np.zeros(0, dtype=np.int64)
        for _ in range(steps):
            if len(order) < b:
                order = np.concatenate([order, rng.permutation(n)])
            yield order[:b]
            order = order[b:]

    def run(self, seed: int, lr: float, *, max_steps: int, eval_every: int,
            target: float) -> dict[str, Any]:
        """Trains until the target or ``max_steps``; returns the curve and the step it was met."""
        self.reset(seed, lr)
        curve, train_wall, reached = [], 0.0, None
        better = (lambda m: m >= target) if self.task.higher_is_better else (lambda m: m <= target)
        for step, index in enumerate(self.batches(seed, max_steps), start=1):
            index = tf.constant(index)
            x, y = tf.gather(self.x_train, index), tf.gather(self.y_train, index)
            start = time.perf_counter()
            loss = float(self.train_step(x, y))
            train_wall += time.perf_counter() - start
            if not math.isfinite(loss):
                curve.append((step, float("nan")))
                break
            if step % eval_every == 0:
                value = float(self.metric(self.x_eval, self.y_eval))
                curve.append((step, value))
                if better(value):
                    reached = {"steps": step, "wall_s": train_wall}
                    break
        return {"seed": seed, "learning_rate": lr, "curve": curve, "reached": reached,
                "final": curve[-1][1] if curve else float("nan")}  # fmt: skip

    def time_steps(self, steps: int) -> float:
        """Seconds per step over ``steps`` steps, continuing from the current state."""
        batches = [tf.constant(i) for i in self.batches(123, steps)]
        data = [(tf.gather(self.x_train, i), tf.gather(self.y_train, i)) for i in batches]
        start = time.perf_counter()
        for x, y in data:
            self.train_step(x, y)
        return (time.perf_counter() - start) / steps


# --- Protocol ------------------------------------------------------------------


def lr_grid(center: float, points: int) -> list[float]:
    """``points`` rates spaced by half a decade, centred on ``center``."""
    offsets = [(i - (points - 1) / 2) / 2 for i in range(points)]
    return [float(f"{center * 10**o:.3g}") for o in offsets]


def _median_steps(runs: Sequence[dict]) -> float:
    return statistics.median(r["reached"]["steps"] if r["reached"] else math.inf for r in runs)


def _choose(by_lr: dict[float, list[dict]], higher_is_better: bool) -> float:
    def key(lr: float) -> tuple[float, float]:
        finals = [r["final"] for r in by_lr[lr]]
        final = statistics.median(f if math.isfinite(f) else (-math.inf if higher_is_better
                                                               else math.inf) for f in finals)
        return (_median_steps(by_lr[lr]), -final if higher_is_better else final)

    return min(by_lr, key=key)


def _sweep(*, runner: Runner, by_lr: dict[float, list[dict]], lr: float, seeds: Sequence[int],
           max_steps: int, eval_every: int, target: float, progress: keras.utils.Progbar) -> None:
    """Runs every seed at ``lr`` into ``by_lr[lr]``."""
    for seed in seeds:
        run = runner.run(seed, lr, max_steps=max_steps, eval_every=eval_every, target=target)
        by_lr.setdefault(lr, []).append(run)
        steps = run["reached"]["steps"] if run["reached"] else max_steps
        progress.add(1, values=[("steps", steps)])


def _ratio(value: float, baseline: float) -> float:
    if not (math.isfinite(value) and math.isfinite(baseline)) or baseline == 0:
        return math.nan
    return value / baseline


def summarize(task: Task, results: dict[str, Any]) -> dict[str, Any]:
    """Per optimizer: tuned rate, median steps and wall to target, step cost, ratios to AdamW."""
    rows = {}
    for name, result in results.items():
        if "skipped" in result:
            rows[name] = {"skipped": result["skipped"]}
            continue
        tuned = result["tuned_lr"]
        runs = result["runs"][str(tuned)]
        reached = [r for r in runs if r["reached"]]
        steps = _median_steps(runs)
        walls = [r["reached"]["wall_s"] if r["reached"] else math.inf for r in runs]
        rows[name] = {
            "tuned_lr": tuned,
            "reached": f"{len(reached)}/{len(runs)}",
            "median_steps": steps,
            "median_wall_s": statistics.median(walls),
            "step_cost_s": result.get("step_cost_s", math.nan),
        }
    base = rows.get(BASELINE, {})
    for name, row in rows.items():
        if "skipped" in row:
            continue
        for key in ("median_steps", "median_wall_s", "step_cost_s"):
            row[f"{key}_ratio"] = _ratio(row[key], base.get(key, math.nan))
        if "step_cost_ratio" in results[name]:
            row["step_cost_s_ratio"] = results[name]["step_cost_ratio"]
        # Wall to target as steps x step cost: both measured under the same
        # load for every optimizer, unlike the runs' own wall clocks.
        row["steps_x_cost_ratio"] = row["median_steps_ratio"] * row["step_cost_s_ratio"]
    return rows


def _fmt(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "not reached"


def markdown(tasks: dict[str, Task], summaries: dict[str, dict], settings: dict) -> str:
    lines = []
    for task_name, rows in summaries.items():
        task = tasks[task_name]
        relation = ">=" if task.higher_is_better else "<="
        lines += [f"**{task_name}**: {task.metric} {relation} {settings['targets'][task_name]}",
                  "",
                  "| optimizer | tuned lr | reached | steps to target | x AdamW | step (ms) | x AdamW "
                  "| steps x step cost, x AdamW | wall to target (s) | x AdamW |",
                  "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, row in rows.items():
            label = OPTIMIZERS[name].label
            if "skipped" in row:
                lines.append(f"| {label} | {row['skipped']} |  |  |  |  |  |  |  |  |")
                continue
            lines.append(
                f"| {label} | {row['tuned_lr']:g} | {row['reached']} "
                f"| {_fmt(row['median_steps'], '.0f')} | {_fmt(row['median_steps_ratio'], '.2f')} "
                f"| {row['step_cost_s'] * 1e3:.2f} | {_fmt(row['step_cost_s_ratio'], '.2f')} "
                f"| {_fmt(row['steps_x_cost_ratio'], '.2f')} "
                f"| {_fmt(row['median_wall_s'], '.2f')} | {_fmt(row['median_wall_s_ratio'], '.2f')} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(task: Task, results: dict[str, Any], target: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, sweep) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, (name, result) in zip(colors, results.items(), strict=False):
        if "skipped" in result:
            continue
        label = OPTIMIZERS[name].label
        for i, run in enumerate(result["runs"][str(result["tuned_lr"])]):
            steps, values = zip(*run["curve"], strict=True) if run["curve"] else ((), ())
            curves.plot(steps, values, color=color, alpha=0.8, lw=1,
                        label=f"{label} (lr {result['tuned_lr']:g})" if i == 0 else None)
        lrs = sorted(float(lr) for lr in result["runs"])
        medians = [_median_steps(result["runs"][str(lr)]) for lr in lrs]
        sweep.plot(lrs, [m if math.isfinite(m) else np.nan for m in medians], "o-", color=color,
                   label=label)
    curves.axhline(target, color="k", ls="--", lw=0.8)
    curves.set(xlabel="step", ylabel=task.metric, title=f"{task.name}: tuned runs (all seeds)")
    if not task.higher_is_better:
        curves.set_yscale("log")
    curves.legend(fontsize=7)
    sweep.set(xscale="log", xlabel="learning rate", ylabel="median steps to target",
              title="learning-rate sweep (missing: not reached)")
    sweep.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- Main ------------------------------------------------------------------------

# --output_dir, --quick and --data_dir are shared with the other entry points.
_OUTPUT_DIR, _QUICK, _DATA_DIR = _flags.OUTPUT_DIR, _flags.QUICK, _flags.DATA_DIR
_flags.declare_key_flags(__name__, _OUTPUT_DIR, _QUICK, _DATA_DIR)
_DEFAULT_OUTPUT_DIR = "runs/bench_convergence"
PROG = "launch.bench.convergence"
_TASKS = flags.DEFINE_multi_enum("task", ["digits_cnn", "digits_autoencoder"],
                                 ["digits_cnn", "digits_autoencoder"], "Tasks to run.")
_OPTIMIZERS = flags.DEFINE_list("candidates", [n for n in OPTIMIZERS if n not in OPT_IN],
                                f"Optimizers to compare; choose from {list(OPTIMIZERS)}.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per learning rate.")
_GRID = flags.DEFINE_integer("grid_points", 5, "Learning rates per optimizer (half-decade steps).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Step budget per run (default per task).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 10, "Steps between target checks.")
_BATCH = flags.DEFINE_integer("minibatch", 64, "Batch size of both tasks.")
_CNN_TARGET = flags.DEFINE_float("cnn_target", 0.98, "digits_cnn: test accuracy to reach.")
_AE_TARGET = flags.DEFINE_float("autoencoder_target", 0.01, "digits_autoencoder: MSE to reach.")
_PF = flags.DEFINE_integer("precondition_frequency", 10, "Shampoo and SOAP's refresh interval.")
_EXTEND = flags.DEFINE_integer("extend_edges", 3,
                               "Extra rates, half a decade apart, past a grid edge that wins.")
_COST_STEPS = flags.DEFINE_integer("cost_steps", 10, "Steps per optimizer per timing round.")
_COST_ROUNDS = flags.DEFINE_integer("cost_rounds", 30, "Alternating timing rounds.")
_SWEEPS_FROM = flags.DEFINE_string(
    "sweeps_from", None,
    "An earlier run's convergence.json: take its learning-rate sweeps (tuned rates, steps to "
    "target) for the optimizers it holds and measure only the step cost again. For a change "
    "that makes a step cheaper without changing its numbers; the settings must match.")

_DEFAULT_MAX_STEPS = {"digits_cnn": 1000, "digits_autoencoder": 2000}

flags.register_validator("candidates", lambda names: set(names) <= set(OPTIMIZERS),
                         f"--candidates must name optimizers from {list(OPTIMIZERS)}")
flags.register_validator("seeds", lambda n: n >= 1, "--seeds must be >= 1")
flags.register_validator("grid_points", lambda n: n >= 1, "--grid_points must be >= 1")


# The settings a reused sweep must share with this run (the timing ones may differ).
_SWEEP_SETTINGS = ("seeds", "grid_points", "eval_every", "max_steps", "batch_size", "targets",
                   "precondition_frequency", "extend_edges", "quick")


def load_sweeps(path: str, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{task: {optimizer: result}}`` from an earlier ``convergence.json``, its timings dropped.

    Raises ``ValueError`` naming the first setting that differs from this run's,
    as steps to target measured under other settings are not this run's.
    """
    with tf.io.gfile.GFile(path) as f:  # gs:// too.
        earlier = json.load(f)
    for key in _SWEEP_SETTINGS:
        theirs, ours = earlier["settings"].get(key), _outputs.jsonable(settings[key])
        if theirs != ours:
            raise ValueError(f"--sweeps_from={path} was run with {key}={theirs!r}, this run "
                             f"has {key}={ours!r}; rerun the sweeps or match the flags.")
    timing = ("step_cost_s", "step_cost_rounds_s", "step_cost_ratio")
    return {task: {name: {k: v for k, v in result.items() if k not in timing}
                   for name, result in results.items() if "skipped" not in result}
            for task, results in earlier["results"].items()}


def main(argv: Sequence[str]) -> None:
    _console.check_no_positional(PROG, argv)
    quick = _QUICK.value
    seeds = list(range(1 if quick else _SEEDS.value))
    points = 2 if quick else _GRID.value
    eval_every = 2 if quick else _EVAL_EVERY.value
    cost_steps, cost_rounds = (4, 2) if quick else (_COST_STEPS.value, _COST_ROUNDS.value)
    targets = {"digits_cnn": _CNN_TARGET.value, "digits_autoencoder": _AE_TARGET.value}
    tasks = make_tasks(_DATA_DIR.value, _BATCH.value)
    tasks = {name: tasks[name] for name in dict.fromkeys(_TASKS.value)}
    names = list(dict.fromkeys([BASELINE, *_OPTIMIZERS.value]))
    max_steps = {t: (6 if quick else (_MAX_STEPS.value or _DEFAULT_MAX_STEPS[t])) for t in tasks}
    settings = {"seeds": seeds, "grid_points": points, "eval_every": eval_every,
                "max_steps": max_steps, "batch_size": _BATCH.value, "targets": targets,
                "precondition_frequency": _PF.value, "cost_steps": cost_steps,
                "extend_edges": 0 if quick else _EXTEND.value,
                "cost_rounds": cost_rounds, "quick": quick}  # fmt: skip
    try:
        reused = load_sweeps(_SWEEPS_FROM.value, settings) if _SWEEPS_FROM.value else {}
    except ValueError as error:  # Settings that differ (JSONDecodeError is one too).
        _console.fail(PROG, error)
    except (OSError, tf.errors.OpError, KeyError) as error:
        _console.fail(PROG, f"--sweeps_from={_SWEEPS_FROM.value}: cannot read an earlier "
                      f"convergence.json ({error!r}).")
    settings["sweeps_from"] = _SWEEPS_FROM.value
    output_dir = _paths.makedirs(_flags.value_or(_OUTPUT_DIR, _DEFAULT_OUTPUT_DIR))  # gs:// as given.
    report: dict[str, Any] = {
        "settings": settings,
        "machine": _provenance.machine(),
        "results": {}, "summary": {},
    }  # fmt: skip
    started = time.perf_counter()
    for task_name, task in tasks.items():
        results: dict[str, Any] = {}
        runners: dict[str, Runner] = {}
        for name in names:
            spec = OPTIMIZERS[name]
            if reason := spec.available():
                print(f"{task_name}: {name}: {reason}; skipped.", flush=True)
                results[name] = {"skipped": reason}
                continue
            runner = runners[name] = Runner(task, spec, seeds, _PF.value)
            if name in reused.get(task_name, {}):
                results[name] = reused[task_name][name]
                print(f"{task_name}: {name}: sweep from --sweeps_from, tuned lr "
                      f"{results[name]['tuned_lr']:g}", flush=True)
                continue
            grid = lr_grid(spec.default_lr, points)
            print(f"{task_name}: {name}: learning rates {grid}, seeds {seeds}", flush=True)
            progress = keras.utils.Progbar(len(grid) * len(seeds), stateful_metrics=["best"])
            by_lr: dict[float, list[dict]] = {}

            sweep = dict(runner=runner, by_lr=by_lr, seeds=seeds, max_steps=max_steps[task_name],
                         eval_every=eval_every, target=targets[task_name])
            for lr in grid:
                _sweep(lr=lr, progress=progress, **sweep)
            # A best rate on the grid's edge says the grid missed the optimum:
            # go on by half decades in that direction, up to --extend_edges rates.
            for _ in range(0 if quick or len(grid) < 2 else _EXTEND.value):
                tuned = _choose(by_lr, task.higher_is_better)
                if tuned not in (min(by_lr), max(by_lr)):
                    break
                step = 10**0.5 if tuned == max(by_lr) else 10**-0.5
                lr = float(f"{tuned * step:.3g}")
                print(f"  best rate {tuned:g} is on the grid's edge: also {lr:g}", flush=True)
                _sweep(lr=lr, progress=keras.utils.Progbar(len(seeds)), **sweep)
            tuned = _choose(by_lr, task.higher_is_better)
            print(f"  tuned lr {tuned:g}: median steps {_median_steps(by_lr[tuned])}", flush=True)
            results[name] = {"tuned_lr": tuned, "grid": sorted(by_lr),
                             "runs": {str(lr): runs for lr, runs in by_lr.items()}}
        # Step cost: rounds alternate the optimizers, so that all see the same load.
        print(f"{task_name}: step cost, {cost_rounds} rounds x {cost_steps} steps", flush=True)
        times: dict[str, list[float]] = {name: [] for name in runners}
        for name, runner in runners.items():
            runner.reset(seeds[0], results[name]["tuned_lr"])
            runner.time_steps(max(cost_steps // 2, 2))  # Warm-up, past SOAP's initial eigh.
        for _ in range(cost_rounds):
            for name, runner in runners.items():
                times[name].append(runner.time_steps(cost_steps))
        for name in runners:
            results[name]["step_cost_s"] = statistics.median(times[name])
            results[name]["step_cost_rounds_s"] = times[name]
            if BASELINE in times:  # Paired by round: the load changes between rounds.
                results[name]["step_cost_ratio"] = statistics.median(
                    t / b for t, b in zip(times[name], times[BASELINE], strict=True))
        report["results"][task_name] = results
        report["summary"][task_name] = summarize(task, results)
        with _paths.staged(os.path.join(output_dir, f"convergence_{task_name}.png")) as png:
            plot(task, results, targets[task_name], png)
    report["wall_s"] = time.perf_counter() - started
    table = markdown(tasks, report["summary"], settings)
    _paths.write_text(os.path.join(output_dir, "convergence.json"), json.dumps(_outputs.jsonable(report), indent=1))
    _paths.write_text(os.path.join(output_dir, "convergence.md"), table)
    print(table)
    logging.info("Wrote %s in %.0f s", output_dir, report["wall_s"])


def run(argv: list[str] | None = None) -> None:
    """Entry point, as for every launch module."""
    _console.run(main, PROG, __name__, argv)


if __name__ == "__main__":
    run()
