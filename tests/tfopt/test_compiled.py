"""tfopt._compiled: Shampoo's and SOAP's XLA-compiled step equals their keras.ops step.

The reference tests (test_shampoo.py, test_soap.py) run on one TF device,
so they go through the compiled path; the keras.ops path is what runs under
tf.distribute and on the other backends. Here the two are run side by side.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tfopt import _compiled

pytestmark = pytest.mark.tensorflow_only("the compiled step is XLA through tf.function, TensorFlow's")

SHAPES = [(6, 4), (4,), (2, 2, 3)]


def _run(cls, compiled: bool, steps: int = 4, **kwargs):
    optimizer_cls = cls if compiled else type("Plain", (cls,), {"_compile_update": False})
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s)) for s in SHAPES]
    optimizer = optimizer_cls(**kwargs)
    optimizer.build(variables)

    @tf.function
    def step(grads):
        optimizer.apply(grads, variables)

    for _ in range(steps):
        step([tf.constant(rng.normal(size=s)) for s in SHAPES])
    return [v.numpy() for v in variables], optimizer


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        # The default root_method, "eigh": two compiled halves, the refresh
        # between them outside XLA.
        (tfopt.Shampoo, dict(learning_rate=0.1, block_size=4, precondition_frequency=3,
                             start_preconditioning_step=1, graft_type="rmsprop")),
        # One compiled function, the batched Newton loop inside it.
        (tfopt.Shampoo, dict(learning_rate=0.1, block_size=4, precondition_frequency=3,
                             start_preconditioning_step=1, graft_type="rmsprop",
                             root_method="newton")),
        (type("CompiledSOAP", (tfopt.SOAP,), {"_compile_update": True}),
         dict(learning_rate=0.1, precondition_frequency=3)),  # Off by default: measured slower.
    ],
    ids=["shampoo", "shampoo-newton", "soap"],
)  # fmt: skip
def test_compiled_step_equals_the_keras_ops_step(cls, kwargs):
    assert _compiled.eligible(cls())
    compiled, optimizer = _run(cls, True, **kwargs)
    # The compiled functions were built and used: the step really went through XLA.
    assert optimizer.__dict__.get("_tfopt_compiled_whole") or optimizer.__dict__.get(
        "_tfopt_compiled_steps"
    )
    if isinstance(optimizer, tfopt.Shampoo):  # Which step: eigh's two halves, or Newton's one.
        names = {key[0] for key in optimizer.__dict__["_tfopt_compiled_whole"]}
        assert names == ({"step"} if optimizer.root_method == "newton" else {"statistics", "apply"})
    plain, _ = _run(cls, False, **kwargs)
    start = [np.random.default_rng(0).normal(size=s) for s in SHAPES]
    for a, b, w0 in zip(compiled, plain, start, strict=True):
        assert np.abs(a - w0).max() > 1e-3  # It moved.
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_not_eligible_under_a_strategy_or_when_opted_out():
    assert _compiled.eligible(tfopt.Shampoo())
    with tf.distribute.OneDeviceStrategy("CPU:0").scope():  # Cross-replica context.
        assert not _compiled.eligible(tfopt.Shampoo())
    strategy = tf.distribute.MirroredStrategy(["CPU:0"])
    assert not strategy.run(lambda: tf.constant(_compiled.eligible(tfopt.Shampoo())))
    assert not _compiled.eligible(tfopt.SOAP())  # SOAP opts out: measured slower compiled.


@pytest.mark.parametrize("root_method", ["eigh", "newton"])
def test_one_device_strategy_replica_context_is_compiled(root_method):
    """``strategies.fit(strategy="one_device")`` and ``strategy.run``: the compiled step,
    the same weights as without a strategy."""
    kwargs = dict(learning_rate=0.1, block_size=4, precondition_frequency=3,
                  start_preconditioning_step=1, root_method=root_method)  # fmt: skip
    expected, _ = _run(tfopt.Shampoo, True, **kwargs)
    strategy = tf.distribute.OneDeviceStrategy("CPU:0")
    rng = np.random.default_rng(0)
    with strategy.scope():
        variables = [keras.Variable(rng.normal(size=s)) for s in SHAPES]
        optimizer = tfopt.Shampoo(**kwargs)
        optimizer.build(variables)

    @tf.function
    def step(grads):
        strategy.run(optimizer.apply, args=(grads, variables))

    for _ in range(4):
        step([tf.constant(rng.normal(size=s)) for s in SHAPES])
    assert optimizer.__dict__.get("_tfopt_compiled_whole")
    for a, b in zip([v.numpy() for v in variables], expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
