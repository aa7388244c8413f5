"""tfopt.Shampoo against a NumPy reference of optax-shampoo 0.0.6's distributed_shampoo.

The reference below is written from the paper (Anil et al. 2020, Algorithm 1
with grafting and blocking) and optax-shampoo's pseudo-code, in float64 and
plain NumPy: its own reshaping and blocking, its own coupled Newton iteration
(Higham, "Functions of Matrices", eq. 7.18), its own power iteration, and
(``root_method="eigh"``, tfopt's default) roots from ``np.linalg.eigh``. The
optimizer runs in float64 variables, so the two agree to ~1e-9. Every test
that stands for optax's rule passes ``root_method="newton"``. The float32
cross-check against the real optax-shampoo is launch/bench/crosscheck_shampoo.py
(numbers in docs/shampoo.md).
"""

from __future__ import annotations

import itertools
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tests.tfopt import mirrored
from tfopt import _eigh_root, _matrix_functions, _sharded_preconditioner

pytestmark = pytest.mark.tensorflow_only(
    "written with TensorFlow ops (tf.constant, tf.function, tf.GradientTape, tf.IndexedSlices); "
    "on other backends the same optimizers are checked by test_conformance.py, "
    "test_references.py and test_backends.py"
)

# --- The reference ------------------------------------------------------------


def _merged_shape(shape, max_dim):
    if shape and all(d == 1 for d in shape):
        return [1]
    out, product = [], 1
    for d in shape:
        if product * d > max_dim:
            if product > 1:
                out.append(product)
            product = 1
        product *= d
    return out + [product] if product > 1 else out


