r"""Optimizer step time against a memory roof: ``python -m launch.bench.optimizers``.

An optimizer step is memory-bound, so the yardstick is bandwidth. For each
tfopt optimizer, and its Keras counterpart where Keras has one, with and
without XLA, on one fp32 variable of each ``--sizes`` (default 1M, 16M and
64M parameters, M = 2**20), it measures:

* the median wall time of ``optimizer.apply`` in a ``tf.function``;
* the bytes a step must move at least: every state array (variable, moments)
  read and written once, the gradient read once; Adam: 7 x 4 B per parameter.
  LARS and LAMB also need per-layer norms, which this count leaves out;
* the achieved GB/s (those bytes over the median time);
* the fraction of a memory roof measured in the same run (`launch.bench._roof`):
  the bandwidth of the faster of an XLA-compiled triad and TensorFlow's fused
  gradient-descent kernel on arrays of the same shape. A step's fraction is
  the time its bytes take at that bandwidth over its own time; 1.0 means "as
  fast as memory allows".

Each timed round runs the tfopt step, its Keras counterpart's step and both
roof kernels once each, so that all of them see the same machine load (a
shared CPU drifts): the tfopt/Keras ratio and the fractions compare like with
like, and every row of one size is judged by the same two kernels.

It writes ``optimizers.json`` (every number, machine and git state),
``optimizers.png`` (fraction of the roof per optimizer) and ``optimizers.md``
(the table on the docs' Benchmarks page) to ``--output_dir``; the last two are
drawn by `launch.bench._report`. ``--quick`` runs 1M parameters with
few timed steps, in about a minute; the default run takes several minutes on a
2-core CPU::

    python -m launch.bench.optimizers --quick
    python -m launch.bench.optimizers --optimizers=adam,lamb --sizes=16M --xla=off
"""

from __future__ import annotations

import dataclasses
import gc
import json
import multiprocessing
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf
from absl import flags, logging

import tfopt
from launch import _console, _flags, _outputs, _paths, _provenance
from launch.bench import _roof
from launch.bench._report import markdown_table, plot, size_label


@dataclasses.dataclass(frozen=True)
class Spec:
    """How to build one benchmarked optimizer pair, and what a step must move."""

    make: Callable[[], keras.optimizers.Optimizer]
    keras: Callable[[], keras.optimizers.Optimizer] | None
    state_arrays: int  # variable + slots, each read and written once per step
    extra_bytes: float = 0.0  # per parameter per step, amortized (Lookahead's sync)


_SYNC_PERIOD = 6
SPECS: dict[str, Spec] = {
    "gradient_descent": Spec(
        lambda: tfopt.get("gradient_descent"), lambda: keras.optimizers.SGD(), 1
    ),
    "sgd": Spec(
        lambda: tfopt.get("sgd", momentum=0.9), lambda: keras.optimizers.SGD(momentum=0.9), 2
    ),
    "dynamic_gradient_descent": Spec(lambda: tfopt.get("dynamic_gradient_descent"), None, 2),
    "adagrad": Spec(lambda: tfopt.get("adagrad"), keras.optimizers.Adagrad, 2),
    "adam": Spec(lambda: tfopt.get("adam"), keras.optimizers.Adam, 3),
    "lars": Spec(lambda: tfopt.get("lars", weight_decay=1e-4), None, 2),
    "lamb": Spec(lambda: tfopt.get("lamb", weight_decay=1e-2), keras.optimizers.Lamb, 3),
    "radam": Spec(lambda: tfopt.get("radam"), None, 3),
    # Lookahead(Adam): Adam's arrays, plus variable and slow weights read and
    # written once every sync_period steps.
    "lookahead": Spec(
        lambda: tfopt.Lookahead(tfopt.get("adam"), sync_period=_SYNC_PERIOD),
        None,
        3,
        extra_bytes=4 * 4 / _SYNC_PERIOD,
    ),
    "lazy_adam": Spec(lambda: tfopt.get("lazy_adam"), keras.optimizers.Adam, 3),
}

