r"""Shampoo's root refresh split over replicas: ``python -m launch.bench.shampoo``.

Under MirroredStrategy over two logical CPUs, a Shampoo step in which every
root is refreshed (``precondition_frequency=1``) is timed twice, in
interleaved rounds so both see the same machine load:

* ``split``: each replica computes the roots it owns (balanced by ``n**3``),
  one all-reduce shares them (``split_preconditioner_work=True``);
* ``every_replica``: each replica computes every root
  (``split_preconditioner_work=False``), as a naive data-parallel run does.

It also times a step with no refresh (``precondition_frequency`` larger than
the run) to show what the refresh itself costs, and prints the on-paper
scaling to 8 and 64 replicas: the busiest replica's share of the root work
(greedy balance of these matrices) and the bytes of the one collective.

The roots are Shampoo's default (``--root_method=eigh``); ``--root_method=newton``
times optax's coupled Newton iteration, the default when the README's ratio
was measured.

Two logical CPUs share the same physical cores, so "every replica computes
everything" here costs twice the CPU work, not twice the wall time of an
idle accelerator: the ratio measures the work saved on a shared machine.
"""

from __future__ import annotations

import json
import statistics
import time

from absl import flags

from launch import _console, _provenance

PROG = "launch.bench.shampoo"

from launch import _paths  # noqa: E402

_SHAPES = flags.DEFINE_list(
    "shapes", ["256x256", "256x128", "128x64"], "Variable shapes (AxB); blocks of --block_size."
)
_BLOCK = flags.DEFINE_integer("block_size", 64, "Shampoo block_size.")
# tfopt._shampoo.ROOT_METHODS and tfopt.Shampoo's default, written out: tfopt is
# imported late, once the logical devices are set (tests/launch/test_bench_shampoo.py
# pins them equal).
_ROOT_METHOD = flags.DEFINE_enum("root_method", "eigh", ["eigh", "newton"],
                                 "Shampoo root_method: how each inverse root is computed.")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "Timed rounds (each runs every variant once).")
_STEPS = flags.DEFINE_integer("steps_per_round", 3, "Steps per timed call.")
_OUTPUT = flags.DEFINE_string("output_json", None, "Optional JSON file for every number.")


def _setup_devices() -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def _variant(strategy, shapes, split: bool, frequency: int):
    import keras
    import numpy as np
    import tensorflow as tf

    import tfopt

    rng = np.random.default_rng(0)
    with strategy.scope():
        variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in shapes]
        optimizer = tfopt.Shampoo(1e-3, block_size=_BLOCK.value, precondition_frequency=frequency,
                                  best_effort_shape_interpretation=False,
                                  split_preconditioner_work=split,
                                  root_method=_ROOT_METHOD.value)  # fmt: skip
        optimizer.build(variables)
    targets = [tf.constant(rng.normal(size=s).astype("float32")) for s in shapes]

    def replica_step():
        with tf.GradientTape() as tape:
            loss = sum(tf.reduce_sum(tf.square(v.value - t)) for v, t in zip(variables, targets, strict=True))
        grads = tape.gradient(loss, [v.value for v in variables])
        optimizer.apply(grads, variables)

    @tf.function
    def run():
        for _ in tf.range(_STEPS.value):
            strategy.run(replica_step)

    run()  # Trace and warm up.
    return run, optimizer


def _paper_scaling(sizes: list[int]) -> list[dict]:
    from tfopt import assign_owners, matrix_cost

    costs = [matrix_cost(n) for n in sizes]
    total = sum(costs)
    packed_bytes = 4 * sum(n * n for n in sizes)
    rows = []
    for n in (2, 8, 64):
        owners = assign_owners(costs, n)
        busiest = max(sum(c for c, o in zip(costs, owners, strict=True) if o == r) for r in range(n))
        rows.append({
            "replicas": n, "busiest_share": busiest / total, "ideal_share": 1 / n,
            "collective_bytes": packed_bytes,
            "ring_bytes_sent_per_replica": 2 * (n - 1) / n * packed_bytes,
        })  # fmt: skip
    return rows


def main(argv: list[str]) -> None:
    _console.check_no_positional(PROG, argv)
    _setup_devices()

    import strategies

    shapes = [tuple(int(d) for d in s.split("x")) for s in _SHAPES.value]
    strategy = strategies.mirrored_strategy(["CPU:0", "CPU:1"])
    variants = {
        "split": _variant(strategy, shapes, split=True, frequency=1),
        "every_replica": _variant(strategy, shapes, split=False, frequency=1),
        "no_refresh": _variant(strategy, shapes, split=True, frequency=10**9),
    }
    sizes = [int(v.shape[0]) for v in variants["split"][1].variables if "_statistic_" in v.path]
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(_ROUNDS.value):
        for name, (run, _) in variants.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) / _STEPS.value)
    median = {name: statistics.median(t) for name, t in times.items()}
    refresh = {k: median[k] - median["no_refresh"] for k in ("split", "every_replica")}
    result = {
        "machine": _provenance.machine(devices="2 logical CPU devices"),
        "shapes": _SHAPES.value, "block_size": _BLOCK.value, "root_method": _ROOT_METHOD.value,
        "statistics": sizes,
        "median_step_s": median, "all_step_s": times,
        "step_ratio_split_over_every_replica": median["split"] / median["every_replica"],
        "refresh_ratio_split_over_every_replica": refresh["split"] / refresh["every_replica"],
        "paper_scaling": _paper_scaling(sizes),
    }  # fmt: skip
    print(f"{len(sizes)} statistics, sizes {sorted(set(sizes))}, block_size {_BLOCK.value}, "
          f"root_method {_ROOT_METHOD.value}")
    for name, value in median.items():
        print(f"  {name:14s} median step {value * 1e3:8.1f} ms")
    print(f"  step ratio split / every_replica:    {result['step_ratio_split_over_every_replica']:.2f}")
    print(f"  refresh ratio (minus no_refresh):    "
          f"{result['refresh_ratio_split_over_every_replica']:.2f}")  # fmt: skip
    for row in result["paper_scaling"]:
        print(f"  {row['replicas']:3d} replicas: busiest replica does {row['busiest_share']:.3f} "
              f"of the root work (ideal {row['ideal_share']:.3f}); one all-reduce of "
              f"{row['collective_bytes'] / 2**20:.2f} MiB")  # fmt: skip
    if _OUTPUT.value:
        _paths.write_text(_OUTPUT.value, json.dumps(result, indent=1))  # gs:// too.


def run(argv: list[str] | None = None) -> None:
    """Entry point, as for every launch module."""
    _console.run(main, PROG, __name__, argv)


if __name__ == "__main__":
    run()
