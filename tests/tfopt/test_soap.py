"""tfopt.SOAP against a NumPy reference written from the paper's pseudo-code.

Vyas et al. 2024 (arXiv:2409.11321), Algorithm 3 ("single step of SOAP for
an m x n layer"), generalised as the authors' code does to any number of
dimensions, with their implementation details: step 1 only initialises the
statistics and their eigenbasis (eigh, descending); the first moment lives in
the original space, the second in the rotated one; the eigenbasis is refreshed
every ``precondition_frequency`` steps by one power iteration and a QR, after
sorting the estimated eigenvalues and permuting the second moment with them.

The reference is independent of the implementation: NumPy's eigh/QR (LAPACK),
einsum instead of tensordot chains. Where a statistic has a repeated
eigenvalue (rank-deficient at step 1) the eigenbasis is not unique; the
reference then adopts TensorFlow's basis after checking that it is one.
Runtime: ~15 s on a 2-core CPU.
"""

from __future__ import annotations

import string

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfopt

pytestmark = pytest.mark.tensorflow_only(
    "written with TensorFlow ops (tf.constant, tf.function, tf.GradientTape, tf.IndexedSlices); "
    "on other backends the same optimizers are checked by test_conformance.py, "
    "test_references.py and test_backends.py"
)

# Exactly representable, so that Keras' float32 learning_rate variable holds
# the same value as the float64 reference.
LR = 2.0**-6


# --- The reference -------------------------------------------------------------


def merged_shape(shape, max_dim, merge):
    if not merge or len(shape) < 2:
        return tuple(shape)
    out, product = [], 1
    for d in shape:
        if product * d > max_dim:
            out.append(product)
            product = d
        else:
            product *= d
    out.append(product)
    return tuple(out)


def _rotate(x, bases, back=False):
    """x ×_i Q_i.T for every rotated dimension i (×_i Q_i back)."""
    letters = string.ascii_lowercase[: x.ndim]
    for i, q in enumerate(bases):
        if q is None:
            continue
        out = letters.replace(letters[i], "z")
        spec = f"{letters[i]}z" if not back else f"z{letters[i]}"
        x = np.einsum(f"{letters},{spec}->{out}", x, q)
    return x


def _gram(g, i):
    return np.moveaxis(g, i, 0).reshape(g.shape[i], -1) @ np.moveaxis(g, i, 0).reshape(g.shape[i], -1).T


def soap_reference(w0, grads, *, learning_rate=LR, beta_1=0.95, beta_2=0.95, shampoo_beta=None,
                   epsilon=1e-8, weight_decay=0.01, precondition_frequency=10,
                   max_precondition_dim=10000, merge_dims=False, precondition_1d=False,
                   normalize_grads=False, correct_bias=True, initial_bases=None):
    """The weights after each step. ``initial_bases(statistics) -> bases`` overrides step 1's eigh."""
    shampoo_beta = beta_2 if shampoo_beta is None else shampoo_beta
    shape = merged_shape(w0.shape, max_precondition_dim, merge_dims)
    if w0.ndim == 0 or (w0.ndim == 1 and not precondition_1d):
        rotated = [False] * len(shape)
    else:
        rotated = [d <= max_precondition_dim for d in shape]
    w = np.array(w0, np.float64)
    m = np.zeros_like(w)
    v = np.zeros(shape)
    stats = [np.zeros((d, d)) if r else None for d, r in zip(shape, rotated, strict=True)]
    bases = [None] * len(shape)
    out = []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        G = g.reshape(shape)
        if t > 1:
            s = t - 1
            m = beta_1 * m + (1 - beta_1) * g
            v = beta_2 * v + (1 - beta_2) * _rotate(G, bases) ** 2
            n = _rotate(_rotate(m.reshape(shape), bases) / (np.sqrt(v) + epsilon), bases, back=True)
            if normalize_grads:
                n = n / (np.sqrt(np.mean(n**2)) + epsilon)
            eta = learning_rate
            if correct_bias:
                eta = learning_rate * np.sqrt(1 - beta_2**s) / (1 - beta_1**s)
            w = (w - eta * n.reshape(w.shape)) * (1 - learning_rate * (weight_decay or 0.0))
        stats = [None if S is None else shampoo_beta * S + (1 - shampoo_beta) * _gram(G, i)
                 for i, S in enumerate(stats)]
        if t == 1:
            if initial_bases is not None:
                bases = initial_bases(stats)
            else:
                bases = [None if S is None else np.linalg.eigh(S)[1][:, ::-1] for S in stats]
        elif (t - 1) % precondition_frequency == 0:
            for i, (S, Q) in enumerate(zip(stats, bases, strict=True)):
                if S is None:
                    continue
                order = np.argsort(-np.diag(Q.T @ S @ Q), kind="stable")
                v = np.take(v, order, axis=i)
                bases[i] = np.linalg.qr((S @ Q)[:, order])[0]
        out.append(w.copy())
    return out


