"""A run killed mid-epoch and resumed is the same run: bitwise, on OneDevice and Mirrored.

One training setup exercises every piece of state the issue names:
shuffling that differs per epoch (``launch._input.epoch_stream``), dropout
(a Keras ``SeedGenerator``), batch-norm moving statistics, a cosine
learning-rate schedule, EMA, gradient accumulation (the crash lands
mid-cycle), ``SkipNonFinite`` (one label is inf, so some steps are skipped
and counted) and metrics. The run crashes at a step after its newest
mid-epoch checkpoint, as a SIGKILL would leave it (the process-level SIGKILL
is tests/launch/test_fault_tolerance.py); a new ``fit`` resumes from that
checkpoint, and everything is compared with an uninterrupted run: weights,
every model variable (random state and moving statistics included), every
optimizer variable, ``iterations``, the per-epoch metrics history and
``summary.json`` (less its timings).

On CPU the ops are deterministic, so equality is exact (``np.array_equal``).
The one exception: under Mirrored, an epoch's metric values of the resumed
epoch are summed in another order (the saved sum is split over the replicas
on restore), so they agree to 1e-6, not bitwise.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import strategies
import tfopt
from launch import _input
from strategies.compat import _keras_compat

BATCH, EXAMPLES, EPOCHS = 8, 40, 3
STEPS = EXAMPLES // BATCH  # 5 per epoch, 15 in all
EVERY = 7  # checkpoints at steps 7 and 14, and at epoch ends: 5, 10
CHECKPOINTED = 7


@keras.saving.register_keras_serializable(package="test_resume")
class RootOfAbs(keras.layers.Layer):
    """``x + sqrt(|s * x0|)``: finite, but its gradient in ``s`` is NaN where ``x0 == 0``."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(), initializer="ones", name="scale")

    def call(self, x):
        return x + keras.ops.sqrt(keras.ops.abs(self.scale * x[:, :1]))


def _stream() -> tf.data.Dataset:
    # The shuffle seeds combine with TF's global seed: set it first, as launch does.
    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(EXAMPLES, 6)).astype(np.float32)
    y = (x[:, :1] * 2 - x[:, 1:2]).astype(np.float32)
    x[7, 0] = 0.0  # A NaN gradient, with a finite loss: SkipNonFinite skips that step, once per epoch.
    return _input.epoch_stream(tf.data.Dataset.from_tensor_slices((x, y)), EXAMPLES, BATCH, seed=5,
                                    drop_remainder=False)


def _model_fn() -> keras.Model:
    keras.utils.set_random_seed(11)
    model = keras.Sequential([
        keras.Input((6,)), RootOfAbs(), keras.layers.Dense(16, activation="relu"), keras.layers.BatchNormalization(),
        keras.layers.Dropout(0.3), keras.layers.Dense(1),
    ])  # fmt: skip
    schedule = keras.optimizers.schedules.CosineDecay(0.05, decay_steps=EPOCHS * STEPS)
    inner = keras.optimizers.Adam(schedule, use_ema=True, ema_momentum=0.9, gradient_accumulation_steps=2)
    model.compile(tfopt.SkipNonFinite(inner), "mse", metrics=["mae"])
    return model


