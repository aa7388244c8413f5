"""Parameter-server `fit` from a tf.data.Dataset, in one process: ``python -m tests.strategies.ps_dataset_program OUT``.

The worker and ps servers run in this process (``tf.distribute.Server``), as
TensorFlow's own in-process parameter-server tests do, and this process is the
coordinator; one worker, so that the run is comparable step for step with one
device. Each case trains one epoch, then resumes from its checkpoint for the
second. Writes ``OUT/<case>.npz`` (final weights) and ``OUT/<case>.json``.
A subprocess, because a parameter-server coordinator reconfigures this
process's eager context for good.
"""

from __future__ import annotations

import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf

BATCH, BATCHES, EPOCHS = 8, 4, 2


def model_fn() -> keras.Model:
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.5), "mse")
    return model


def dataset() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * BATCHES, 3)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, np.sin(x.sum(1, keepdims=True)))).batch(BATCH)


# case -> (data, steps_per_epoch): a finite dataset read from its start each
# epoch, and an endless one read by one iterator (6 steps: epochs straddle its batches).
CASES = {"finite": (dataset, None), "endless": (lambda: dataset().repeat(), 6)}


def main(out_dir: str) -> None:
    import strategies
    from strategies import cluster as cluster_lib

    spec = cluster_lib.local_cluster(workers=1, ps=1, chief=True)
    servers = [tf.distribute.Server(tf.train.ClusterSpec(spec), job_name=job, task_index=i, protocol="grpc")
               for job in ("worker", "ps") for i in range(len(spec[job]))]
    strategy = strategies.build("parameter_server", chief_host=spec["chief"][0], worker_hosts=spec["worker"],
                                ps_hosts=spec["ps"], task_type="chief", task_index=0, cluster_timeout=30)
    for case, (data, steps) in CASES.items():
        run_dir = os.path.join(out_dir, f"{case}-run")
        # Stopped after epoch 1 and resumed: the Dataset is read on from the step the run stands at.
        strategies.fit(model_fn, data(), strategy=strategy, epochs=1, steps_per_epoch=steps, verbose=0,
                       model_dir=run_dir)
        history = strategies.fit(model_fn, data(), strategy=strategy, epochs=EPOCHS, steps_per_epoch=steps,
                                 verbose=0, model_dir=run_dir)
        np.savez(os.path.join(out_dir, f"{case}.npz"), *history.model.get_weights())
        with open(os.path.join(out_dir, f"{case}.json"), "w") as f:
            json.dump({"loss": history.history["loss"],
                       "iterations": int(history.model.optimizer.iterations.numpy())}, f)
    del servers
    sys.stdout.flush()
    os._exit(0)  # In-process servers cannot be shut down; they would hold the exit.


if __name__ == "__main__":
    main(sys.argv[1])