_SIZES = flags.DEFINE_list(
    "sizes",
    ["1M", "16M", "64M"],
    "Parameter counts, with an optional K (2**10) or M (2**20) suffix.",
)
_OPTIMIZERS = flags.DEFINE_list(
    "optimizers", None, f"tfopt optimizers to time (default: all of {', '.join(SPECS)})."
)
_XLA = flags.DEFINE_enum(
    "xla", "both", ["both", "off", "on"], "Time steps without XLA, with it, or both."
)
_KERAS = flags.DEFINE_bool("keras", True, "Also time each optimizer's Keras counterpart.")
_TIMED_STEPS = flags.DEFINE_integer(
    "timed_steps", 10, "Timed steps per configuration (median reported).", lower_bound=1
)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (tracing, XLA).", lower_bound=0)
_QUICK = _flags.QUICK  # --quick and --output_dir are shared with launch.device_check.
_ISOLATE = flags.DEFINE_bool(
    "isolate", True, "Time each (optimizer, size) in a fresh process (bounded memory)."
)
_OUTPUT_DIR = _flags.OUTPUT_DIR
_flags.declare_key_flags(__name__, _flags.QUICK, _flags.OUTPUT_DIR)
_DEFAULT_OUTPUT_DIR = "runs/bench_optimizers"
PROG = "launch.bench.optimizers"

# The slowest group (64M, Keras' Lamb without XLA) takes about a minute here.
_GROUP_TIMEOUT_S = 1800
_SIZE_RE = re.compile(r"^(\d+)([KkMm]?)$")


def parse_size(text: str) -> int:
    """``"16M"`` -> 16 * 2**20; ``"1000"`` -> 1000."""
    match = _SIZE_RE.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise _console.UsageError(
            f"--sizes takes positive counts such as 1M, 64K or 1000. Received: {text!r}."
        )
    return int(match.group(1)) << {"": 0, "K": 10, "M": 20}[match.group(2).upper()]