def _pieces(d, block_size):
    """Sizes along one axis: full blocks, then the remainder."""
    if not 0 < block_size < d:
        return [d]
    n = -(-d // block_size)
    return [block_size] * (n - 1) + [d - block_size * (n - 1)]


def _blocks(x, sizes):
    """Row-major list of (block, index slices)."""
    edges = [np.cumsum([0, *s]) for s in sizes]
    out = []
    for idx in itertools.product(*[range(len(s)) for s in sizes]):
        sl = tuple(slice(e[i], e[i + 1]) for e, i in zip(edges, idx, strict=True))
        out.append((x[sl], sl))
    return out


def _power_iteration_max(a):
    v = np.random.RandomState(1729).uniform(-1.0, 1.0, a.shape[0])
    s = 0.0
    for _ in range(100):
        v = v / np.linalg.norm(v)
        av = a @ v
        s_new = v @ av
        done = abs(s_new - s) <= 1e-6
        v, s = av, s_new
        if done:
            break
    return s


def _inverse_root(a, p, eps, relative):
    """(a + ridge I)^(-1/p) by coupled Newton; returns (root, error)."""
    ridge = eps * max(_power_iteration_max(a) if relative else 1.0, 1e-6)
    n = a.shape[0]
    if n == 1:
        return (a + ridge) ** (-1.0 / p), 0.0
    eye = np.eye(n)
    damped = a + ridge * eye
    z = (1 + p) / (2 * np.linalg.norm(damped))
    m, h = damped * z, eye * z ** (1.0 / p)
    old_h, error, ratio = h, np.abs(m - eye).max(), 1.0
    for _ in range(100):
        if not (error > 1e-6 and ratio < 1.2):
            break
        m_i = (1 + 1.0 / p) * eye - m / p
        m_new = np.linalg.matrix_power(m_i, p) @ m
        old_h, h = h, h @ m_i
        new_error = np.abs(m_new - eye).max()
        m, ratio, error = m_new, new_error / error, new_error
    return (h if ratio < 1.2 else old_h), np.abs(m - eye).max()


def _inverse_root_eigh(a, p, eps, relative):
    """root_method="eigh": (a + ridge I)^(-1/p) from NumPy's eigh, ridge from the exact λ_max."""
    w, v = np.linalg.eigh(a)
    w = np.maximum(w, 0.0)
    ridge = eps * max(w[-1], 1e-6) if relative else eps
    return (v * (w + ridge) ** (-1.0 / p)) @ v.T, 0.0


def shampoo_reference(params, grads, *, learning_rate=1e-3, root_method="eigh", block_size=128, beta_1=0.9,
                      beta_2=0.999, diagonal_epsilon=1e-10, matrix_epsilon=1e-6,
                      relative_matrix_epsilon=True, start_preconditioning_step=5,
                      precondition_frequency=1, graft_type="sgd", nesterov=True,
                      inverse_failure_threshold=0.1, skip_preconditioning_dim_size_gt=4096,
                      skip_preconditioning_rank_lt=1, best_effort_shape_interpretation=True,
                      merge_small_dims_block_size=4096, weight_decay=0.0,
                      coupled_weight_decay=0.0):  # fmt: skip
    """Trajectory (one list of float64 arrays per step) of distributed_shampoo.

    Its defaults are tfopt.Shampoo's: ``root_method="newton"`` is optax's rule.
    """
    thetas = [np.array(p, np.float64) for p in params]
    states = []
    for theta in thetas:
        shape = list(theta.shape)
        skip = len(shape) < skip_preconditioning_rank_lt or any(
            d > skip_preconditioning_dim_size_gt for d in shape
        )
        merged = (_merged_shape(shape, merge_small_dims_block_size)
                  if best_effort_shape_interpretation else shape)  # fmt: skip
        sizes = [_pieces(d, block_size) for d in merged]
        dims = [d for block in itertools.product(*sizes) for d in block] if not skip else []
        states.append({
            "skip": skip, "merged": merged, "sizes": sizes,
            "S": [matrix_epsilon * np.eye(d) for d in dims], "P": [np.eye(d) for d in dims],
            "m": np.zeros_like(theta), "d": np.zeros_like(theta), "diag": np.zeros_like(theta),
        })  # fmt: skip
    w2 = 1.0 if beta_2 == 1.0 else 1.0 - beta_2
    out = []
    for t, step_grads in enumerate(grads):
        lr = learning_rate
        for i, g in enumerate(step_grads):
            g = np.asarray(g, np.float64)
            st = states[i]
            thetas[i] = thetas[i] - lr * weight_decay * thetas[i]  # Keras' decoupled decay.
            rank = len(st["merged"])
            if not st["skip"]:
                blocks = _blocks(g.reshape(st["merged"]), st["sizes"])
                k = 0
                for block, _ in blocks:
                    for axis in range(rank):
                        gm = np.moveaxis(block, axis, 0).reshape(block.shape[axis], -1)
                        st["S"][k] = beta_2 * st["S"][k] + w2 * gm @ gm.T
                        k += 1
                if t % precondition_frequency == 0:
                    for k, s in enumerate(st["S"]):
                        inverse_root = _inverse_root_eigh if root_method == "eigh" else _inverse_root
                        root, error = inverse_root(
                            s, 2 * rank, matrix_epsilon, relative_matrix_epsilon
                        )
                        if not (np.isnan(error) or error >= inverse_failure_threshold):
                            st["P"][k] = root
            # Grafting.
            if graft_type == "sgd":
                u = g
            elif graft_type == "sqrt_n":
                u = np.sign(g)
            else:
                x = g / (np.linalg.norm(g) + 1e-16) if graft_type == "rmsprop_normalized" else g
                if graft_type == "adagrad":
                    st["diag"] = st["diag"] + x**2
                else:
                    st["diag"] = beta_2 * st["diag"] + w2 * x**2
                u = x / (np.sqrt(st["diag"]) + diagonal_epsilon)
            # Preconditioning: G ×_1 P_1 ... ×_k P_k, block by block.
            if st["skip"]:
                p = u
            else:
                p = np.zeros(st["merged"])
                for b, (block, sl) in enumerate(_blocks(g.reshape(st["merged"]), st["sizes"])):
                    x = block
                    for axis in range(rank):
                        x = np.moveaxis(np.tensordot(st["P"][b * rank + axis], x, axes=(0, axis)),
                                        0, axis)  # fmt: skip
                    p[sl] = x
                p = p.reshape(g.shape)
            s = p * np.linalg.norm(u) / (np.linalg.norm(p) + 1e-16)
            s, u = s + coupled_weight_decay * thetas[i], u + coupled_weight_decay * thetas[i]
            st["m"] = beta_1 * st["m"] + s
            st["d"] = beta_1 * st["d"] + u
            shampoo_now = t >= start_preconditioning_step
            v, n = (s, st["m"]) if shampoo_now else (u, st["d"])
            thetas[i] = thetas[i] - lr * (v + beta_1 * n if nesterov else n)
        out.append([th.copy() for th in thetas])
    return out


# --- Matching it ----------------------------------------------------------------

SHAPES = [(6, 10), (3, 3, 4, 8), (7,), (40, 20)]
SMALL_SHAPES = [(6, 10), (2, 3, 4), (5,)]

CONFIGS = {
    "defaults": dict(block_size=100),  # Merged: (40, 20) -> (800,), 8 blocks.
    "unmerged-adagrad-freq3": dict(
        block_size=16, best_effort_shape_interpretation=False, graft_type="adagrad",
        precondition_frequency=3, start_preconditioning_step=2, beta_2=0.99),
    "rmsprop_normalized-sum": dict(
        block_size=16, best_effort_shape_interpretation=False, graft_type="rmsprop_normalized",
        beta_2=1.0, nesterov=False, relative_matrix_epsilon=False, matrix_epsilon=1e-4),
    "rmsprop-diagonal_fallback": dict(
        block_size=8, best_effort_shape_interpretation=False, graft_type="rmsprop",
        skip_preconditioning_dim_size_gt=30, skip_preconditioning_rank_lt=2, beta_1=0.5),
    "sqrt_n-merge16-weight_decay": dict(
        block_size=12, merge_small_dims_block_size=16, graft_type="sqrt_n", weight_decay=0.1),
    "rmsprop-coupled_weight_decay": dict(block_size=16, graft_type="rmsprop",
                                         coupled_weight_decay=0.1),
    # Every Newton error (~1e-12 in float64) fails a threshold of 1e-14: the roots stay I.
    "inverse_failure": dict(
        block_size=16, best_effort_shape_interpretation=False, inverse_failure_threshold=1e-14),
}  # fmt: skip


def _problem(steps, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=s) for s in shapes]
    grads = []
    for _ in range(steps):
        step = []
        for shape in shapes:
            scale = np.ones(shape)
            for axis, d in enumerate(shape):
                scale = scale * np.geomspace(0.1, 3.0, d).reshape(
                    [d if i == axis else 1 for i in range(len(shape))]
                )
            step.append(rng.normal(size=shape) * scale)
        grads.append(step)
    return params, grads


