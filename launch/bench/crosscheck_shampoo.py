r"""tfopt.Shampoo against the real optax-shampoo 0.0.6: ``python -m launch.bench.crosscheck_shampoo``.

Runs the same gradients (seeded, anisotropic) through ``tfopt.Shampoo`` and
``optax_shampoo.distributed_shampoo`` for ``--steps`` steps, in float32, on
four variables at once: a matrix, a 4-D conv kernel, a vector and a matrix
larger than ``block_size``, under several argument sets (the mapping table in
docs/shampoo.md), and prints, per configuration and variable, the worst
difference over all steps relative to how far the reference moved:
``max_t |w_tfopt(t) - w_optax(t)|_inf / |w_optax(t) - w(0)|_inf``.

optax-shampoo needs a JAX it predates; it runs in a separate interpreter
(``--optax_python``) with ``jax==0.4.23 jaxlib==0.4.23 optax==0.1.7
chex==0.1.85 flax==0.7.5 "numpy<2" "scipy<1.13" optax-shampoo==0.0.6``, after
two local patches of ``optax_shampoo/distributed_shampoo.py`` in that venv:

1. the initial ``error_ratio`` of ``matrix_inverse_pth_root`` from ``True`` to
   ``1.0`` (``lax.while_loop`` rejects the bool carry; ``True < 1.2`` is what
   it meant);
2. for float64: its two init functions make every statistic and
   preconditioner ``jnp.float32`` whatever the parameter's dtype
   (``dtype=jnp.float32`` in their ``jnp.eye`` calls); with ``jax_enable_x64`` the roots then come back
   float64 (it computes them in ``_MAT_INV_PTH_ROOT_DTYPE = jnp.float64``), and
   ``_select_preconditioner``'s ``lax.cond`` fails on float32 vs float64
   branches. ``dtype=param.dtype`` in those calls makes it float64-clean
   (float32 parameters are unchanged by it)::

       sed -i 's/new_error, True\])/new_error, 1.0])/' distributed_shampoo.py
       sed -i '/^ *statistics = \[$/,/preconditioners = \[jnp.eye/ s/dtype=jnp.float32)/dtype=param.dtype)/' \
           distributed_shampoo.py

Each side runs in float32 (optax without ``jax_enable_x64``, so its roots are
float32 too) and in float64 (optax with ``jax_enable_x64``). Without that
interpreter the script says so and exits 0: nothing in the project depends on
it::

    python -m launch.bench.crosscheck_shampoo \
        --optax_python=/work/venvs/optax/bin/python

This file is also the optax side (``--side=optax``), so it imports neither
TensorFlow nor JAX at the top.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

import numpy as np
from absl import flags

from launch import _console

PROG = "launch.bench.crosscheck_shampoo"
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SIDE = flags.DEFINE_enum("side", "tfopt", ["tfopt", "optax"], "Internal: which side to run.")
_OPTAX_PYTHON = flags.DEFINE_string(
    "optax_python", "/work/venvs/optax/bin/python",
    "An interpreter with optax-shampoo 0.0.6 (see the module docstring).",
)  # fmt: skip
_STEPS = flags.DEFINE_integer("crosscheck_steps", 60, "Steps per configuration.")
_OUT = flags.DEFINE_string("out", None, "Internal: where the optax side writes its npz.")
_DTYPE = flags.DEFINE_enum("crosscheck_dtype", "float32", ["float32", "float64"],
                           "Internal: the optax side's dtype.")

SHAPES = {"matrix": (6, 10), "conv": (3, 3, 4, 8), "vector": (7,), "large": (40, 20)}
LEARNING_RATE = 0.05

# tfopt.Shampoo keyword arguments; the optax ones follow from the mapping table.
CONFIGS = {
    "defaults": dict(block_size=16),
    "unmerged-adagrad-freq3": dict(
        block_size=16, best_effort_shape_interpretation=False, graft_type="adagrad",
        precondition_frequency=3, start_preconditioning_step=2, beta_2=0.99),
    "rmsprop_normalized-sum-no_nesterov": dict(
        block_size=16, best_effort_shape_interpretation=False,
        graft_type="rmsprop_normalized", beta_2=1.0, nesterov=False,
        relative_matrix_epsilon=False, matrix_epsilon=1e-4),
    "rmsprop-diagonal_fallback": dict(
        block_size=8, best_effort_shape_interpretation=False, graft_type="rmsprop",
        skip_preconditioning_dim_size_gt=30, skip_preconditioning_rank_lt=2, beta_1=0.5),
    "sqrt_n-merge16-weight_decay": dict(
        block_size=12, merge_small_dims_block_size=16, graft_type="sqrt_n",
        weight_decay=LEARNING_RATE * 0.1),
    # The ill-conditioned start of issue 22: SGD grafting, preconditioned from step 2.
    "sgd-start2": dict(
        block_size=16, best_effort_shape_interpretation=False, start_preconditioning_step=2),
    # optax's default coupled weight decay (decoupled_weight_decay=False).
    "coupled_weight_decay": dict(
        block_size=16, graft_type="rmsprop", coupled_weight_decay=0.05),
}  # fmt: skip


def _gradients(steps: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        step = {}
        for name, shape in SHAPES.items():
            # Per-axis scales make the statistics far from multiples of I.
            scale = np.ones(shape)
            for axis, d in enumerate(shape):
                s = np.geomspace(0.1, 3.0, d).reshape([d if i == axis else 1 for i in range(len(shape))])
                scale = scale * s
            step[name] = (rng.normal(size=shape) * scale).astype(np.float32)
        out.append(step)
    return out


def _initial() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()}


def _optax_kwargs(config: dict) -> dict:
    from optax_shampoo import distributed_shampoo as ds

    renamed = {"beta_1": "beta1", "beta_2": "beta2",
               "precondition_frequency": "preconditioning_compute_steps"}  # fmt: skip
    kwargs = {"learning_rate": LEARNING_RATE}
    for key, value in config.items():
        if key == "graft_type":
            value = getattr(ds.GraftingType, value.upper())
        if key == "weight_decay":  # Keras' lr * wd  ==  optax's decoupled lr * (lr * wd').
            kwargs["decoupled_weight_decay"] = True
            value = value / LEARNING_RATE
        if key == "coupled_weight_decay":  # optax's default: decoupled_weight_decay=False.
            key = "weight_decay"
        kwargs[renamed.get(key, key)] = value
    return kwargs


def _run_optax(out: str, dtype: str) -> None:
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import optax
    from optax_shampoo import distributed_shampoo as ds

    grads = _gradients(_STEPS.value)
    results = {}
    for config_name, config in CONFIGS.items():
        tx = ds.distributed_shampoo(**_optax_kwargs(config))
        params = {k: jnp.asarray(v.astype(dtype)) for k, v in _initial().items()}
        state = tx.init(params)
        update = jax.jit(tx.update)
        for t, g in enumerate(grads):
            grad = {k: jnp.asarray(v.astype(dtype)) for k, v in g.items()}
            updates, state = update(grad, state, params)
            params = optax.apply_updates(params, updates)
            for name, value in params.items():
                results[f"{config_name}/{name}/{t}"] = np.asarray(value)
    np.savez(out, **results)


def _run_tfopt(dtype: str) -> dict[str, np.ndarray]:
    import keras
    import tensorflow as tf

    import tfopt

    grads = _gradients(_STEPS.value)
    results = {}
    for config_name, config in CONFIGS.items():
        # optax-shampoo's only root: the coupled Newton iteration (tfopt's default
        # too; named so that a change of tfopt's default cannot break the parity).
        optimizer = tfopt.Shampoo(LEARNING_RATE, root_method="newton", **config)
        variables = {k: keras.Variable(v.astype(dtype), name=k) for k, v in _initial().items()}
        names = list(variables)
        optimizer.build([variables[k] for k in names])

        step = _step_function(optimizer, [variables[k] for k in names])
        for t, g in enumerate(grads):
            step([tf.constant(g[k].astype(dtype)) for k in names])
            for name in names:
                results[f"{config_name}/{name}/{t}"] = variables[name].numpy().astype(np.float64)
    return results


def _step_function(optimizer, variables):
    import tensorflow as tf

    @tf.function
    def step(grads):
        optimizer.apply(grads, variables)

    return step


def _worst(ours: dict, reference: dict, config_name: str, name: str) -> float:
    initial = _initial()[name]
    worst = 0.0
    for t in range(_STEPS.value):
        key = f"{config_name}/{name}/{t}"
        ref = reference[key].astype(np.float64)
        diff = np.abs(ours[key].astype(np.float64) - ref).max()
        worst = max(worst, diff / np.abs(ref - initial).max())
    return worst


def _table(float32: dict, float64: dict, optax_results: dict[str, dict]) -> list[dict]:
    rows = []
    for config_name in CONFIGS:
        for name in SHAPES:
            rows.append({
                "config": config_name, "variable": name, "shape": SHAPES[name],
                "float64": _worst(float64, optax_results["float64"], config_name, name),
                "float32": _worst(float32, optax_results["float32"], config_name, name),
                "optax32_vs_optax64": _worst(optax_results["float32"], optax_results["float64"],
                                             config_name, name),
                "tfopt32_vs_tfopt64": _worst(float32, float64, config_name, name),
            })  # fmt: skip
    return rows


def main(argv: list[str]) -> None:
    _console.check_no_positional(PROG, argv)
    if _SIDE.value == "optax":
        _run_optax(_OUT.value, _DTYPE.value)
        return
    python = _OPTAX_PYTHON.value
    probe = [python, "-c", "import optax_shampoo.distributed_shampoo"]
    if not os.path.exists(python) or subprocess.run(probe, capture_output=True).returncode:
        print(f"SKIPPED: no optax-shampoo interpreter at {python} (see this module's docstring).")
        return
    optax_results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "float64"):
            out = os.path.join(tmp, f"optax_{dtype}.npz")
            # As a module of this package, from the folder that holds `launch`:
            # the optax interpreter has absl and NumPy, not this project installed.
            subprocess.run([python, "-m", PROG, "--side=optax", f"--out={out}",
                            f"--crosscheck_steps={_STEPS.value}", f"--crosscheck_dtype={dtype}"],
                           check=True, timeout=1800, cwd=_PACKAGE_ROOT)  # fmt: skip
            with np.load(out) as data:
                optax_results[dtype] = dict(data)
    rows = _table(_run_tfopt("float32"), _run_tfopt("float64"), optax_results)
    print(f"{_STEPS.value} steps. Each column: max_t |w_a(t) - w_b(t)|_inf / |w_b(t) - w(0)|_inf. "
          "t64-o64: tfopt vs optax, both float64 (the parity); t32-o32: both float32; "
          "o32-o64 and t32-t64: each one's float32 run against its own float64 run")
    print(f"{'config':36s} {'variable':8s} {'shape':13s} {'t64-o64':>9s} {'t32-o32':>9s} "
          f"{'o32-o64':>9s} {'t32-t64':>9s}")  # fmt: skip
    for r in rows:
        print(f"{r['config']:36s} {r['variable']:8s} {str(r['shape']):13s} "
              f"{r['float64']:9.2e} {r['float32']:9.2e} {r['optax32_vs_optax64']:9.2e} "
              f"{r['tfopt32_vs_tfopt64']:9.2e}")  # fmt: skip
    print(json.dumps({"worst_float64": max(r["float64"] for r in rows),
                      "worst_float32": max(r["float32"] for r in rows)}))


def run(argv: list[str] | None = None) -> None:
    """Entry point, as for every launch module."""
    _console.run(main, PROG, __name__, argv)


if __name__ == "__main__":
    run()