def _cuts(n, block):
    """Tile boundaries of one dimension: full tiles of ``block``, then the remainder."""
    return [(start, min(start + block, n)) for start in range(0, n, block)]


def blocked_soap_reference(w0, grads, *, block_size, learning_rate=LR, beta_1=0.95, beta_2=0.95,
                           shampoo_beta=None, epsilon=1e-8, weight_decay=0.01,
                           precondition_frequency=10, normalize_grads=False, correct_bias=True):
    """SOAP on a matrix cut into tiles, each tile an independent SOAP matrix (Shampoo's blocks).

    Only ``normalize_grads`` (over the whole matrix) and the weights tie the tiles together.
    """
    shampoo_beta = beta_2 if shampoo_beta is None else shampoo_beta
    tiles = [(r, c) for r in _cuts(w0.shape[0], block_size) for c in _cuts(w0.shape[1], block_size)]
    w, m = np.array(w0, np.float64), np.zeros(w0.shape)
    state = {t: {"v": np.zeros((t[0][1] - t[0][0], t[1][1] - t[1][0])),
                 "stats": [0.0, 0.0], "bases": None} for t in tiles}  # fmt: skip
    out = []
    for step, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        if step > 1:
            s = step - 1
            m = beta_1 * m + (1 - beta_1) * g
            n = np.zeros_like(w)
            for (r, c), st in state.items():
                G, M = g[r[0]:r[1], c[0]:c[1]], m[r[0]:r[1], c[0]:c[1]]
                st["v"] = beta_2 * st["v"] + (1 - beta_2) * _rotate(G, st["bases"]) ** 2
                n[r[0]:r[1], c[0]:c[1]] = _rotate(
                    _rotate(M, st["bases"]) / (np.sqrt(st["v"]) + epsilon), st["bases"], back=True)
            if normalize_grads:
                n = n / (np.sqrt(np.mean(n**2)) + epsilon)
            eta = learning_rate
            if correct_bias:
                eta = learning_rate * np.sqrt(1 - beta_2**s) / (1 - beta_1**s)
            w = (w - eta * n) * (1 - learning_rate * (weight_decay or 0.0))
        for (r, c), st in state.items():
            G = g[r[0]:r[1], c[0]:c[1]]
            st["stats"] = [shampoo_beta * S + (1 - shampoo_beta) * _gram(G, i)
                           for i, S in enumerate(st["stats"])]
            if step == 1:
                st["bases"] = [np.linalg.eigh(S)[1][:, ::-1] for S in st["stats"]]
            elif (step - 1) % precondition_frequency == 0:
                for i, (S, Q) in enumerate(zip(st["stats"], st["bases"], strict=True)):
                    order = np.argsort(-np.diag(Q.T @ S @ Q), kind="stable")
                    st["v"] = np.take(st["v"], order, axis=i)
                    st["bases"][i] = np.linalg.qr((S @ Q)[:, order])[0]
        out.append(w.copy())
    return out


# --- The comparison --------------------------------------------------------------

# (shape, constructor kwargs): each statistic is full rank from step 1, except
# the 3-vector's (rank 1), for which the reference adopts TF's eigenbasis.
VARIABLES = {
    "matrix": ((4, 4), {}),
    "conv": ((3, 3, 2, 4), {}),
    "scalar": ((), {}),
    "vector": ((5,), {}),
    "vector_1d": ((3,), {"precondition_1d": True}),
    "above_max": ((12, 3), {"max_precondition_dim": 8}),
    "merged": ((3, 3, 2, 4), {"merge_dims": True, "max_precondition_dim": 8}),
}
CONFIGS = {
    "defaults": ({}, 24),
    "options": (
        {"beta_1": 0.9, "beta_2": 0.99, "shampoo_beta": 0.8, "epsilon": 1e-6,
         "weight_decay": 0.0, "precondition_frequency": 3, "normalize_grads": True,
         "correct_bias": False},
        20,
    ),
}  # fmt: skip


