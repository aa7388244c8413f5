"""tfopt.LazyAdam: Keras' Adam on dense gradients, rows-present-only on sparse ones."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
from keras import ops

import tfopt
from tests.tfopt.references import assert_trajectories_close


def lazy_adam(params, grads, *, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Trajectory of LazyAdam's docstring rule.

    A gradient is a dense array, or ``(rows, values)`` for a sparse one, whose
    repeated rows add up. Only the rows present move, with the global step t.
    """
    thetas = [np.array(p, np.float64) for p in params]
    ms = [np.zeros_like(t) for t in thetas]
    vs = [np.zeros_like(t) for t in thetas]
    out = []
    for t, step_grads in enumerate(grads, start=1):
        alpha = learning_rate * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        for i, g in enumerate(step_grads):
            if isinstance(g, tuple):
                rows, values = g
                dense = np.zeros_like(thetas[i])
                np.add.at(dense, rows, values)
                touched = np.unique(rows)
            else:
                dense, touched = np.asarray(g, np.float64), slice(None)
            m, v = ms[i][touched], vs[i][touched]
            m = beta_1 * m + (1 - beta_1) * dense[touched]
            v = beta_2 * v + (1 - beta_2) * dense[touched] ** 2
            ms[i][touched], vs[i][touched] = m, v
            thetas[i][touched] -= alpha * m / (np.sqrt(v) + epsilon)
        out.append([t.copy() for t in thetas])
    return out


def _to_tensor(g):
    if isinstance(g, tuple):
        import tensorflow as tf  # Sparse gradients: the tests that pass them are TF-only.

        rows, values = g
        return tf.IndexedSlices(
            tf.constant(values, tf.float32), tf.constant(rows), tf.constant([6, 2])
        )
    return ops.convert_to_tensor(np.asarray(g, "float32"))


def _run(optimizer, params, grads):
    variables = [keras.Variable(p, dtype="float32") for p in params]
    out = []
    for step_grads in grads:
        optimizer.apply([_to_tensor(g) for g in step_grads], variables)
        out.append([v.numpy() for v in variables])
    return out, variables


RNG = np.random.default_rng(3)
TABLE = RNG.normal(size=(6, 2))
# Row 5 is never looked up; row 1 appears twice in the second batch.
SPARSE_STEPS = [
    [([0, 2], RNG.normal(size=(2, 2)))],
    [([1, 4, 1], RNG.normal(size=(3, 2)))],
    [([2, 3], RNG.normal(size=(2, 2)))],
    [([0, 1], RNG.normal(size=(2, 2)))],
]


def test_dense_gradients_match_keras_adam_and_the_reference():
    params = [RNG.normal(size=(3, 2))]
    grads = [[RNG.normal(size=(3, 2))] for _ in range(5)]
    ours, _ = _run(tfopt.LazyAdam(1e-2), params, grads)
    keras_adam, _ = _run(keras.optimizers.Adam(1e-2), params, grads)
    assert_trajectories_close(ours, keras_adam, rtol=1e-6)
    assert_trajectories_close(ours, lazy_adam(params, grads, learning_rate=1e-2))


@pytest.mark.tensorflow_only("tf.IndexedSlices gradients exist only on TensorFlow")
def test_sparse_gradients_update_only_present_rows():
    opt = tfopt.LazyAdam(1e-2)
    trajectory, (table,) = _run(opt, [TABLE], SPARSE_STEPS)
    assert_trajectories_close(trajectory, lazy_adam([TABLE], SPARSE_STEPS, learning_rate=1e-2))
    # Row 5 was never present: its weights and both moments are untouched.
    np.testing.assert_array_equal(table.numpy()[5], TABLE[5].astype(np.float32))
    slots = [v for v in opt.variables if v.shape == table.shape]
    assert len(slots) == 2  # momentum and velocity
    for slot in slots:
        np.testing.assert_array_equal(slot.numpy()[5], 0.0)


