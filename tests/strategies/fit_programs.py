"""Programs that the tasks of test_fit_cluster.py's local clusters run.

    python -m tests.strategies.fit_programs MODE OUT_DIR [--hang]

Every task reads its role from ``TF_CONFIG`` (set by launch.local_cluster) and
writes ``OUT_DIR/<mode>-<task_type><index>.json`` (and ``.npz`` weights). The
model, data and optimizer variants live here so that the test computes its
single-device references from the very same definitions.
"""

from __future__ import annotations

import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

GLOBAL_BATCH = 8
STEPS = 4  # global batches per epoch
EPOCHS = 2

VARIANTS = {
    "sgd": lambda: keras.optimizers.SGD(0.1),
    "sgd-global_clipnorm": lambda: keras.optimizers.SGD(0.1, global_clipnorm=0.2),
    "momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "momentum-global_clipnorm": lambda: keras.optimizers.SGD(0.1, momentum=0.9,
                                                             global_clipnorm=0.2),
    "adam": lambda: keras.optimizers.Adam(0.05),
    "adam-global_clipnorm": lambda: keras.optimizers.Adam(0.05, global_clipnorm=0.2),
    "adam-accumulate2": lambda: keras.optimizers.Adam(0.05, gradient_accumulation_steps=2),
}


def model_fn(variant: str) -> keras.Model:
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(1)])
    model.compile(optimizer=VARIANTS[variant](), loss="mse", metrics=["mae"])
    return model


def dataset(batches: int = STEPS) -> tf.data.Dataset:
    """Global batches; DATA sharding gives each of 2 workers one half of every batch."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH * batches, 3)).astype(np.float32)
    y = np.sin(x.sum(axis=1, keepdims=True)).astype(np.float32)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH).with_options(options)


def linear_dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    """y = 3x + 1 with a little noise: learnable to a loss far below 0.05."""
    rng = np.random.default_rng(context.input_pipeline_id)
    x = rng.uniform(-1, 1, size=(256, 1)).astype(np.float32)
    y = (3 * x + 1 + rng.normal(scale=0.05, size=x.shape)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(256, seed=1).batch(16).repeat()


def _task() -> tuple[str, int]:
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    return task["type"], int(task["index"])


def _write(out_dir: str, mode: str, payload: dict) -> None:
    task_type, index = _task()
    path = os.path.join(out_dir, f"{mode}-{task_type}{index}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f)
    os.replace(path + ".tmp", path)


def equivalence(out_dir: str) -> None:
    import strategies

    strategy = strategies.build("multi_worker_mirrored")
    task_type, index = _task()
    for variant in VARIANTS:
        history = strategies.fit(lambda v=variant: model_fn(v), dataset(), strategy=strategy,
                                 epochs=EPOCHS, verbose=0)
        np.savez(os.path.join(out_dir, f"{variant}-{task_type}{index}.npz"),
                 *history.model.get_weights())
    _write(out_dir, "equivalence", {"replicas": strategy.num_replicas_in_sync})


class _Hang(keras.callbacks.Callback):
    """Stands for a worker that is killed later: it hangs at one point of the run.

    ``"--hang"``: when epoch 1 begins, so epoch 0 is done and saved.
    ``"--hang_at_last_step"``: when epoch 0 ends, before fit's epoch-end checkpoint
    (user callbacks run first). A checkpoint due on that epoch's last step
    (``checkpoint_every_steps`` divides it) once recorded "epoch 0, step 4"
    there, and the restart then trained without end (issue 24).
    """

    def __init__(self, out_dir: str, where: str) -> None:
        super().__init__()
        self.out_dir, self.where = out_dir, where

    def on_epoch_begin(self, epoch, logs=None):
        if self.where == "--hang" and epoch == 1:
            self._hang(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if self.where == "--hang_at_last_step" and epoch == 0:
            self._hang(epoch)

    def _hang(self, epoch: int) -> None:
        _write(self.out_dir, "hanging", {"epoch": epoch})
        time.sleep(600)


HANGS = ("--hang", "--hang_at_last_step")


def resume(out_dir: str, hang: str | None, every: int | None) -> None:
    import strategies

    strategy = strategies.build("multi_worker_mirrored")
    callbacks = [_Hang(out_dir, hang)] if hang else []
    history = strategies.fit(lambda: model_fn("momentum"), dataset(), strategy=strategy,
                             epochs=3, model_dir=os.path.join(out_dir, "run"),
                             callbacks=callbacks, verbose=2, checkpoint_every_steps=every)
    # The history covers the whole run; the epochs this process ran come after the restart's.
    _write(out_dir, "resume", {"epochs": list(history.epoch),
                               "epochs_run": list(history.epoch)[history.epochs_before_restart:],
                               "iterations": int(history.model.optimizer.iterations.numpy())})


def parameter_server(out_dir: str) -> None:
    import strategies

    config = strategies.StrategyConfig(strategy="parameter_server", cluster_timeout=60)
    if strategies.is_server_task(config):
        strategies.serve_forever(config, timeout=300)
        return
    strategy = strategies.build(config)

    def linear_model() -> keras.Model:
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        return model

    history = strategies.fit(linear_model, linear_dataset_fn, strategy=strategy, epochs=3,
                             steps_per_epoch=30, model_dir=os.path.join(out_dir, "run"),
                             verbose=2)
    _write(out_dir, "parameter_server", {
        "loss": history.history["loss"], "epochs_run": list(history.epoch),
        "iterations": int(history.model.optimizer.iterations.numpy())})


def main(argv: list[str]) -> None:
    mode, out_dir = argv[1], argv[2]
    if mode == "equivalence":
        equivalence(out_dir)
    elif mode == "resume":
        every = next((int(a.split("=")[1]) for a in argv if a.startswith("--every=")), None)
        resume(out_dir, hang=next((a for a in argv if a in HANGS), None), every=every)
    elif mode == "parameter_server":
        parameter_server(out_dir)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv)