def _run(optimizer, params, grads, dtype="float64"):
    variables = [keras.Variable(p, dtype=dtype) for p in params]
    optimizer.build(variables)

    @tf.function
    def step(g):
        optimizer.apply(g, variables)

    out = []
    for g in grads:
        step([tf.constant(x, dtype) for x in g])
        out.append([v.numpy().astype(np.float64) for v in variables])
    return out


def _assert_close_to_motion(actual, expected, params, tolerance):
    for t, (got, want) in enumerate(zip(actual, expected, strict=True)):
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            moved = np.abs(b - params[i]).max()
            assert np.abs(a - b).max() <= tolerance * moved, (
                f"step {t}, variable {i} {params[i].shape}: |Δ|={np.abs(a - b).max():.3g}, moved {moved:.3g}"
            )


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_newton_matches_reference_float64(config):
    """optax's rule (coupled Newton roots), 12 steps, four shapes, float64: every
    step within 1e-6 of the reference's motion."""
    kwargs = {**CONFIGS[config], "root_method": "newton"}
    params, grads = _problem(steps=12)
    expected = shampoo_reference(params, grads, learning_rate=0.05, **kwargs)
    actual = _run(tfopt.Shampoo(0.05, **kwargs), params, grads)
    _assert_close_to_motion(actual, expected, params, 1e-6)


