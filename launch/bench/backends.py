r"""tfopt's step time against the Keras built-in, on JAX and PyTorch: ``python -m launch.bench.backends``.

For each optimizer whose rule Keras also ships (Adam, SGD with momentum,
Adagrad, LAMB), on one fp32 variable of ``--size`` parameters (default 16M,
M = 2**20; ``--params``), under each ``--backends`` entry, it times one ``optimizer``
step the way that backend runs it:

* JAX: ``optimizer.stateless_apply`` in ``jax.jit``, the variables' buffers
  donated, as Keras' own JAX trainer does;
* PyTorch: ``optimizer.apply`` (eager, under ``torch.no_grad``).

A Keras backend is chosen at import, so each backend runs in its own
process. Rounds are interleaved: each round times ``--round_steps`` steps of
the tfopt optimizer, then of Keras', so that both see the same machine load;
the ratio is of the two medians over ``--backend_rounds`` rounds (< 1: tfopt
is faster).
It prints a Markdown table and writes it, with every number and the machine,
to ``--output_dir`` (``backends.md``, ``backends.json``)::

    python -m launch.bench.backends
    python -m launch.bench.backends --backends=jax --params=1M --backend_rounds=3
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

from launch import _console, _flags, _provenance

PROG = "launch.bench.backends"
BACKENDS = ("jax", "torch")

# name -> (tfopt constructor kwargs, Keras class name, its kwargs): the same rule.
PAIRS: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {
    "adam": ({}, "Adam", {}),
    "sgd": ({"momentum": 0.9}, "SGD", {"momentum": 0.9}),
    "adagrad": ({}, "Adagrad", {}),
    "lamb": ({}, "Lamb", {}),
}

# Names no other launch module defines: every entry point imports into one
# process (tests/launch/test_entry_points.py).
_BACKENDS = flags.DEFINE_list("backends", list(BACKENDS), f"Keras backends to time: {BACKENDS}.")
_PARAMS = flags.DEFINE_string("params", "16M", "Parameters of the variable: a count, K or M suffix.")
_ROUNDS = flags.DEFINE_integer("backend_rounds", 7, "Interleaved rounds (tfopt, then Keras).",
                               lower_bound=1)  # fmt: skip
_STEPS = flags.DEFINE_integer("round_steps", 5, "Timed steps per optimizer per round.", lower_bound=1)
_PAIRS = flags.DEFINE_list("pairs", list(PAIRS), f"Optimizers to time, of {list(PAIRS)}.")
_OUTPUT_DIR = _flags.OUTPUT_DIR
_DEFAULT_OUTPUT_DIR = "runs/bench_backends"
_TIMEOUT_S = 1800  # One backend's process, every pair: about 2 minutes here at 16M.


def _size(text: str) -> int:
    digits, suffix = (text[:-1], text[-1].upper()) if text[-1:].upper() in "KM" else (text, "")
    if not digits.isdigit() or int(digits) == 0:
        raise _console.UsageError(f"--params takes a count such as 16M or 1000. Received: {text!r}.")
    return int(digits) << {"": 0, "K": 10, "M": 20}[suffix]


def _step(optimizer: Any, shape: tuple[int, ...]) -> Callable[[], None]:
    """One compiled (JAX) or eager (PyTorch) step of ``optimizer`` on a fresh variable."""
    import keras
    import numpy as np

    variable = keras.Variable(np.full(shape, 0.5, "float32"))
    grad = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=shape).astype("float32"))
    optimizer.build([variable])
    if keras.backend.backend() == "jax":
        import jax

        apply = jax.jit(lambda opt, g, v: optimizer.stateless_apply(opt, g, v), donate_argnums=(0, 2))
        state = {"opt": [v.value for v in optimizer.variables], "vars": [variable.value]}

        def step() -> None:
            state["vars"], state["opt"] = apply(state["opt"], [grad], state["vars"])
            jax.block_until_ready(state["vars"])

        return step
    import torch

    def step() -> None:
        with torch.no_grad():
            optimizer.apply([grad], [variable])

    return step


def measure(names: Sequence[str], n: int, rounds: int, steps: int) -> list[dict[str, Any]]:
    """In this process's backend: per pair, the median step ms of each side and their ratio."""
    import keras

    import tfopt

    shape = (n // 1024, 1024) if n % 1024 == 0 else (n,)
    rows = []
    for name in names:
        ours, cls, theirs = PAIRS[name]
        steps_fn = {"tfopt": _step(tfopt.get(name, **ours), shape),
                    "keras": _step(getattr(keras.optimizers, cls)(**theirs), shape)}  # fmt: skip
        for fn in steps_fn.values():  # Compile and warm up.
            fn(), fn()
        times: dict[str, list[float]] = {side: [] for side in steps_fn}
        for _ in range(rounds):
            for side, fn in steps_fn.items():
                start = time.perf_counter()
                for _ in range(steps):
                    fn()
                times[side].append((time.perf_counter() - start) / steps)
        tfopt_ms, keras_ms = (1e3 * statistics.median(times[s]) for s in ("tfopt", "keras"))
        rows.append({"backend": keras.backend.backend(), "optimizer": name, "keras_class": cls,
                     "params": n, "tfopt_ms": tfopt_ms, "keras_ms": keras_ms,
                     "ratio": tfopt_ms / keras_ms, "tfopt_all_ms": [1e3 * t for t in times["tfopt"]],
                     "keras_all_ms": [1e3 * t for t in times["keras"]]})  # fmt: skip
        del steps_fn
    return rows


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| backend | optimizer | Keras | params | tfopt ms | Keras ms | tfopt/Keras |",
             "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['backend']} | {r['optimizer']} | {r['keras_class']} | {r['params'] >> 20}M "
                     f"| {r['tfopt_ms']:.2f} | {r['keras_ms']:.2f} | {r['ratio']:.3f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _child(argv: Sequence[str]) -> None:
    """``--child OUT.json NAMES N ROUNDS STEPS``: measures in this process's backend."""
    out, names, n, rounds, steps = argv
    with open(out, "w") as f:
        json.dump(measure(names.split(","), int(n), int(rounds), int(steps)), f)


def main(argv: Sequence[str]) -> None:
    _console.check_no_positional(PROG, argv)
    try:
        n = _size(_PARAMS.value)
        for backend in _BACKENDS.value:
            if backend not in BACKENDS:
                raise _console.UsageError(f"--backends takes {BACKENDS}. Received: {backend!r}.")
        for name in _PAIRS.value:
            if name not in PAIRS:
                raise _console.UsageError(f"--pairs takes {list(PAIRS)}. Received: {name!r}.")
    except _console.UsageError as e:
        _console.fail(PROG, e)
    output_dir = _flags.value_or(_OUTPUT_DIR, _DEFAULT_OUTPUT_DIR)
    os.makedirs(output_dir, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for backend in _BACKENDS.value:
        out = os.path.join(output_dir, f"{backend}.json")
        env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu",
               "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}  # fmt: skip
        subprocess.run([sys.executable, "-m", "launch.bench.backends", "--child", out,
                        ",".join(_PAIRS.value), str(n), str(_ROUNDS.value), str(_STEPS.value)],
                       env=env, check=True, timeout=_TIMEOUT_S)  # fmt: skip
        with open(out) as f:
            rows += json.load(f)
    table = markdown(rows)
    print(table)
    report = {"machine": _provenance.machine(load_average=os.getloadavg(),
                                             jax=_provenance.version("jax"),
                                             torch=_provenance.version("torch")),
              "command": " ".join([PROG, *sys.argv[1:]]), "rows": rows}  # fmt: skip
    with open(os.path.join(output_dir, "backends.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(output_dir, "backends.md"), "w") as f:
        f.write(table)


def run(argv: list[str] | None = None) -> None:
    _console.run(main, PROG, __name__, argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2:])
    else:
        run()
