"""Trains every tfopt optimizer a few steps on the Keras backend it is started under.

Run by test_backends.py, once per backend, in a fresh process (a Keras
backend is chosen at import)::

    KERAS_BACKEND=jax python -m tests.tfopt.backend_run OUT.npz [--saved DIR] [NAME ...]

Every run starts from the same weights and sees the same batches, so the
backends' final weights can be compared with one another. For each optimizer
name (``tfopt.available()``, then every unregistered tfopt wrapper and Keras'
``LossScaleOptimizer``, each around tfopt's Adam) the file holds
``{name}/start/{i}`` and ``{name}/end/{i}`` per model weight, or
``{name}/error`` with the exception's text when training raised, and
``tensorflow_at_import``: whether importing Keras and tfopt loaded TensorFlow.
On JAX, ``{name}/stateless/{i}`` (or ``{name}/stateless_error``) holds the
weights after the same steps in a custom jitted loop that calls
``optimizer.stateless_apply``, as a JAX user's own training loop does. With
``--saved DIR``, each run saves ``DIR/{backend}/{name}.keras`` halfway; off
TensorFlow, ``{name}/resumed/{i}`` (or ``{name}/resumed_error``) holds the
weights after loading TensorFlow's file on this backend and training the
second half. :func:`resume` does the same the other way, on TensorFlow.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

import keras
import numpy as np

import tfopt

# Checked by test_backends.py: on JAX and PyTorch, importing tfopt (and Keras)
# leaves TensorFlow unimported.
TENSORFLOW_AT_IMPORT = "tensorflow" in sys.modules

from tests.tfopt import cases  # noqa: E402 -- after the check above.
from tfopt._wrapper import InnerOptimizerMixin  # noqa: E402

STEPS = 8
BATCH = 8
NAN_BATCH = "skip_nonfinite_nan_batch"
HALF = STEPS // 2 * BATCH  # The .keras file is saved after this many examples.


def wrappers() -> dict[str, type]:
    """tfopt's public classes that wrap another optimizer and have no registered name."""
    registered = {tfopt.get_class(name) for name in tfopt.available()}
    return {
        name: cls for name in tfopt.__all__
        if isinstance(cls := getattr(tfopt, name), type) and issubclass(cls, InnerOptimizerMixin)
        and cls not in registered
    }  # fmt: skip


def _optimizers() -> dict[str, Callable[[], keras.optimizers.Optimizer]]:
    """Every registered name; every unregistered tfopt wrapper, and Keras'
    ``LossScaleOptimizer``, around tfopt's Adam."""
    built = {name: lambda name=name: cases.make(name) for name in tfopt.available()}
    for name, cls in wrappers().items():
        built[f"{name}(adam)"] = lambda cls=cls: cls(cases.make("adam"))
    built["LossScaleOptimizer(adam)"] = lambda: keras.optimizers.LossScaleOptimizer(cases.make("adam"))
    # SkipNonFinite on data whose 4th batch holds a NaN: that step must be skipped.
    built[NAN_BATCH] = lambda: tfopt.SkipNonFinite(cases.make("adam"))
    return built


def names() -> list[str]:
    """The optimizer names a run trains: ``tfopt.available()`` and the wrapper."""
    return list(_optimizers())


def _data(name: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * BATCH, 3)).astype("float32")
    y = np.tanh(x @ rng.normal(size=(3, 1))).astype("float32")
    if name == NAN_BATCH:
        y[3 * BATCH + 1] = np.nan
    return x, y


def _model() -> keras.Model:
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    )
    rng = np.random.default_rng(1)
    # Nonzero biases: a zero weight has a zero trust ratio norm in LARS/LAMB.
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


