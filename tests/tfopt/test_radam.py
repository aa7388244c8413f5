"""tfopt.RAdam against a NumPy reference written from optax.radam.

optax (optax/_src/transform.py, ``scale_by_radam`` with ``eps_root=0``,
followed by ``scale_by_learning_rate``): Adam's moments and bias corrections;
``rho_inf = 2 / (1 - b2) - 1``, ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``;
where ``rho_t >= threshold`` the update is ``r_t m_hat / (sqrt(v_hat) + eps)``
with ``r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2)
rho_t))``, otherwise ``m_hat``.
"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
from keras import ops

import tfopt
from tests.tfopt.references import assert_trajectories_close


def _tensor(x, dtype="float32"):
    """A backend tensor (any KERAS_BACKEND) of ``x``."""
    return ops.convert_to_tensor(np.asarray(x, dtype))


def rho(t, beta_2):
    rho_inf = 2 / (1 - beta_2) - 1
    return rho_inf - 2 * t * beta_2**t / (1 - beta_2**t), rho_inf


def radam(
    params, grads, *, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8, threshold=5.0
):
    """Trajectory of optax.radam."""
    thetas = [np.array(p, np.float64) for p in params]
    ms = [np.zeros_like(t) for t in thetas]
    vs = [np.zeros_like(t) for t in thetas]
    out = []
    for t, step_grads in enumerate(grads, start=1):
        rho_t, rho_inf = rho(t, beta_2)
        for i, g in enumerate(step_grads):
            g = np.asarray(g, np.float64)
            ms[i] = beta_1 * ms[i] + (1 - beta_1) * g
            vs[i] = beta_2 * vs[i] + (1 - beta_2) * g**2
            m_hat = ms[i] / (1 - beta_1**t)
            v_hat = vs[i] / (1 - beta_2**t)
            if rho_t >= threshold:
                r_t = np.sqrt(
                    (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
                )
                u = r_t * m_hat / (np.sqrt(v_hat) + epsilon)
            else:
                u = m_hat
            thetas[i] = thetas[i] - learning_rate * u
        out.append([t.copy() for t in thetas])
    return out


def _problem(steps=8, seed=2):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=(3, 2)), rng.normal(size=2)]
    grads = [[rng.normal(size=(3, 2)), rng.normal(size=2)] for _ in range(steps)]
    return params, grads


def _run(optimizer, params, grads):
    variables = [keras.Variable(p, dtype="float32") for p in params]
    out = []
    for step_grads in grads:
        optimizer.apply(
            [
                _tensor(g) if isinstance(g, np.ndarray) else g
                for g in step_grads
            ],
            variables,
        )
        out.append([v.numpy() for v in variables])
    return out


CASES = {
    "defaults": dict(learning_rate=1e-2),
    "small-beta_2": dict(learning_rate=1e-2, beta_1=0.8, beta_2=0.9, epsilon=1e-6),
    "higher-threshold": dict(learning_rate=1e-2, beta_2=0.9, threshold=6.5),
}


@pytest.mark.parametrize("hparams", CASES.values(), ids=CASES.keys())
def test_matches_optax_reference(hparams):
    params, grads = _problem()
    assert_trajectories_close(
        _run(tfopt.RAdam(**hparams), params, grads), radam(params, grads, **hparams)
    )


@pytest.mark.parametrize("hparams", CASES.values(), ids=CASES.keys())
def test_cases_cover_both_phases(hparams):
    # Guards the cases above: each 8-step run starts with momentum steps and
    # ends with rectified Adam steps, so both branches are compared.
    rectified = [
        rho(t, hparams.get("beta_2", 0.999))[0] >= hparams.get("threshold", 5.0)
        for t in range(1, 9)
    ]
    assert not rectified[0] and rectified[-1]


@pytest.mark.tensorflow_only("tf.IndexedSlices gradients exist only on TensorFlow")
def test_sparse_gradient_is_applied_as_its_dense_value():
    import tensorflow as tf

    params, grads = _problem(steps=6)
    sparse_grads, dense_grads = [], []
    for g_kernel, g_bias in grads:
        dense = np.zeros_like(g_kernel)
        dense[[0, 2]] = g_kernel[[0, 2]]
        rows = tf.IndexedSlices(
            _tensor(g_kernel[[0, 2]]), tf.constant([0, 2]), tf.constant([3, 2])
        )
        sparse_grads.append([rows, g_bias])
        dense_grads.append([dense, g_bias])
    hparams = dict(learning_rate=1e-2, beta_2=0.9)
    assert_trajectories_close(
        _run(tfopt.RAdam(**hparams), params, sparse_grads), radam(params, dense_grads, **hparams)
    )


def test_float16_variables_keep_float32_step_scalars():
    # rho_t and 1 - beta_2**t are computed in float32, so float16 variables
    # follow the reference to float16 precision instead of drifting.
    params, grads = _problem(steps=6)
    variables = [keras.Variable(p, dtype="float16") for p in params]
    opt = tfopt.RAdam(1e-2, beta_2=0.9)
    for step_grads in grads:
        opt.apply([_tensor(g, "float16") for g in step_grads], variables)
    expected = radam(params, grads, learning_rate=1e-2, beta_2=0.9)[-1]
    for v, want in zip(variables, expected, strict=True):
        np.testing.assert_allclose(v.numpy().astype(np.float64), want, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(threshold=4.0), "threshold=4.0"),
        (dict(beta_1=1.5), "beta_1=1.5"),
        (dict(beta_2=1.0), "beta_2=1.0"),
        (dict(epsilon=-1.0), "epsilon=-1.0"),
    ],
    ids=["threshold", "beta_1", "beta_2", "epsilon"],
)
def test_invalid_hyperparameters_name_the_received_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tfopt.RAdam(**kwargs)


@pytest.mark.parametrize("fused", ["auto", False], ids=["fused", "keras_ops"])
@pytest.mark.parametrize("hparams", CASES.values(), ids=CASES.keys())
def test_float64_matches_the_reference_to_1e_12(hparams, fused):
    # Every step scalar stays float64 on every backend (tfopt/_dtypes.py: on
    # JAX and PyTorch, Keras' result_type and PyTorch's ops.maximum made them
    # float32, 1e-7 away). The reference takes Keras' float32 learning rate.
    params, grads = _problem()
    optimizer = tfopt.RAdam(**hparams, fused=fused)
    variables = [keras.Variable(p, dtype="float64") for p in params]
    got = []
    for step_grads in grads:
        optimizer.apply([_tensor(g, "float64") for g in step_grads], variables)
        got.append([ops.convert_to_numpy(v) for v in variables])
    assert all(v.dtype == "float64" for v in variables)
    expected = radam(params, grads, **{**hparams, "learning_rate": float(optimizer.learning_rate)})
    assert_trajectories_close(got, expected, rtol=1e-12, atol=1e-12)