# inverse_failure is Newton's: an eigh root's error is 0 unless it is not finite.
EIGH_CONFIGS = [c for c in CONFIGS if c != "inverse_failure"]


@pytest.mark.parametrize("config", EIGH_CONFIGS, ids=EIGH_CONFIGS)
def test_default_eigh_roots_match_reference_float64(config):
    """The default root_method ("eigh", not passed) against the NumPy rule with
    np.linalg.eigh roots."""
    kwargs = CONFIGS[config]
    params, grads = _problem(steps=12)
    expected = shampoo_reference(params, grads, learning_rate=0.05, root_method="eigh", **kwargs)
    actual = _run(tfopt.Shampoo(0.05, **kwargs), params, grads)
    _assert_close_to_motion(actual, expected, params, 1e-6)


def test_the_default_root_is_eigh():
    """The default really takes eigh roots: an eigh root's error is 0, so a
    failure threshold of 1e-14 that fails every Newton root (they stay I) keeps none."""
    assert tfopt.Shampoo().root_method == "eigh"
    assert tfopt.get("shampoo").get_config()["root_method"] == "eigh"
    params, grads = _problem(steps=3, shapes=SMALL_SHAPES)
    kwargs = dict(block_size=16, best_effort_shape_interpretation=False, inverse_failure_threshold=1e-14)
    roots = {}
    for method, optimizer in (("default", tfopt.Shampoo(0.05, **kwargs)),
                              ("newton", tfopt.Shampoo(0.05, root_method="newton", **kwargs))):  # fmt: skip
        _run(optimizer, params, grads)
        roots[method] = [v.numpy() for v in optimizer.variables if "_root_" in v.path and v.shape[0] > 1]
    assert roots["newton"] and all(np.array_equal(r, np.eye(len(r))) for r in roots["newton"])
    assert not any(np.array_equal(r, np.eye(len(r))) for r in roots["default"])


def test_eigh_root_is_the_root_and_flags_non_finite_input():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 6, 4))
    a = np.einsum("zij,zkj->zik", x, x)  # Rank 4 of 6: two zero eigenvalues.
    for p, relative in ((2, True), (4, True), (6, False)):
        roots, errors = _eigh_root.eigh_inverse_pth_root(tf.constant(a), p, 1e-6, relative)
        for root, m in zip(roots.numpy(), a, strict=True):
            ridge = 1e-6 * (np.linalg.eigvalsh(m).max() if relative else 1.0)
            # The defining property, not the formula: root^-p == a + ridge I.
            np.testing.assert_allclose(np.linalg.matrix_power(np.linalg.inv(root), p),
                                       m + ridge * np.eye(6), rtol=1e-6, atol=1e-9)  # fmt: skip
            if relative:  # Where Newton converges, the same root (it stops at 1e-6).
                newton, _ = _matrix_functions.matrix_inverse_pth_root(tf.constant(m), p, 1e-6, True)
                np.testing.assert_allclose(root, newton.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(errors.numpy(), 0.0)
    bad = a.copy()
    bad[1, 0, 0] = np.nan
    roots, errors = _eigh_root.eigh_inverse_pth_root(tf.constant(bad), 4, 1e-6, True)
    assert np.isnan(errors.numpy()[1]) and not np.isnan(errors.numpy()[[0, 2]]).any()


def test_inverse_failure_keeps_previous_roots():
    kwargs = {**CONFIGS["inverse_failure"], "root_method": "newton"}
    optimizer = tfopt.Shampoo(0.05, **kwargs)
    params, grads = _problem(steps=3, shapes=SMALL_SHAPES)
    _run(optimizer, params, grads)
    roots = [v.numpy() for v in optimizer.variables if "_root_" in v.path]
    assert roots and all(np.array_equal(r, np.eye(len(r))) or r.shape == (1, 1) for r in roots)
    working = tfopt.Shampoo(0.05, **{**kwargs, "inverse_failure_threshold": 0.1})
    _run(working, params, grads)
    assert not all(
        np.array_equal(v.numpy(), np.eye(len(v.numpy()))) for v in working.variables
        if "_root_" in v.path
    )  # fmt: skip


@pytest.mark.parametrize("root_method", ["eigh", "newton"])
def test_float32_close_to_float64_reference(root_method):
    """The float32 run stays near the float64 reference (float32 roots, 15 steps)."""
    params, grads = _problem(steps=15, shapes=SMALL_SHAPES)
    kwargs = dict(block_size=8, best_effort_shape_interpretation=False, root_method=root_method)
    expected = shampoo_reference(params, grads, learning_rate=0.05, **kwargs)
    actual = _run(tfopt.Shampoo(0.05, **kwargs), params, grads, dtype="float32")
    _assert_close_to_motion(actual, expected, params, 1e-3)


def test_inverse_pth_root_is_a_root():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 9))
    a = x @ x.T
    for p in (2, 4, 6):
        root, error = _matrix_functions.matrix_inverse_pth_root(tf.constant(a), p, 1e-6, True)
        ridge = 1e-6 * np.linalg.eigvalsh(a).max()
        w, v = np.linalg.eigh(a + ridge * np.eye(5))
        np.testing.assert_allclose(root.numpy(), (v * w ** (-1.0 / p)) @ v.T, rtol=1e-5)
        assert float(error) < 1e-6