def _shape(n: int) -> tuple[int, ...]:
    # A layer-like 2-D kernel where the count allows it.
    return (n // 1024, 1024) if n % 1024 == 0 else (n,)


def _median_ms(times: Sequence[float]) -> float:
    return 1e3 * statistics.median(times)


def _step_fn(optimizer: keras.optimizers.Optimizer, variable: Any, xla: bool) -> Callable:
    return tf.function(lambda g: optimizer.apply([g], [variable]), jit_compile=xla)


def measure(
    optimizers: Sequence[keras.optimizers.Optimizer],
    n: int,
    xla: bool,
    timed_steps: int,
    warmup: int,
) -> list[dict[str, Any]]:
    """Times each optimizer's step on ``n`` params, in turn with the two roof kernels.

    Each timed round runs every optimizer once and each roof kernel once, so a change
    in machine load (this CPU is shared) hits all of them alike: the ratios
    between them hold even when the absolute times drift.
    """
    shape = _shape(n)
    initial = tf.random.normal(shape, stddev=0.1)
    gradient = tf.random.normal(shape, stddev=0.01)
    variables, steps = [], []
    for optimizer in optimizers:
        variable = keras.Variable(initial, name="kernel")
        optimizer.build([variable])
        variables.append(variable)
        steps.append(_step_fn(optimizer, variable, xla))

    # The roof (launch.bench._roof): a triad and TF's gradient-descent kernel on this shape.
    roofs = [fn for fn, _ in _roof.kernels(shape)]

    fns = [*steps, *roofs]
    for _ in range(warmup):
        for fn in fns:
            fn(gradient)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(timed_steps):
        for fn, fn_times in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn(gradient)
            fn_times.append(time.perf_counter() - start)
    for optimizer, variable in zip(optimizers, variables, strict=True):
        if not bool(tf.reduce_all(tf.math.is_finite(variable.value))):
            raise RuntimeError(f"{type(optimizer).__name__} produced non-finite weights.")
    triad_ms, kernel_ms = (_median_ms(t) for t in times[len(steps):])
    roof = {"roof_triad_ms": triad_ms, "roof_kernel_ms": kernel_ms,
            "roof_gb_per_s": _roof.gb_per_s(n, triad_ms / 1e3, kernel_ms / 1e3)}  # fmt: skip
    return [
        {"step_ms": _median_ms(t), **roof, "step_ms_all": [1e3 * x for x in t]}
        for t in times[: len(steps)]
    ]


def _row(name: str, impl: str, optimizer: Any, spec: Spec, xla: bool, n: int,
         timing: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """One result: the timings, the bytes a step must move and the GB/s they give."""
    step_bytes = 4 * n * (2 * spec.state_arrays + 1) + spec.extra_bytes * n
    return {
        "optimizer": name,
        "implementation": impl,
        "class": type(optimizer).__name__,
        "xla": xla,
        "params": n,
        "bytes_per_step": step_bytes,
        **timing,
        "gb_per_s": step_bytes / timing["step_ms"] / 1e6,
        # The time these bytes take at the roof's bandwidth, over the step's time.
        "fraction_of_roof": step_bytes / timing["roof_gb_per_s"] / 1e6 / timing["step_ms"],
    }


def measure_group(
    name: str, n: int, xla_modes: Sequence[bool], with_keras: bool, timed_steps: int, warmup: int
) -> list[dict[str, Any]]:
    """The rows of one optimizer at one size: tfopt and Keras, timed together, per XLA mode."""
    spec = SPECS[name]
    impls = [("tfopt", spec.make)]
    if with_keras and spec.keras is not None:
        impls.append(("keras", spec.keras))
    rows = []
    for xla in xla_modes:
        optimizers = [make() for _, make in impls]
        timings = measure(optimizers, n, xla, timed_steps, warmup)
        for (impl, _), optimizer, timing in zip(impls, optimizers, timings, strict=True):
            rows.append(_row(name, impl, optimizer, spec, xla, n, timing))
        del optimizers
        gc.collect()
    return rows


def run_benchmark(
    names: Sequence[str],
    sizes: Sequence[int],
    xla_modes: Sequence[bool],
    with_keras: bool,
    timed_steps: int,
    warmup: int,
    isolate: bool = True,
) -> list[dict[str, Any]]:
    """One row per (size, optimizer, XLA, implementation).

    With ``isolate``, each (size, optimizer) group runs in a fresh process.
    TF 2.21 keeps some memory after an optimizer that ran in a ``tf.function``
    is deleted (about 10 bytes per parameter, measured here), which over a
    full run at 64M parameters would exhaust the RAM of a small machine.
    """
    rows = []
    for n in sizes:
        for name in names:
            args = (name, n, xla_modes, with_keras, timed_steps, warmup)
            if isolate:
                # A pool of one spawned process per group; leaving the block
                # terminates it, so no child outlives a failure or a timeout.
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    group = pool.apply_async(measure_group, args).get(timeout=_GROUP_TIMEOUT_S)
            else:
                group = measure_group(*args)
            for row in group:
                logging.info(
                    "%s %s, xla=%s, %s params: %.2f ms, %.1f GB/s, %.0f%% of roof",
                    row["implementation"],
                    row["class"],
                    row["xla"],
                    size_label(n),
                    row["step_ms"],
                    row["gb_per_s"],
                    100 * row["fraction_of_roof"],
                )
            rows.extend(group)
    return rows


def main(argv: Sequence[str]) -> None:
    """Runs the benchmark the flags describe and writes its three files."""
    _console.check_no_positional(PROG, argv)
    try:
        sizes = [
            parse_size(s) for s in (["1M"] if _QUICK.value and not _SIZES.present else _SIZES.value)
        ]
        names = _OPTIMIZERS.value or [n for n in SPECS if n in tfopt.available()]
        unknown = [n for n in names if n not in SPECS]
        if unknown:
            raise _console.UsageError(
                f"--optimizers takes {', '.join(SPECS)}. Received: {','.join(unknown)}."
            )
    except _console.UsageError as e:
        _console.fail(PROG, e)
    machine = _provenance.machine()  # What is measured: the tree as the run starts.
    timed_steps = 5 if _QUICK.value and not _TIMED_STEPS.present else _TIMED_STEPS.value
    xla_modes = {"both": [False, True], "off": [False], "on": [True]}[_XLA.value]

    # 1M parameters leave little memory behind: --quick saves the process starts.
    isolate = _ISOLATE.value if _ISOLATE.present or not _QUICK.value else False
    rows = run_benchmark(names, sizes, xla_modes, _KERAS.value, timed_steps, _WARMUP.value, isolate)
    output_dir = _paths.makedirs(_flags.value_or(_OUTPUT_DIR, _DEFAULT_OUTPUT_DIR))  # gs:// as given.
    result = {
        "machine": machine,
        "git": machine["git"],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "timed_steps": timed_steps,
        "warmup": _WARMUP.value,
        "rows": rows,
    }
    paths = [os.path.join(output_dir, f"optimizers.{ext}") for ext in ("json", "png", "md")]
    _paths.write_text(paths[0], json.dumps(_outputs.jsonable(result), indent=1))
    with _paths.staged(paths[1]) as png:
        plot(rows, png)
    _paths.write_text(paths[2], markdown_table(rows))
    print(markdown_table(rows))
    print("Wrote " + ", ".join(paths))


def run(argv: list[str] | None = None) -> None:
    """Entry point: absl parses the flags; a bad value exits with status 2."""
    _console.run(main, PROG, __name__, argv)


if __name__ == "__main__":
    run()
