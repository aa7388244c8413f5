"""The checks of `launch.device_check`, run inside a `launch.device_check._worker` process.

Each check takes its `Check` (name, layout, time box) and the `Context` and
returns ``{"status", "reason", "metrics"}``. It fails by returning FAILED with
the reason, or by raising (the worker reports the exception as FAILED). Every
number it returns is measured here, in this run, on the device it names.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import subprocess
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

import launch.device_check._catalog as catalog
import launch.device_check._kernels as _kernels
import launch.device_check._second_order as _second_order
import strategies
from launch import _job, _models

# Quick profile: the CPU stand-in, a few epochs; full: the default job.
_JOB_EPOCHS = {catalog.FULL: 15, catalog.QUICK: 1}
_JOB_MIN_ACCURACY = {catalog.FULL: 0.95, catalog.QUICK: 0.5}
# The mixed-precision speed model: a CPU has no fast float16 convolutions, so
# the quick profile times an MLP there.
_MIXED_MODEL = {catalog.FULL: "resnet_small", catalog.QUICK: "mlp"}
# (image shape, global batch, warm-up steps, timed steps) per model and profile.
_SPEED = {
    ("cnn", catalog.FULL): ((8, 8, 1), 32, 20, 300),
    ("cnn", catalog.QUICK): ((8, 8, 1), 32, 2, 10),
    ("resnet_small", catalog.FULL): ((32, 32, 3), 256, 10, 100),
    ("resnet_small", catalog.QUICK): ((8, 8, 3), 8, 1, 3),
    ("mlp", catalog.QUICK): ((8, 8, 1), 32, 1, 5),
}
# float16's largest finite value is 65504: this input overflows once cast.
_OVERFLOW_INPUT = 1e5


@dataclasses.dataclass
class Context:
    """What every check of one worker shares."""

    profile: str
    workdir: str
    data_dir: str | None
    layout: dict[str, Any]

    @functools.cached_property
    def gpus(self) -> list[Any]:
        return tf.config.list_physical_devices("GPU")

    @functools.cached_property
    def device(self) -> str:
        """The device the checks run on, in words."""
        if self.gpus:
            details = tf.config.experimental.get_device_details(self.gpus[0])
            cc = details.get("compute_capability")
            suffix = f", compute capability {cc[0]}.{cc[1]}" if cc else ""
            count = f"{len(self.gpus)}x " if len(self.gpus) > 1 else ""
            return f"GPU: {count}{details.get('device_name', self.gpus[0].name)}{suffix}"
        return f"CPU: {platform.machine()}, {os.cpu_count()} cores (no GPU)"

    def strategy(self, one_device: bool = False) -> tf.distribute.Strategy:
        """On the ONE layout, ``auto`` (TF's default strategy with one GPU, ``mirrored``
        with several), or TF's default strategy, one device, if ``one_device``; on
        TWO, ``mirrored`` over the two logical devices."""
        if self.layout["layout"] == catalog.ONE:
            return tf.distribute.get_strategy() if one_device else strategies.build("auto")
        # On a split GPU `mirrored` takes the two logical GPUs; on the CPU,
        # virtual_cpus=2 names the two logical CPUs the worker already made.
        return strategies.build("mirrored", virtual_cpus=0 if self.gpus else 2)


def _nvidia_smi() -> list[str] | None:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return [line for line in out.stdout.splitlines() if line.startswith("GPU")]


def _tpu_evidence() -> str | None:
    """Why auto-detection would pick a TPU here, or None (it reads local evidence only)."""
    try:
        name, reason = strategies.detect(strategies.StrategyConfig(), os.environ)
    except strategies.StrategyError:  # A malformed cluster description: not about a TPU.
        return None
    return reason if name == "tpu" else None


def accelerators(check: catalog.Check, context: Context) -> dict[str, Any]:
    """PASS with a GPU; MISSING without one; FAILED when nvidia-smi sees one TF does not."""
    build = tf.sysconfig.get_build_info()
    smi = _nvidia_smi()
    metrics = {
        "tensorflow_gpus": [
            {"name": g.name, **tf.config.experimental.get_device_details(g)} for g in context.gpus
        ],
        "is_cuda_build": build.get("is_cuda_build"),
        "cuda_version": build.get("cuda_version"),
        "cudnn_version": build.get("cudnn_version"),
        "nvidia_smi": smi,
        "tpu_evidence": _tpu_evidence(),
    }
    if context.gpus:
        return {"status": catalog.PASS, "reason": f"TensorFlow sees {len(context.gpus)} GPU(s): "
                f"{context.device}", "metrics": metrics}  # fmt: skip
    if smi:
        why = ("this TensorFlow is not a CUDA build" if not build.get("is_cuda_build")
               else "TensorFlow could not load CUDA (pip install 'tensorflow[and-cuda]>=2.20,<2.22', "
               "i.e. the project's [gpu] extra)")  # fmt: skip
        return {"status": catalog.FAILED, "metrics": metrics,
                "reason": f"nvidia-smi lists {len(smi)} GPU(s) but TensorFlow sees none: {why}"}
    reason = "TensorFlow sees no GPU and nvidia-smi finds none"
    if metrics["tpu_evidence"]:
        reason += f"; a TPU may be attached ({metrics['tpu_evidence']}), which this check does not cover"
    return {"status": catalog.MISSING, "reason": reason, "metrics": metrics}


def _all_reduce(strategy: tf.distribute.Strategy) -> str:
    if strategy.num_replicas_in_sync == 1:
        return "none (one replica)"
    ext = strategy.extended
    ops = getattr(ext, "_cross_device_ops", None) or getattr(ext, "_inferred_cross_device_ops", None)
    return type(ops).__name__ if ops is not None else "unknown"


def job(check: catalog.Check, context: Context) -> dict[str, Any]:
    """The default `launch.train` job (digits CNN, Adam, cosine) under this layout's strategy."""
    strategy = context.strategy()
    summary = _job.run(
        _job.Job(epochs=_JOB_EPOCHS[context.profile], data_dir=context.data_dir,
                 model_dir=os.path.join(context.workdir, check.name)),
        strategy, verbose=0,
    )  # fmt: skip
    accuracy = summary["eval"].get("accuracy")
    metrics = {
        "strategy": summary["strategy"],
        "replicas": summary["num_replicas"],
        "all_reduce": _all_reduce(strategy),
        "epochs": summary["epochs"],
        "eval_accuracy": accuracy,
        "steps_per_second": summary["steps"] / summary["train_seconds"],
        "examples_per_second": summary["examples_per_second"],
    }
    floor = _JOB_MIN_ACCURACY[context.profile]
    problems = []
    if accuracy is None or not accuracy >= floor:
        problems.append(f"eval accuracy {accuracy} < {floor} after {metrics['epochs']} epochs")
    if check.layout == catalog.TWO and metrics["replicas"] != 2:
        problems.append(f"{metrics['replicas']} replica(s), expected 2")
    return {"status": catalog.FAILED if problems else catalog.PASS, "metrics": metrics,
            "reason": "; ".join(problems) or f"accuracy {accuracy:.3f}, "
            f"{metrics['steps_per_second']:.0f} steps/s, all-reduce {metrics['all_reduce']}"}  # fmt: skip