def test_block_layout_round_trip():
    layout = _matrix_functions.BlockLayout((3, 3, 4, 40), block_size=16, merge_dims_to=None)
    assert layout.split_sizes == [[3], [3], [4], [16, 16, 8]]
    x = tf.reshape(tf.range(3 * 3 * 4 * 40, dtype=tf.float32), (3, 3, 4, 40))
    np.testing.assert_array_equal(layout.merge(layout.partition(x)).numpy(), x.numpy())
    assert _matrix_functions.merge_small_dims([1, 2, 512, 1, 2048, 1, 3, 4], 1024) == [
        1024, 2048, 12]  # fmt: skip


# --- Arguments --------------------------------------------------------------------

BAD = [
    ("block_size", -1), ("block_size", 2.5), ("beta_1", 1.0), ("beta_2", 1.5),
    ("matrix_epsilon", -1e-6), ("diagonal_epsilon", -1.0), ("start_preconditioning_step", -1),
    ("precondition_frequency", 0), ("graft_type", "adagrad_normalized"),
    ("inverse_failure_threshold", 0.0), ("skip_preconditioning_rank_lt", -1),
    ("nesterov", "yes"), ("merge_small_dims_block_size", 0), ("coupled_weight_decay", -0.1),
    ("root_method", "lobpcg"),
]  # fmt: skip


@pytest.mark.parametrize("argument, value", BAD, ids=[f"{a}={v}" for a, v in BAD])
def test_rejects_bad_values(argument, value):
    with pytest.raises(ValueError, match=re.escape(f"Received: {argument}={value!r}")):
        tfopt.get("shampoo", **{argument: value})


@pytest.mark.parametrize("name", ["beta1", "beta2", "preconditioning_compute_steps",
                                  "batch_axis_name", "exponent_override",
                                  "statistics_compute_steps", "decoupled_weight_decay"])  # fmt: skip
def test_optax_only_arguments_are_clear_errors(name):
    with pytest.raises(ValueError, match=rf"optax-shampoo's `{name}`.*Received: {name}="):
        tfopt.Shampoo(**{name: 1})


def test_get_by_name():
    optimizer = tfopt.get("shampoo", learning_rate=0.1, block_size=64, graft_type="rmsprop")
    assert isinstance(optimizer, tfopt.Shampoo)
    assert (optimizer.block_size, optimizer.graft_type) == (64, "rmsprop")