@pytest.mark.tensorflow_only("tf.IndexedSlices gradients exist only on TensorFlow")
def test_sparse_differs_from_adam_only_on_absent_rows():
    # Adam treats an absent row as a zero gradient: row 3 (absent from step 1
    # to 2) keeps moving under Adam with its stale momentum, not under LazyAdam.
    steps = SPARSE_STEPS[2:] + SPARSE_STEPS[:1]  # rows {2,3} then {0,1} then {0,2}
    lazy, _ = _run(tfopt.LazyAdam(1e-2), [TABLE], steps)
    adam, _ = _run(keras.optimizers.Adam(1e-2), [TABLE], steps)
    np.testing.assert_allclose(lazy[0][0], adam[0][0], rtol=1e-6)  # same after step 1
    np.testing.assert_array_equal(lazy[1][0][3], lazy[0][0][3])  # row 3 absent: frozen
    assert np.abs(adam[1][0][3] - adam[0][0][3]).min() > 1e-4  # Adam kept moving it


@pytest.mark.tensorflow_only("tf.IndexedSlices gradients exist only on TensorFlow")
def test_duplicate_rows_are_summed_like_the_dense_gradient():
    rows, values = [1, 1], np.array([[1.0, -2.0], [0.5, 3.0]])
    sparse, _ = _run(tfopt.LazyAdam(1e-2), [TABLE], [[(rows, values)]])
    expected = lazy_adam([TABLE], [[([1], values.sum(axis=0, keepdims=True))]], learning_rate=1e-2)
    assert_trajectories_close(sparse, expected)


def _embedding_step(strategy, ids_per_replica):
    """One LazyAdam step on a 6x2 table, loss = sum of looked-up rows * weights."""
    import tensorflow as tf

    with strategy.scope():
        table = keras.Variable(TABLE, dtype="float32")
        opt = tfopt.LazyAdam(1e-2)
        opt.build([table])

    def step(ids):
        with tf.GradientTape() as tape:
            rows = tf.gather(table.value, ids)
            loss = tf.reduce_sum(rows * tf.constant([1.0, -3.0]))
        opt.apply(tape.gradient(loss, [table.value]), [table])

    values = iter(ids_per_replica)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(next(values))
    )
    strategy.run(tf.function(step), args=(per_replica,))
    return table.numpy()


@pytest.mark.tensorflow_only("tf.distribute strategies are TensorFlow's")
@pytest.mark.parametrize(
    ("strategy", "ids_per_replica"),
    [("mirrored", [[0, 2], [2, 4]]), ("one-device", [[0, 2, 2, 4]])],
    ids=["mirrored", "one-device"],
)
def test_distributed_sparse_update_matches_the_reference(strategy, ids_per_replica):
    import tensorflow as tf

    from tests.tfopt import mirrored

    make_strategy = {"mirrored": mirrored.two_cpus,
                     "one-device": lambda: tf.distribute.OneDeviceStrategy("CPU:0")}[strategy]  # fmt: skip
    # Under Mirrored each replica looks up row 2: the all-reduced IndexedSlices
    # repeat it across replicas, and LazyAdam must sum the two before updating.
    updated = _embedding_step(make_strategy(), ids_per_replica)
    rows = [i for ids in ids_per_replica for i in ids]
    expected = lazy_adam(
        [TABLE], [[(rows, np.tile([1.0, -3.0], (len(rows), 1)))]], learning_rate=1e-2
    )
    np.testing.assert_allclose(updated, expected[0][0], rtol=2e-5, atol=1e-6)
    np.testing.assert_array_equal(updated[[1, 3, 5]], TABLE[[1, 3, 5]].astype(np.float32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(beta_1=-0.1), "beta_1=-0.1"),
        (dict(beta_2=1.0), "beta_2=1.0"),
        (dict(epsilon=0.0), "epsilon=0.0"),
        (dict(learning_rate=float("nan")), "learning_rate=nan"),
    ],
    ids=["beta_1", "beta_2", "epsilon", "learning_rate"],
)
def test_invalid_hyperparameters_name_the_received_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tfopt.LazyAdam(**kwargs)