def _synthetic(shape: tuple[int, ...], batch: int) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch, *shape), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(batch,))
    return tf.data.Dataset.from_tensors((images, labels)).repeat()


def steps_per_second(model_name: str, profile: str, strategy: tf.distribute.Strategy,
                     policy: str = "float32", jit_compile: bool = False) -> float:  # fmt: skip
    """Training steps per second of ``model_name`` on synthetic images (Keras ``fit``)."""
    shape, batch, warmup, steps = _SPEED[(model_name, profile)]
    data = _synthetic(shape, batch)
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = _models.build_model(model_name, shape, 10)
            model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          jit_compile=jit_compile)  # fmt: skip
        model.fit(data, epochs=1, steps_per_epoch=warmup, verbose=0)  # Traces, compiles.
        start = time.perf_counter()
        history = model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
        seconds = time.perf_counter() - start  # fit ends by fetching its logs: a device sync.
    finally:
        keras.mixed_precision.set_global_policy("float32")
    loss = history.history["loss"][-1]
    if not np.isfinite(loss):
        raise FloatingPointError(f"{model_name} ({policy}, jit_compile={jit_compile}): loss {loss}")
    return steps / seconds


def _copies(variable: Any) -> list[np.ndarray]:
    """Every replica's copy of a (possibly mirrored) variable."""
    value = variable.value if isinstance(variable, keras.Variable) else variable
    return [np.array(c.numpy()) for c in getattr(value, "values", [value])]


def _fit_linear(strategy: tf.distribute.Strategy, x: np.ndarray, y: np.ndarray, batch: int) -> Any:
    """A Dense(1) model under mixed_float16, trained by `strategies.fit` (Keras wraps
    its optimizer in a LossScaleOptimizer)."""
    keras.mixed_precision.set_global_policy("mixed_float16")

    def model_fn() -> keras.Model:
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        return model

    try:
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)
        return strategies.fit(model_fn, data, strategy=strategy, epochs=1, verbose=0).model
    finally:
        keras.mixed_precision.set_global_policy("float32")