# get_config as tfopt.Shampoo wrote it before coupled_weight_decay (3146436) and
# root_method (c795aa1) existed, when every root was Newton's: the optimizer of
# tests/fixtures/old_checkpoints/096621c/*-shampoo/model.keras.
OLD_CONFIG = {
    "name": "shampoo", "learning_rate": 0.001, "weight_decay": None, "clipnorm": None,
    "global_clipnorm": None, "clipvalue": None, "use_ema": False, "ema_momentum": 0.99,
    "ema_overwrite_frequency": None, "loss_scale_factor": None, "gradient_accumulation_steps": None,
    "block_size": 32, "beta_1": 0.9, "beta_2": 0.999, "diagonal_epsilon": 1e-10,
    "matrix_epsilon": 1e-06, "relative_matrix_epsilon": True, "start_preconditioning_step": 5,
    "precondition_frequency": 1, "graft_type": "sgd", "nesterov": True,
    "inverse_failure_threshold": 0.1, "skip_preconditioning_dim_size_gt": 4096,
    "skip_preconditioning_rank_lt": 1, "best_effort_shape_interpretation": True,
    "merge_small_dims_block_size": 4096, "split_preconditioner_work": True,
}  # fmt: skip


def test_a_config_from_before_root_method_loads_as_newton():
    """An old saved optimizer is the same run: Newton roots, as when it was saved;
    through from_config, Keras' deserialize (what .keras loading calls) and tfopt.get."""
    assert tfopt.Shampoo.from_config(dict(OLD_CONFIG)).root_method == "newton"
    with_decay = {**OLD_CONFIG, "coupled_weight_decay": 0.0}  # 3146436 to c795aa1.
    assert tfopt.Shampoo.from_config(with_decay).root_method == "newton"
    serialized = {"module": "tfopt._shampoo", "class_name": "Shampoo", "config": dict(OLD_CONFIG),
                  "registered_name": "tfopt>Shampoo"}  # fmt: skip
    assert keras.optimizers.deserialize(serialized).root_method == "newton"
    assert tfopt.get(serialized).root_method == "newton"
    # Not the caller's dict edited.
    assert "root_method" not in OLD_CONFIG


@pytest.mark.parametrize("root_method", ["eigh", "newton"])
def test_get_config_round_trips_root_method(root_method):
    config = tfopt.Shampoo(root_method=root_method).get_config()
    assert config["root_method"] == root_method
    assert set(config) >= set(OLD_CONFIG)  # What from_config tells an old config by.
    assert tfopt.Shampoo.from_config(config).root_method == root_method


def test_a_partial_config_takes_the_default_root():
    """A hand-written config (not get_config's) without root_method takes today's default."""
    assert tfopt.get({"class_name": "shampoo", "config": {"learning_rate": 0.1}}).root_method == "eigh"
    assert tfopt.Shampoo.from_config({"learning_rate": 0.1, "block_size": 32}).root_method == "eigh"


# --- Split over replicas ------------------------------------------------------------


def test_assign_owners_balances_cubes():
    sizes = [128, 128, 64, 64, 64, 32, 16, 16, 8]
    costs = [_sharded_preconditioner.matrix_cost(n) for n in sizes]
    owners = _sharded_preconditioner.assign_owners(costs, 2)
    loads = [sum(c for c, o in zip(costs, owners, strict=True) if o == r) for r in range(2)]
    # The best split of these nine, by brute force over the 2**9 assignments.
    best = min(
        max(sum(c for c, b in zip(costs, bits, strict=True) if b),
            sum(c for c, b in zip(costs, bits, strict=True) if not b))
        for bits in itertools.product([0, 1], repeat=len(costs))
    )  # fmt: skip
    assert max(loads) == best
    assert best < 0.53 * sum(costs)
    assert _sharded_preconditioner.assign_owners(costs, 1) == [0] * len(costs)
    assert set(_sharded_preconditioner.assign_owners(costs, 64)) == set(range(len(costs)))