def _stateless_jax_loop(
    optimizer: keras.optimizers.Optimizer, x: np.ndarray, y: np.ndarray
) -> list[np.ndarray]:
    """The same training as ``fit``, in a custom jitted JAX loop: ``stateless_apply``."""
    import jax

    model = _model()
    loss_fn = keras.losses.MeanSquaredError()
    optimizer.build(model.trainable_variables)

    def loss_and_updates(trainable, non_trainable, optimizer_variables, x, y):
        y_pred, non_trainable = model.stateless_call(trainable, non_trainable, x)
        # As Keras' JAX trainer: a LossScaleOptimizer scales the loss by its
        # current scale, read from the state passed in.
        mapping = list(zip(optimizer.variables, optimizer_variables, strict=True))
        with keras.StatelessScope(state_mapping=mapping):
            loss = optimizer.scale_loss(loss_fn(y, y_pred))
        return loss, non_trainable

    grad_fn = jax.value_and_grad(loss_and_updates, has_aux=True)

    @jax.jit
    def train_step(state, batch):
        trainable, non_trainable, optimizer_variables = state
        (_, non_trainable), grads = grad_fn(trainable, non_trainable, optimizer_variables, *batch)
        trainable, optimizer_variables = optimizer.stateless_apply(
            optimizer_variables, grads, trainable
        )
        return trainable, non_trainable, optimizer_variables

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    for step in range(STEPS):
        batch = slice(step * BATCH, (step + 1) * BATCH)
        state = train_step(state, (x[batch], y[batch]))
    return [np.asarray(w) for w in state[0]]


def resume(saved: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Loads each ``{saved}/{name}.keras`` (saved halfway, on any backend) and
    trains the second half here: ``{name}/resumed/{i}`` or ``{name}/resumed_error``."""
    results: dict[str, np.ndarray] = {}
    for name in names or list(_optimizers()):
        x, y = _data(name)
        try:
            model = keras.saving.load_model(os.path.join(saved, f"{name}.keras"))
            model.fit(x[HALF:], y[HALF:], batch_size=BATCH, shuffle=False, verbose=0)
            for i, w in enumerate(model.get_weights()):
                results[f"{name}/resumed/{i}"] = np.asarray(w)
        except Exception:
            results[f"{name}/resumed_error"] = np.array(traceback.format_exc(limit=-6))
    return results


def main(out: str, names: list[str], saved: str | None = None) -> None:
    """Trains each optimizer; writes the ``.keras`` halfway files to
    ``{saved}/{backend}/``, and off TensorFlow also resumes from the files
    TensorFlow wrote to ``{saved}/tensorflow/``."""
    backend = keras.backend.backend()
    if saved:
        os.makedirs(os.path.join(saved, backend), exist_ok=True)
    results: dict[str, np.ndarray] = {
        "backend": np.array(keras.backend.backend()),
        "tensorflow_at_import": np.array(TENSORFLOW_AT_IMPORT),
    }
    for name, make in _optimizers().items():
        if names and name not in names:
            continue
        x, y = _data(name)
        try:
            model = _model()
            start = model.get_weights()
            model.compile(optimizer=make(), loss="mse")
            # In two halves, with a .keras file in between.
            model.fit(x[:HALF], y[:HALF], batch_size=BATCH, shuffle=False, verbose=0)
            if saved:
                model.save(os.path.join(saved, backend, f"{name}.keras"))
            model.fit(x[HALF:], y[HALF:], batch_size=BATCH, shuffle=False, verbose=0)
            for i, (w0, w1) in enumerate(zip(start, model.get_weights(), strict=True)):
                results[f"{name}/start/{i}"] = w0
                results[f"{name}/end/{i}"] = np.asarray(w1)
            if isinstance(model.optimizer, tfopt.SkipNonFinite):
                skipped = keras.ops.convert_to_numpy(model.optimizer.skipped_steps)
                results[f"{name}/skipped_steps"] = np.asarray(skipped)
        except Exception:  # Reported per optimizer, in the file.
            results[f"{name}/error"] = np.array(traceback.format_exc(limit=-6))
        if saved and backend != "tensorflow":  # TensorFlow's halfway file, continued here.
            results.update(resume(os.path.join(saved, "tensorflow"), [name]))
        if backend == "jax":
            try:
                for i, w in enumerate(_stateless_jax_loop(make(), x, y)):
                    results[f"{name}/stateless/{i}"] = w
            except Exception:
                results[f"{name}/stateless_error"] = np.array(traceback.format_exc(limit=-6))
    np.savez(out, **results)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out, *rest = sys.argv[1:]
    saved = None
    if rest[:1] == ["--saved"]:
        saved, rest = rest[1], rest[2:]
    main(out, rest, saved)