def overflow_skipped(strategy: tf.distribute.Strategy) -> list[str]:
    """Problems seen when one fp16 overflow sits on the last replica only ([] if none).

    Two global batches: a good one, then one whose last example (the last
    replica's half) overflows float16. Every replica must skip that step: its
    weights stay finite, equal across replicas and equal to a run of the good
    batch alone (which must itself take its step), its step count stays 1 and
    its loss scale halves.
    """
    replicas, per_replica = strategy.num_replicas_in_sync, 4
    batch = replicas * per_replica
    rng = np.random.default_rng(0)
    target = np.array([[1.0], [-2.0], [0.5]], "float32")
    # Small inputs: at Keras' initial loss scale (32768) a batch of N(0, 1)
    # inputs already overflows float16 in this model's backward pass, on one
    # device as on two, so the "good" step would be skipped everywhere.
    good, bad = ((0.1 * rng.normal(size=(batch, 3))).astype("float32") for _ in range(2))
    bad[-1, 0] = _OVERFLOW_INPUT
    x = np.concatenate([good, bad])
    model = _fit_linear(strategy, x, x @ target, batch)
    reference = _fit_linear(strategy, good, good @ target, batch)
    optimizer = model.optimizer
    problems = []
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return [f"compile under mixed_float16 gave {type(optimizer).__name__}, not LossScaleOptimizer"]
    # The reference must really step, or "unchanged like the reference" proves nothing.
    reference_steps = [int(c) for c in _copies(reference.optimizer.iterations)]
    if any(s != 1 for s in reference_steps):
        problems.append(f"the run of the good batch alone took {reference_steps} steps per "
                        "replica, expected 1 (a finite step was skipped)")  # fmt: skip
    for variable, expected in zip(model.weights, reference.weights, strict=True):
        copies, want = _copies(variable), _copies(expected)[0]
        if not all(np.all(np.isfinite(c)) for c in copies):
            problems.append(f"{variable.path} is non-finite on replica(s) "
                            f"{[i for i, c in enumerate(copies) if not np.all(np.isfinite(c))]}")  # fmt: skip
        elif not all(np.allclose(c, want, rtol=1e-6, atol=1e-6) for c in copies):
            problems.append(f"{variable.path} moved on the overflowing step (max |dw| "
                            f"{max(float(np.max(np.abs(c - want))) for c in copies):.3g})")  # fmt: skip
    steps = [int(c) for c in _copies(optimizer.iterations)]
    if any(s != 1 for s in steps):
        problems.append(f"step counts per replica {steps}, expected 1 (the overflow skipped)")
    scales = [float(c) for c in _copies(optimizer.dynamic_scale)]
    if any(s != optimizer.initial_scale / 2 for s in scales):
        problems.append(f"loss scale per replica {scales}, expected {optimizer.initial_scale / 2}")
    return problems


def mixed_precision(check: catalog.Check, context: Context) -> dict[str, Any]:
    """mixed_float16 vs float32 steps/s, and an fp16 overflow skipped on every replica."""
    strategy = context.strategy(one_device=True)
    model = _MIXED_MODEL[context.profile]
    fp32 = steps_per_second(model, context.profile, strategy, "float32")
    fp16 = steps_per_second(model, context.profile, strategy, "mixed_float16")
    problems = overflow_skipped(strategy)
    metrics = {"model": model, "replicas": strategy.num_replicas_in_sync,
               "float32_steps_per_second": fp32,
               "mixed_float16_steps_per_second": fp16, "speedup": fp16 / fp32,
               "overflow_skipped_everywhere": not problems, "overflow_problems": problems}  # fmt: skip
    if problems:
        reason = "fp16 overflow on the last replica: " + "; ".join(problems)
    else:
        reason = (f"mixed_float16 {fp16 / fp32:.2f}x float32 steps/s; the overflow was skipped on "
                  f"all {strategy.num_replicas_in_sync} replica(s)")  # fmt: skip
    return {"status": catalog.FAILED if problems else catalog.PASS, "reason": reason,
            "metrics": metrics}  # fmt: skip


def _xla(model_name: str) -> Callable[[catalog.Check, Context], dict[str, Any]]:
    def check_fn(check: catalog.Check, context: Context) -> dict[str, Any]:
        # One device, TF's default strategy: under any tf.distribute strategy
        # Keras resolves jit_compile to False.
        strategy = tf.distribute.get_strategy()
        off = steps_per_second(model_name, context.profile, strategy, jit_compile=False)
        on = steps_per_second(model_name, context.profile, strategy, jit_compile=True)
        metrics = {"model": model_name, "step_ms_xla_off": 1e3 / off, "step_ms_xla_on": 1e3 / on,
                   "xla_on_over_off": off / on}  # fmt: skip
        return {"status": catalog.PASS, "metrics": metrics, "reason":
                f"step time with XLA is {off / on:.2f}x that without"}  # fmt: skip

    return check_fn


CHECKS: dict[str, Callable[[catalog.Check, Context], dict[str, Any]]] = {
    "accelerators": accelerators,
    "fused_kernels": _kernels.fused_kernels,
    "job": job,
    "mixed_precision": mixed_precision,
    "second_order": _second_order.second_order,
    "xla_cnn": _xla("cnn"),
    "xla_convnet": _xla("resnet_small"),
}