def test_sharded_map_computes_each_matrix_on_its_owner_only():
    """fn tags its result with the replica that ran it: each matrix comes back
    tagged by its owner alone, on both replicas, and nothing runs when disabled."""
    strategy = mirrored.two_cpus()
    sizes = [4, 3, 2, 2, 1]
    owners = _sharded_preconditioner.assign_owners([n**3 for n in sizes], 2)

    def fn(m):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return m + tf.cast(replica + 1, m.dtype)

    @tf.function
    def run(enabled):
        def replica_fn():
            matrices = [tf.zeros((n, n)) for n in sizes]
            return _sharded_preconditioner.sharded_map(fn, matrices, enabled=enabled)

        return strategy.run(replica_fn)

    for enabled, expect in ((True, lambda i: owners[i] + 1.0), (False, lambda i: 0.0)):
        results = run(tf.constant(enabled))
        for i, per_replica in enumerate(results):
            for value in strategy.experimental_local_results(per_replica):
                np.testing.assert_array_equal(value.numpy(), np.full((sizes[i],) * 2, expect(i)))


def _fit(strategy, split, epochs=3, **kwargs):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype("float32")
    y = np.tanh(x @ rng.normal(size=(6, 2))).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with strategy.scope():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(20, activation="tanh"),
                                  keras.layers.Dense(2)])  # fmt: skip
        model.compile(
            optimizer=tfopt.Shampoo(0.05, block_size=16, best_effort_shape_interpretation=False,
                                    start_preconditioning_step=1, precondition_frequency=2,
                                    split_preconditioner_work=split, **kwargs),  # 11 statistics.
            loss="mse",
        )  # fmt: skip
    initial = model.get_weights()
    model.fit(data, epochs=epochs, shuffle=False, verbose=0)
    return initial, model.get_weights()


@pytest.mark.slow  # 18-30 s each on a busy 2-core machine (Newton: tracing 11 loops, 4 times).
@pytest.mark.parametrize("split, kwargs", [(True, {}), (False, {}), (True, {"root_method": "newton"})],
                         ids=["split", "every_replica", "split-newton"])  # fmt: skip
def test_mirrored_matches_one_device(split, kwargs):
    """Keras' own model.fit over two logical CPUs, roots split or not, equals one
    device: with the default eigh refresh, and with optax's Newton one."""
    initial, on_two = _fit(mirrored.two_cpus(), split, **kwargs)
    _, on_one = _fit(tf.distribute.OneDeviceStrategy("CPU:0"), split, **kwargs)
    for w0, w2, w1 in zip(initial, on_two, on_one, strict=True):
        assert not np.allclose(w1, w0)
        np.testing.assert_allclose(w2, w1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("root_method", ["eigh", "newton"])
def test_xla_matches_no_xla(root_method):
    """The step compiles under XLA (XLA's eigh or a while_loop Newton, cond refresh)
    and takes the same steps.

    Without the outer jit the eigh refresh runs outside XLA, in TensorFlow's
    eigh; inside it, XLA's CPU eigh, a Jacobi loop that stops near 1e-6
    relative (its float64 roots 2e-6 to 8e-6 from NumPy's, TensorFlow's 1e-11;
    2026-12-02): 3.4e-4 of the motion apart here, in float32 and float64
    alike. Newton is the same XLA loop in both runs.
    """
    params, grads = _problem(steps=3, shapes=SMALL_SHAPES)
    kwargs = dict(block_size=8, best_effort_shape_interpretation=False, start_preconditioning_step=1,
                  root_method=root_method)
    expected = _run(tfopt.Shampoo(0.05, **kwargs), params, grads, dtype="float32")
    optimizer = tfopt.Shampoo(0.05, **kwargs)
    variables = [keras.Variable(p, dtype="float32") for p in params]
    optimizer.build(variables)

    @tf.function(jit_compile=True)
    def step(g):
        optimizer.apply(g, variables)

    actual = []
    for g in grads:
        step([tf.constant(x, tf.float32) for x in g])
        actual.append([v.numpy().astype(np.float64) for v in variables])
    if root_method == "newton":
        for got, want in zip(actual, expected, strict=True):
            for a, w in zip(got, want, strict=True):
                np.testing.assert_allclose(a, w, rtol=1e-4, atol=1e-5)
    else:
        _assert_close_to_motion(actual, expected, params, 1e-3)
