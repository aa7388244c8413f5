"""tfopt.LARS against a NumPy reference written from optax.lars.

optax (optax/_src/alias.py) defines LARS as the chain
``add_decayed_weights(weight_decay, mask=weight_decay_mask)``,
``masked(scale_by_trust_ratio(trust_coefficient, eps), trust_ratio_mask)``,
``scale_by_learning_rate(learning_rate)``, ``trace(momentum, nesterov)``;
``scale_by_trust_ratio`` (optax/_src/transform.py) falls back to a ratio of 1
when either norm is zero. The reference below spells that chain out.
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


def lars(
    params,
    grads,
    *,
    learning_rate=1.0,
    momentum=0.9,
    weight_decay=0.0,
    trust_coefficient=0.001,
    eps=0.0,
    nesterov=False,
    decay_mask=None,
    adapt_mask=None,
):
    """Trajectory of optax.lars; ``*_mask[i]`` False excludes variable ``i``."""
    thetas = [np.array(p, np.float64) for p in params]
    traces = [np.zeros_like(t) for t in thetas]
    decay_mask = decay_mask or [True] * len(thetas)
    adapt_mask = adapt_mask or [True] * len(thetas)
    out = []
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            g = np.asarray(g, np.float64) + (weight_decay * thetas[i] if decay_mask[i] else 0.0)
            if adapt_mask[i]:
                param_norm, update_norm = np.linalg.norm(thetas[i]), np.linalg.norm(g)
                ratio = trust_coefficient * param_norm / (update_norm + eps)
                g = g * (1.0 if param_norm == 0 or update_norm == 0 else ratio)
            u = -learning_rate * g  # scale_by_learning_rate
            traces[i] = u + momentum * traces[i]  # trace
            thetas[i] = thetas[i] + (u + momentum * traces[i] if nesterov else traces[i])
        out.append([t.copy() for t in thetas])
    return out


def _problem(steps=5, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=(4, 3)), 0.1 * rng.normal(size=3)]  # a kernel and a bias
    grads = [[rng.normal(size=(4, 3)), rng.normal(size=3)] for _ in range(steps)]
    return params, grads


def _run(optimizer, params, grads, names=("dense/kernel", "dense/bias")):
    variables = [
        keras.Variable(p, dtype="float32", name=n.split("/")[-1])
        for p, n in zip(params, names, strict=True)
    ]
    out = []
    for step_grads in grads:
        optimizer.apply([_tensor(g) for g in step_grads], variables)
        out.append([v.numpy() for v in variables])
    return out


@pytest.mark.parametrize(
    "hparams",
    [
        dict(learning_rate=1.0),
        dict(learning_rate=0.5, momentum=0.8, nesterov=True),
        dict(learning_rate=2.0, weight_decay=0.01, trust_coefficient=0.02, eps=1e-3),
        dict(learning_rate=1.0, momentum=0.0, weight_decay=0.1),
    ],
    ids=["defaults", "nesterov", "decay-and-eps", "no-momentum"],
)
def test_matches_optax_reference(hparams):
    params, grads = _problem()
    expected = lars(params, grads, **hparams)
    assert_trajectories_close(_run(tfopt.LARS(**hparams), params, grads), expected)


def test_exclusions_map_onto_optax_masks():
    params, grads = _problem()
    hparams = dict(learning_rate=1.0, weight_decay=0.05, trust_coefficient=0.01)
    opt = tfopt.LARS(**hparams, exclude_from_layer_adaptation=["bias$"])
    opt.exclude_from_weight_decay(var_names=["bias"])  # Keras' weight-decay mask.
    expected = lars(params, grads, **hparams, decay_mask=[True, False], adapt_mask=[True, False])
    assert_trajectories_close(_run(opt, params, grads), expected)


@pytest.mark.tensorflow_only("plain tf.Variable (named, no path) is TensorFlow's")
def test_exclusion_regexes_work_on_plain_tf_variables():
    import tensorflow as tf

    # tf.Variable has no `.path`; its name ("dense/bias:0") is matched instead.
    params, grads = _problem(steps=2)
    variables = [
        tf.Variable(p, dtype=tf.float32, name=n)
        for p, n in zip(params, ["dense/kernel", "dense/bias"], strict=True)
    ]
    opt = tfopt.LARS(1.0, exclude_from_layer_adaptation=["dense/bias"])
    for step_grads in grads:
        opt.apply([_tensor(g) for g in step_grads], variables)
    expected = lars(params, grads, adapt_mask=[True, False])
    assert_trajectories_close([[v.numpy() for v in variables]], [expected[-1]])


def test_weight_decay_is_applied_once_inside_the_trust_ratio():
    # Without momentum or adaptation, one step is w - lr * (g + wd * w). Keras'
    # inherited decoupled decay would subtract another lr * wd * w.
    w0, g = np.array([3.0, -4.0]), np.array([0.5, 0.25])
    lr, wd = 0.1, 0.5
    opt = tfopt.LARS(lr, momentum=0.0, weight_decay=wd, exclude_from_layer_adaptation=[".*"])
    w = keras.Variable(w0, dtype="float32")
    opt.apply([_tensor(g)], [w])
    np.testing.assert_allclose(w.numpy(), w0 - lr * (g + wd * w0), rtol=1e-6)


def test_zero_norm_falls_back_to_a_ratio_of_one():
    # optax's safe ratio: a zero bias takes a plain learning_rate-sized step.
    bias, g = keras.Variable(np.zeros(3), dtype="float32"), np.array([1.0, -2.0, 0.5])
    tfopt.LARS(0.1).apply([_tensor(g)], [bias])
    np.testing.assert_allclose(bias.numpy(), -0.1 * g, rtol=1e-6)


@pytest.mark.tensorflow_only("tf.IndexedSlices gradients exist only on TensorFlow")
def test_sparse_gradient_is_applied_as_its_dense_value():
    import tensorflow as tf

    params, grads = _problem(steps=1)
    table = keras.Variable(params[0], dtype="float32", name="kernel")
    g = grads[0][0]
    rows = tf.IndexedSlices(
        _tensor(g[[0, 2]]), tf.constant([0, 2]), tf.constant([4, 3])
    )
    dense_g = np.zeros_like(g)
    dense_g[[0, 2]] = g[[0, 2]]
    expected = lars([params[0]], [[dense_g]])
    tfopt.LARS(1.0).apply([rows], [table])
    np.testing.assert_allclose(table.numpy(), expected[0][0], rtol=2e-5, atol=1e-6)


def test_config_round_trip_keeps_exclusions():
    opt = tfopt.LARS(
        0.3, weight_decay=1e-4, nesterov=True, exclude_from_layer_adaptation=["bias", "bn"]
    )
    clone = tfopt.LARS.from_config(opt.get_config())
    assert clone.get_config() == opt.get_config()
    assert clone.get_config()["exclude_from_layer_adaptation"] == ["bias", "bn"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(momentum=1.0), "momentum=1.0"),
        (dict(weight_decay=-0.1), "weight_decay=-0.1"),
        (dict(trust_coefficient=0.0), "trust_coefficient=0.0"),
        (dict(eps=-1e-3), "eps=-0.001"),
        (dict(nesterov="yes"), "nesterov='yes'"),
        (dict(learning_rate=-1.0), "learning_rate=-1.0"),
        (dict(exclude_from_layer_adaptation="bias"), "exclude_from_layer_adaptation='bias'"),
        (dict(exclude_from_layer_adaptation=["("]), "exclude_from_layer_adaptation=['(']"),
    ],
    ids=[
        "momentum",
        "weight_decay",
        "trust_coefficient",
        "eps",
        "nesterov",
        "learning_rate",
        "bare-string",
        "bad-regex",
    ],
)
def test_invalid_hyperparameters_name_the_received_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tfopt.LARS(**kwargs)