class _Crash(keras.callbacks.Callback):
    """Raises at the end of global step ``at``, as if the process died there."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.steps = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == CHECKPOINTED:  # What the newest checkpoint will hold.
            self.accumulated = [float(np.abs(v.numpy()).sum()) for v in self.model.optimizer.variables
                                if "gradient_accumulator" in v.name]
        if self.steps == self.at:
            raise RuntimeError("simulated crash")


def _fit(strategy_fn, model_dir, callbacks=(), model_fn=_model_fn):
    return strategies.fit(model_fn, _stream(), strategy=strategy_fn(), epochs=EPOCHS, steps_per_epoch=STEPS,
                          model_dir=model_dir, checkpoint_every_steps=EVERY, verbose=0,
                          callbacks=[*([tfopt.SkippedSteps()] if model_fn is _model_fn else []),
                                     *callbacks])  # fmt: skip


STRATEGIES = {
    "one_device": lambda: tf.distribute.OneDeviceStrategy("CPU:0"),
    "mirrored": lambda: _keras_compat.mirrored_strategy(["CPU:0", "CPU:1"]),
}


def _variables(model: keras.Model) -> dict[str, np.ndarray]:
    # By position: paths hold auto-generated names ("dense_3") that differ between the two models.
    found = {f"model {i}": np.asarray(v.numpy()) for i, v in enumerate(model.variables)}
    found |= {f"optimizer {i}": np.asarray(v.numpy()) for i, v in enumerate(model.optimizer.variables)}
    return found


@pytest.mark.slow  # 25 s (OneDevice) and 50 s (Mirrored) on 2 cores: 3 runs of 15 steps each.
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_resumed_run_is_the_uninterrupted_run(tmp_path, strategy):
    reference = _fit(STRATEGIES[strategy], tmp_path / "reference")
    # Crash after global step 8: the newest checkpoint is step 7 (epoch 1, step 2),
    # taken with gradients accumulated but not yet applied (checked below); the
    # resumed run finishes epoch 1 in one fit call, then epoch 2 in another.
    crash = _Crash(at=8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(STRATEGIES[strategy], tmp_path / "run", callbacks=[crash])
    assert crash.accumulated and max(crash.accumulated) > 0, "the checkpoint is not mid accumulation cycle"
    resumed = _fit(STRATEGIES[strategy], tmp_path / "run")
    assert resumed.epoch == list(range(EPOCHS))

    want, got = _variables(reference.model), _variables(resumed.model)
    assert sorted(want) == sorted(got)
    names = [v.name for v in reference.model.variables + reference.model.optimizer.variables]
    different = [k for k in want if not np.array_equal(want[k], got[k])]
    assert different == [], ({k: float(np.max(np.abs(want[k] - got[k]))) for k in different}, names)
    assert int(resumed.model.optimizer.iterations.numpy()) == int(reference.model.optimizer.iterations.numpy())
    assert int(resumed.model.optimizer.skipped_steps.numpy()) > 0  # The inf label was met and skipped.
    # Metrics history, every epoch (the resumed one included), and summary.json.
    assert reference.history.keys() == resumed.history.keys()
    for key, values in reference.history.items():
        if key in ("steps_per_second", "examples_per_second"):
            continue  # Timings.
        assert np.all(np.isfinite(values)), (key, values)
        np.testing.assert_allclose(resumed.history[key], values, rtol=1e-6, atol=0, err_msg=key)
    ref_summary = json.loads((tmp_path / "reference" / "summary.json").read_text())
    run_summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for timing in ("train_seconds", "examples_per_second", "steps_per_second", "epochs_run"):
        ref_summary.pop(timing), run_summary.pop(timing)
    assert run_summary.keys() == ref_summary.keys()
    for section in ("train", "validation"):
        for key, value in ref_summary[section].items():
            assert run_summary[section][key] == pytest.approx(value, rel=1e-6), (section, key)
    # Less auto-generated names ("skip_non_finite_2"): they count objects made in this process.
    rest = [_unnamed({k: v for k, v in summary.items() if k not in ("train", "validation")})
            for summary in (ref_summary, run_summary)]
    assert rest[0] == rest[1]


def _unnamed(value):
    if isinstance(value, dict):
        return {k: _unnamed(v) for k, v in value.items() if k != "name"}
    if isinstance(value, list):
        return [_unnamed(v) for v in value]
    return value


def _shampoo_model_fn() -> keras.Model:
    keras.utils.set_random_seed(11)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(1)])  # fmt: skip
    # Default roots (eigh); refreshed at steps 0, 3, 6, 9...: the checkpoint at
    # step 7 holds roots from step 6, which steps 7 and 8 use; under Mirrored
    # the roots are split over the replicas.
    model.compile(tfopt.Shampoo(0.01, block_size=8, start_preconditioning_step=1,
                                precondition_frequency=3), "mse")  # fmt: skip
    return model


@pytest.mark.slow  # 3 runs of 15 steps, each tracing Shampoo's step: 11-16 s per strategy on 2 cores.
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_resumed_shampoo_run_is_the_uninterrupted_run(tmp_path, strategy):
    """Shampoo's statistics, roots and momenta restore: a resumed run ends bitwise equal."""
    reference = _fit(STRATEGIES[strategy], tmp_path / "reference", model_fn=_shampoo_model_fn)
    assert reference.model.optimizer.root_method == "eigh"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(STRATEGIES[strategy], tmp_path / "run", callbacks=[_Crash(at=8)], model_fn=_shampoo_model_fn)
    resumed = _fit(STRATEGIES[strategy], tmp_path / "run", model_fn=_shampoo_model_fn)
    want, got = _variables(reference.model), _variables(resumed.model)
    assert sorted(want) == sorted(got)
    assert any("root" in v.name for v in resumed.model.optimizer.variables)
    different = [k for k in want if not np.array_equal(want[k], got[k])]
    assert different == [], {k: float(np.max(np.abs(want[k] - got[k]))) for k in different}
    assert int(resumed.model.optimizer.iterations.numpy()) == EPOCHS * STEPS