def _data(shape, steps, seed):
    rng = np.random.default_rng(seed)
    w0 = rng.normal(size=shape)
    direction = rng.normal(size=shape)
    grads = [(0.5 * direction + rng.normal(size=shape)) * 0.9**t for t in range(steps)]
    return w0, grads


def _run_tf(w0, grads, dtype, kwargs):
    var = keras.Variable(w0.astype(dtype))
    optimizer = tfopt.SOAP(learning_rate=LR, **kwargs)
    optimizer.build([var])

    @tf.function
    def step(g):
        optimizer.apply([g], [var])

    trajectory, first_bases = [], None
    for g in grads:
        step(tf.constant(g, dtype))
        if first_bases is None:
            first_bases = [_numpy(q) for q in optimizer.eigenbases(var)]
        trajectory.append(var.numpy().astype(np.float64))
    return trajectory, first_bases


def _numpy(q):
    """A basis (or, for a matrix in blocks, a list of them) as float64 NumPy."""
    if isinstance(q, list):
        return [_numpy(b) for b in q]
    return None if q is None else q.numpy().astype(np.float64)


def _check_eigenbasis(statistics, bases, atol):
    """Each basis is orthonormal and diagonalises its statistic, in descending order."""
    for S, Q in zip(statistics, bases, strict=True):
        if S is None:
            assert Q is None
            continue
        np.testing.assert_allclose(Q.T @ Q, np.eye(len(Q)), atol=atol)
        D = Q.T @ S @ Q
        scale = np.abs(S).max()
        np.testing.assert_allclose(D - np.diag(np.diag(D)), 0, atol=atol * scale)
        assert np.all(np.diff(np.diag(D)) <= atol * scale), np.diag(D)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("variable", list(VARIABLES))
def test_matches_numpy_reference(variable, config, dtype):
    shape, extra = VARIABLES[variable]
    options, steps = CONFIGS[config]
    kwargs = {**options, **extra}
    w0, grads = _data(shape, steps, seed=len(variable))
    if dtype == "float32":
        w0 = w0.astype(np.float32).astype(np.float64)
        grads = [g.astype(np.float32).astype(np.float64) for g in grads]
    actual, tf_bases = _run_tf(w0, grads, dtype, kwargs)

    def adopt(statistics):
        _check_eigenbasis(statistics, tf_bases, atol=1e-10 if dtype == "float64" else 1e-5)
        return tf_bases

    degenerate = variable == "vector_1d"
    expected = soap_reference(w0, grads, **kwargs, initial_bases=adopt if degenerate else None)
    motion = max(np.abs(e - w0).max() for e in expected)
    assert motion > 10 * LR * 0.1, "the reference barely moved"
    # float64: only the implementations' rounding; float32: also the eigenbasis'
    # sensitivity to rounding (in float32 it rotates by ~1e-6 over these steps).
    tolerance = 1e-9 if dtype == "float64" else 2e-4
    for t, (a, e) in enumerate(zip(actual, expected, strict=True)):
        np.testing.assert_allclose(a, e, rtol=0, atol=tolerance * motion, err_msg=f"step {t + 1}")


# 11x7 in tiles of 4: full tiles, a remainder row and a remainder column, so all
# four tile shapes. Each step-1 statistic is full rank or (the 4x3 and 3x4
# tiles' 4x4 Gram) rank-deficient by one: a 1-D null space, whose basis is
# unique up to sign, to which SOAP's step is invariant.
# Two of the four (config, dtype) cases: the tiles' code paths do not depend on
# the pair, and each case costs ~10 s of tracing and stepping on 2 cores.
@pytest.mark.parametrize("config, dtype", [("defaults", "float64"), ("options", "float32")])
def test_blocks_match_numpy_reference(config, dtype):
    options, steps = CONFIGS[config]
    shape, block = (11, 7), 4
    w0, grads = _data(shape, steps, seed=3)
    if dtype == "float32":
        w0 = w0.astype(np.float32).astype(np.float64)
        grads = [g.astype(np.float32).astype(np.float64) for g in grads]
    actual, tf_bases = _run_tf(w0, grads, dtype, {**options, "block_size": block})
    assert [tuple(q.shape) for group in tf_bases for q in group] == [
        (2, 4, 4), (2, 4, 4), (2, 4, 4), (2, 3, 3), (1, 3, 3), (1, 4, 4), (1, 3, 3), (1, 3, 3)]
    expected = blocked_soap_reference(w0, grads, block_size=block, **options)
    motion = max(np.abs(e - w0).max() for e in expected)
    assert motion > 10 * LR * 0.1, "the reference barely moved"
    tolerance = 1e-9 if dtype == "float64" else 2e-4
    for t, (a, e) in enumerate(zip(actual, expected, strict=True)):
        np.testing.assert_allclose(a, e, rtol=0, atol=tolerance * motion, err_msg=f"step {t + 1}")


