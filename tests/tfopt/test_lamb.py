"""tfopt.LAMB against a NumPy reference written from optax.lamb, and Keras' Lamb.

optax (optax/_src/alias.py) defines LAMB as the chain ``scale_by_adam(b1, b2,
eps, eps_root=0)``, ``add_decayed_weights(weight_decay, mask)``,
``scale_by_trust_ratio()`` (ratio ||w|| / ||u||, 1 when either norm is
zero; optax/_src/transform.py) and ``scale_by_learning_rate``.
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


def lamb(
    params,
    grads,
    *,
    learning_rate=1e-3,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-6,
    weight_decay=0.0,
    decay_mask=None,
    adapt_mask=None,
):
    """Trajectory of optax.lamb; ``*_mask[i]`` False excludes variable ``i``."""
    thetas = [np.array(p, np.float64) for p in params]
    ms = [np.zeros_like(t) for t in thetas]
    vs = [np.zeros_like(t) for t in thetas]
    decay_mask = decay_mask or [True] * len(thetas)
    adapt_mask = adapt_mask or [True] * len(thetas)
    out = []
    for t, step_grads in enumerate(grads, start=1):
        for i, g in enumerate(step_grads):
            g = np.asarray(g, np.float64)
            ms[i] = beta_1 * ms[i] + (1 - beta_1) * g
            vs[i] = beta_2 * vs[i] + (1 - beta_2) * g**2
            u = (ms[i] / (1 - beta_1**t)) / (np.sqrt(vs[i] / (1 - beta_2**t)) + epsilon)
            if decay_mask[i]:
                u = u + weight_decay * thetas[i]
            if adapt_mask[i]:
                param_norm, update_norm = np.linalg.norm(thetas[i]), np.linalg.norm(u)
                u = u * (1.0 if param_norm == 0 or update_norm == 0 else param_norm / update_norm)
            thetas[i] = thetas[i] - learning_rate * u
        out.append([t.copy() for t in thetas])
    return out


def _problem(steps=5, seed=1):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=(4, 3)), 0.1 * rng.normal(size=3)]
    grads = [[rng.normal(size=(4, 3)), rng.normal(size=3)] for _ in range(steps)]
    return params, grads


def _variables(params):
    return [
        keras.Variable(p, dtype="float32", name=n)
        for p, n in zip(params, ["kernel", "bias"], strict=True)
    ]


def _run(optimizer, params, grads):
    variables = _variables(params)
    out = []
    for step_grads in grads:
        optimizer.apply([_tensor(g) for g in step_grads], variables)
        out.append([v.numpy() for v in variables])
    return out


@pytest.mark.parametrize(
    "hparams",
    [
        dict(learning_rate=1e-2),
        dict(learning_rate=5e-2, beta_1=0.8, beta_2=0.99, epsilon=1e-4, weight_decay=0.1),
    ],
    ids=["defaults", "decay"],
)
def test_matches_optax_reference(hparams):
    params, grads = _problem()
    assert_trajectories_close(
        _run(tfopt.LAMB(**hparams), params, grads), lamb(params, grads, **hparams)
    )


def test_exclusions_map_onto_weight_decay_mask_and_trust_ratio():
    params, grads = _problem()
    hparams = dict(learning_rate=1e-2, weight_decay=0.3)
    opt = tfopt.LAMB(**hparams, exclude_from_layer_adaptation=["bias"])
    opt.exclude_from_weight_decay(var_names=["bias"])
    expected = lamb(params, grads, **hparams, decay_mask=[True, False], adapt_mask=[True, False])
    assert_trajectories_close(_run(opt, params, grads), expected)


def test_matches_keras_lamb_without_weight_decay():
    # Keras' Lamb has the same rule when there is no decay to place.
    params, grads = _problem()
    ours = _run(tfopt.LAMB(1e-2, epsilon=1e-6), params, grads)
    theirs = _run(keras.optimizers.Lamb(1e-2, epsilon=1e-6), params, grads)
    assert_trajectories_close(ours, theirs, rtol=1e-5)


def test_weight_decay_sits_inside_the_trust_ratio():
    # Inside the ratio, every step of an adapted variable has norm exactly
    # learning_rate * ||w||, however large the decay. Keras' Lamb decays
    # outside the ratio, so its step norm grows with weight_decay.
    params, grads = _problem(steps=1)
    lr = 1e-2
    for weight_decay in (0.0, 10.0):
        variables = _variables(params)
        tfopt.LAMB(lr, weight_decay=weight_decay).apply(
            [_tensor(g) for g in grads[0]], variables
        )
        for v, p in zip(variables, params, strict=True):
            step = np.linalg.norm(v.numpy() - p)
            np.testing.assert_allclose(step, lr * np.linalg.norm(p), rtol=1e-5)


@pytest.mark.tensorflow_only("tf.IndexedSlices gradients exist only on TensorFlow")
def test_sparse_gradient_is_applied_as_its_dense_value():
    import tensorflow as tf

    params, grads = _problem(steps=1)
    g = grads[0][0]
    dense_g = np.zeros_like(g)
    dense_g[[1, 3]] = g[[1, 3]]
    table = keras.Variable(params[0], dtype="float32")
    rows = tf.IndexedSlices(
        _tensor(g[[1, 3]]), tf.constant([1, 3]), tf.constant([4, 3])
    )
    tfopt.LAMB(1e-2).apply([rows], [table])
    np.testing.assert_allclose(
        table.numpy(), lamb([params[0]], [[dense_g]], learning_rate=1e-2)[0][0], rtol=2e-5
    )


def test_config_round_trip_keeps_exclusions():
    opt = tfopt.LAMB(2e-3, weight_decay=0.01, exclude_from_layer_adaptation=["bias", "norm"])
    clone = tfopt.get(keras.optimizers.serialize(opt))
    assert type(clone) is tfopt.LAMB
    assert clone.get_config() == opt.get_config()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(beta_1=1.0), "beta_1=1.0"),
        (dict(beta_2=-0.5), "beta_2=-0.5"),
        (dict(epsilon=0.0), "epsilon=0.0"),
        (dict(weight_decay=-1.0), "weight_decay=-1.0"),
        (dict(exclude_from_layer_adaptation=[3]), "exclude_from_layer_adaptation=[3]"),
    ],
    ids=["beta_1", "beta_2", "epsilon", "weight_decay", "non-string-pattern"],
)
def test_invalid_hyperparameters_name_the_received_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tfopt.LAMB(**kwargs)
