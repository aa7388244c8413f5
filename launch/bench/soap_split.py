r"""SOAP's eigenbasis refresh split over replicas: ``python -m launch.bench.soap_split``.

The measurement of ``launch.bench.shampoo``, for SOAP: under MirroredStrategy
over two logical CPUs, a SOAP step in which every eigenbasis is refreshed
(``precondition_frequency=1``) is timed in interleaved rounds as

* ``split``: each replica refreshes the bases it owns (each tile has one
  owner, balanced by ``n**3``; a replica's tiles of one size run as one
  stack), one all-reduce shares them (``split_preconditioner_work=True``);
* ``every_replica``: each replica refreshes every basis
  (``split_preconditioner_work=False``);
* ``no_refresh``: no refresh in the timed steps, to subtract.

It also checks that ``split`` and ``every_replica`` end with bitwise-equal
weights, and prints the on-paper scaling to 8 and 64 replicas. As for
Shampoo, two logical CPUs share the same physical cores: the ratio measures
the work saved on a shared machine, not an idle accelerator's wall time.
"""

from __future__ import annotations

import json
import statistics
import time

from absl import flags

from launch import _console, _paths, _provenance
from launch.bench.shampoo import _paper_scaling, _setup_devices

PROG = "launch.bench.soap_split"

_SHAPES = flags.DEFINE_list(
    "soap_split_shapes", ["784x256", "256x64", "64x256"], "Variable shapes (AxB)."
)
_BLOCK = flags.DEFINE_integer("soap_split_block_size", 256, "SOAP block_size.")
_ROUNDS = flags.DEFINE_integer("soap_split_rounds", 7, "Timed rounds (each runs every variant once).")
_STEPS = flags.DEFINE_integer("soap_split_steps_per_round", 3, "Steps per timed call.")
_OUTPUT = flags.DEFINE_string("soap_split_output_json", None, "Optional JSON file for every number.")


def _variant(strategy, shapes, split: bool, frequency: int):
    import keras
    import numpy as np
    import tensorflow as tf

    import tfopt

    rng = np.random.default_rng(0)
    with strategy.scope():
        variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in shapes]
        optimizer = tfopt.SOAP(1e-3, block_size=_BLOCK.value, precondition_frequency=frequency,
                               split_preconditioner_work=split)  # fmt: skip
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

    run()  # Trace and warm up (step 1's eigh included).
    return run, optimizer, variables


def main(argv: list[str]) -> None:
    _console.check_no_positional(PROG, argv)
    _setup_devices()

    import numpy as np

    import strategies

    shapes = [tuple(int(d) for d in s.split("x")) for s in _SHAPES.value]
    strategy = strategies.mirrored_strategy(["CPU:0", "CPU:1"])
    variants = {
        "split": _variant(strategy, shapes, split=True, frequency=1),
        "every_replica": _variant(strategy, shapes, split=False, frequency=1),
        "no_refresh": _variant(strategy, shapes, split=True, frequency=10**9),
    }
    tiles = []
    for v in variants["split"][1].variables:
        if "_statistic_" in v.path:
            tiles += [int(v.shape[-1])] * (int(v.shape[0]) if len(v.shape) == 3 else 1)
    times: dict[str, list[float]] = {name: [] for name in variants}
    # The process's CPU time (all threads) as well: on a machine shared with
    # other work, wall time measures this process's share of the cores as
    # much as its work; CPU time counts the work (and the thread pools' spins).
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(_ROUNDS.value):
        for name, (run, _, _) in variants.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            times[name].append((time.perf_counter() - start) / _STEPS.value)
            cpu[name].append((time.process_time() - start_cpu) / _STEPS.value)
    equal = all(
        np.array_equal(a.numpy(), b.numpy())
        for a, b in zip(variants["split"][2], variants["every_replica"][2], strict=True)
    )
    median = {name: statistics.median(t) for name, t in times.items()}
    refresh = {k: median[k] - median["no_refresh"] for k in ("split", "every_replica")}
    median_cpu = {name: statistics.median(t) for name, t in cpu.items()}
    refresh_cpu = {k: median_cpu[k] - median_cpu["no_refresh"] for k in ("split", "every_replica")}
    result = {
        "machine": _provenance.machine(devices="2 logical CPU devices"),
        "shapes": _SHAPES.value, "block_size": _BLOCK.value, "statistics": tiles,
        "median_step_s": median, "all_step_s": times,
        "median_step_cpu_s": median_cpu, "all_step_cpu_s": cpu,
        "cpu_step_ratio_split_over_every_replica": median_cpu["split"] / median_cpu["every_replica"],
        "cpu_refresh_ratio_split_over_every_replica":
            refresh_cpu["split"] / refresh_cpu["every_replica"],
        "step_ratio_split_over_every_replica": median["split"] / median["every_replica"],
        "refresh_ratio_split_over_every_replica": refresh["split"] / refresh["every_replica"],
        "split_equals_every_replica_bitwise": equal,
        "paper_scaling": _paper_scaling(tiles),
    }  # fmt: skip
    for row in result["paper_scaling"]:  # SOAP sends [Q; Q_new.T Q; order], (2n + 1) x n each.
        scale = sum((2 * n + 1) * n for n in tiles) / sum(n * n for n in tiles)
        row["collective_bytes"] *= scale
        row["ring_bytes_sent_per_replica"] *= scale
    # What a perfect split of the refresh alone would give: the rest of the
    # step (no_refresh) is every replica's own work in both variants.
    share = result["paper_scaling"][0]["busiest_share"]
    result["step_ratio_if_refresh_split_by_plan"] = (
        median["no_refresh"] + share * refresh["every_replica"]) / median["every_replica"]
    print(f"{len(tiles)} statistics (tiles), sizes {sorted(set(tiles))}, block_size {_BLOCK.value}")
    for name, value in median.items():
        print(f"  {name:14s} median step {value * 1e3:8.1f} ms, CPU {median_cpu[name] * 1e3:8.1f} ms")
    print(f"  step ratio split / every_replica:    {result['step_ratio_split_over_every_replica']:.2f}")
    print(f"  refresh ratio (minus no_refresh):    "
          f"{result['refresh_ratio_split_over_every_replica']:.2f}")  # fmt: skip
    print(f"  CPU time: step ratio {result['cpu_step_ratio_split_over_every_replica']:.2f}, "
          f"refresh ratio {result['cpu_refresh_ratio_split_over_every_replica']:.2f}")
    print(f"  step ratio if the refresh split as planned (busiest share x every_replica's "
          f"refresh): {result['step_ratio_if_refresh_split_by_plan']:.2f}")  # fmt: skip
    print(f"  split and every_replica weights bitwise equal: {equal}")
    for row in result["paper_scaling"]:
        print(f"  {row['replicas']:3d} replicas: busiest replica does {row['busiest_share']:.3f} "
              f"of the refresh work (ideal {row['ideal_share']:.3f}); one all-reduce of "
              f"{row['collective_bytes'] / 2**20:.2f} MiB")  # fmt: skip
    if _OUTPUT.value:
        _paths.write_text(_OUTPUT.value, json.dumps(result, indent=1))  # gs:// too.


def run(argv: list[str] | None = None) -> None:
    """Entry point, as for every launch module."""
    _console.run(main, PROG, __name__, argv)


if __name__ == "__main__":
    run()