def test_blocks_by_default_above_128_only():
    small, large = keras.Variable(np.ones((128, 8), "float32")), keras.Variable(np.ones((300, 8)))
    optimizer = tfopt.SOAP()
    optimizer.build([small, large])
    assert optimizer.block_size == 128
    assert [tuple(q.shape) for q in optimizer.eigenbases(small)] == [(128, 128), (8, 8)]
    assert [[tuple(q.shape) for q in group] for group in optimizer.eigenbases(large)] == [
        [(2, 128, 128), (2, 8, 8)], [(1, 44, 44), (1, 8, 8)]]
    assert tfopt.SOAP(block_size=None).preconditioned_shape((300, 8)) == (300, 8)


def test_first_step_only_initialises():
    var = keras.Variable(np.ones((3, 2), "float32"))
    optimizer = tfopt.SOAP(learning_rate=0.1, weight_decay=0.5)
    optimizer.apply([tf.constant(np.arange(6.0).reshape(3, 2), tf.float32)], [var])
    np.testing.assert_array_equal(var.numpy(), np.ones((3, 2)))
    left, right = optimizer.eigenbases(var)
    statistic = 0.05 * np.arange(6.0).reshape(3, 2) @ np.arange(6.0).reshape(3, 2).T
    top = left.numpy()[:, 0]
    np.testing.assert_allclose(np.abs(top @ statistic @ top), np.linalg.eigvalsh(statistic)[-1],
                               rtol=1e-5)
    assert right.shape == (2, 2)


def test_eigenbasis_changes_only_at_refresh():
    var = keras.Variable(np.random.default_rng(0).normal(size=(4, 3)).astype("float32"))
    optimizer = tfopt.SOAP(learning_rate=0.01, precondition_frequency=3)
    rng = np.random.default_rng(1)
    history = []
    for _ in range(8):
        optimizer.apply([tf.constant(rng.normal(size=(4, 3)), tf.float32)], [var])
        history.append([q.numpy().copy() for q in optimizer.eigenbases(var)])
    # Step 1 sets the basis; the refreshes follow the reference's steps s = 3, 6 (calls 4, 7).
    changed = [not all(np.array_equal(a, b) for a, b in zip(history[i - 1], history[i], strict=True))
               for i in range(1, 8)]
    assert changed == [False, False, True, False, False, True, False]


def test_exclude_from_weight_decay():
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    bias = keras.Variable(np.ones((2,), "float32"), name="bias")
    decayed = tfopt.SOAP(learning_rate=0.1, weight_decay=0.5)
    decayed.exclude_from_weight_decay(var_names=["bias"])
    for _ in range(2):
        decayed.apply([tf.zeros((2, 2)), tf.zeros((2,))], [kernel, bias])
    np.testing.assert_allclose(kernel.numpy(), 0.95, rtol=1e-6)  # One decayed step after step 1.
    np.testing.assert_array_equal(bias.numpy(), 1.0)


@pytest.mark.parametrize(
    "shape, max_dim, expected",
    [
        ((3, 3, 4, 8), 16, (9, 4, 8)),
        ((3, 3, 64, 128), 10000, (576, 128)),
        ((3, 3, 4, 8), 10000, (288,)),  # All in one: one 288 x 288 statistic.
        ((20000, 3), 10000, (1, 20000, 3)),  # As the reference: a leading 1.
        ((7,), 4, (7,)),
    ],
)
def test_merged_shape(shape, max_dim, expected):
    optimizer = tfopt.SOAP(merge_dims=True, max_precondition_dim=max_dim)
    assert optimizer.preconditioned_shape(shape) == expected


