"""Shampoo's split refresh under MultiWorkerMirroredStrategy, one task of a local cluster.

Run by tests/tfopt/test_shampoo_cluster.py through launch.local_cluster; each
worker has one CPU replica. ``train(strategy)`` is also what the test runs on
one device, so both sides take the same steps: replica ``r`` of ``n`` takes
rows ``r::n`` of each global batch, with the loss divided by the global batch
(Keras' convention), so the all-reduced gradient is the one-device gradient.
"""

from __future__ import annotations

import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf

import tfopt

GLOBAL_BATCH = 8
STEPS = 6
SHAPES = [(6, 20), (20,), (20, 2)]


def train(strategy: tf.distribute.Strategy, split: bool = True) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS, GLOBAL_BATCH, 6)).astype("float32")
    y = np.tanh(x @ rng.normal(size=(6, 2))).astype("float32")
    with strategy.scope():
        variables = [keras.Variable(0.3 * rng.normal(size=s).astype("float32")) for s in SHAPES]
        optimizer = tfopt.Shampoo(0.05, block_size=16, best_effort_shape_interpretation=False,
                                  start_preconditioning_step=1, precondition_frequency=2,
                                  split_preconditioner_work=split)  # fmt: skip
        optimizer.build(variables)

    def replica_step(xs, ys):
        context = tf.distribute.get_replica_context()
        rows = tf.range(context.replica_id_in_sync_group, GLOBAL_BATCH,
                        context.num_replicas_in_sync)  # fmt: skip
        xs, ys = tf.gather(xs, rows), tf.gather(ys, rows)
        with tf.GradientTape() as tape:
            w1, b, w2 = (v.value for v in variables)
            loss = tf.reduce_sum(tf.square(tf.tanh(xs @ w1 + b) @ w2 - ys)) / GLOBAL_BATCH
        optimizer.apply(tape.gradient(loss, [v.value for v in variables]), variables)

    @tf.function
    def step(xs, ys):
        strategy.run(replica_step, args=(xs, ys))

    for t in range(STEPS):
        step(tf.constant(x[t]), tf.constant(y[t]))
    return [v.numpy() for v in variables]


def main(argv: list[str]) -> None:
    out_dir = argv[1]
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    weights = train(strategy)
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    name = f"{task['type']}{task['index']}"
    np.savez(os.path.join(out_dir, f"shampoo-{name}.npz"), *weights)
    with open(os.path.join(out_dir, f"shampoo-{name}.json"), "w") as f:
        json.dump({"replicas": strategy.num_replicas_in_sync}, f)


if __name__ == "__main__":
    main(sys.argv)