def test_defaults_are_the_references():
    config = tfopt.get("soap").get_config()
    expected = {"learning_rate": 3e-3, "beta_1": 0.95, "beta_2": 0.95, "shampoo_beta": None,
                "epsilon": 1e-8, "weight_decay": 0.01, "precondition_frequency": 10,
                "max_precondition_dim": 10000, "merge_dims": False, "precondition_1d": False,
                "normalize_grads": False, "correct_bias": True}  # fmt: skip
    for key, value in expected.items():
        assert config[key] == pytest.approx(value) if isinstance(value, float) else config[key] == value


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beta_1": 1.0},
        {"beta_2": -0.1},
        {"shampoo_beta": 1.5},
        {"epsilon": 0.0},
        {"weight_decay": -1.0},
        {"precondition_frequency": 0},
        {"precondition_frequency": 2.5},
        {"max_precondition_dim": 0},
        {"merge_dims": "yes"},
        {"precondition_1d": 1},
        {"normalize_grads": None},
        {"correct_bias": "no"},
        {"block_size": 0},
        {"split_preconditioner_work": 1},
        {"learning_rate": -1.0},
    ],
    ids=lambda kwargs: next(iter(kwargs)),
)
def test_rejects_bad_hyperparameters(kwargs):
    ((name, value),) = kwargs.items()
    with pytest.raises(ValueError, match=f"{name}={value!r}" if not isinstance(value, float)
                       else f"{name}={value}"):
        tfopt.SOAP(**kwargs)


def test_replicas_agree_with_rank_deficient_statistics():
    """Under Mirrored, every replica's copy of SOAP's state stays bitwise equal.

    The default settings on a Dense(3->4->1) model: the 4x4 statistics are
    rank-deficient at step 1, where the eigenbasis is not unique. Each replica
    applies the same all-reduced gradient with the same ops, so the copies
    still agree exactly (that one device picks another basis of the null space
    is the sensitivity cases.py describes, not replica divergence).
    """
    from tests.tfopt import mirrored

    strategy = mirrored.two_cpus()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3)).astype("float32")
    y = np.tanh(x @ np.array([[1.0], [-2.0], [0.5]])).astype("float32")
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
        )
        model.compile(optimizer=tfopt.SOAP(learning_rate=0.05, precondition_frequency=2),
                      loss="mse")
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 6
    checked = 0
    for variable in model.optimizer.variables:
        copies = [c.numpy() for c in strategy.experimental_local_results(variable.value)]
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1], err_msg=variable.path)
        checked += "eigenbasis" in variable.path
    assert checked == 4  # Both kernels' two bases.


def test_split_refresh_is_bitwise_the_unsplit_one(monkeypatch):
    """Under Mirrored, the refresh split over replicas (one all-reduce) equals every
    replica computing everything, bitwise; both keep the replicas' copies equal.

    Tiles of 4 on Dense(6 -> 9 -> 3), refreshed every 2 steps over 6 steps: the
    split sends step 1's eigh, the refreshes and the permutations of ``v``, in
    one all-reduce per traced step (one dtype).
    """
    from tests.tfopt import mirrored
    from tfopt import _soap_split

    calls = []

    def spy(context, buffers, enabled):
        calls.append(sorted(buffers))
        return real(context, buffers, enabled)

    real = _soap_split._all_reduce
    monkeypatch.setattr(_soap_split, "_all_reduce", spy)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = np.tanh(x @ rng.normal(size=(6, 3))).astype("float32")
    results = {}
    for split in (True, False):
        strategy = mirrored.two_cpus()
        with strategy.scope():
            keras.utils.set_random_seed(1)
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(9, activation="tanh"),
                                      keras.layers.Dense(3)])  # fmt: skip
            model.compile(optimizer=tfopt.SOAP(learning_rate=0.05, precondition_frequency=2,
                                               block_size=4, split_preconditioner_work=split),
                          loss="mse")  # fmt: skip
        model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
        assert bool(calls) == split  # The split path ran (and only when asked).
        if split:  # Per trace: one call per replica, every tile size batched in it.
            assert all(c == [("float32", 1), ("float32", 2), ("float32", 3), ("float32", 4)]
                       for c in calls), calls
        calls.clear()
        state = []
        for variable in [*model.trainable_variables, *model.optimizer.variables]:
            copies = [c.numpy() for c in strategy.experimental_local_results(variable.value)]
            np.testing.assert_array_equal(copies[0], copies[1], err_msg=variable.path)
            state.append((variable.path.split("/")[-1], copies[0]))
        results[split] = state
    assert [p for p, _ in results[True]] == [p for p, _ in results[False]]
    for (path, value), (_, other) in zip(results[True], results[False], strict=True):
        np.testing.assert_array_equal(value, other, err_msg=path)
    bases = [p for p, _ in results[True] if "eigenbasis" in p]
    assert len(bases) == 12, bases  # 6x9 in tiles of 4: 4 groups; 9x3: 2 groups; 2 bases each.
