"""No batched matmul that broadcasts in SOAP's and Shampoo's TensorFlow step graphs.

TensorFlow 2.21's CPU batch matmul (the oneDNN kernel, on by default) mishandles
a broadcast batch: ``tf.matmul`` of a float32 ``(2, 1, 128, 16)`` tensor with a
``(16, 16)`` or ``(1, 16, 16)`` one returns wrong values, and at other sizes
corrupts the heap (SIGSEGV, "corrupted double-linked list").
tensorflow/tensorflow#117700 and #123109; docs/upstream.md has the reproducer.
SOAP once crashed on it (a ``(2, 1, 256, 16)`` stack of the gradient and the
moment against a ``(1, 16, 16)`` basis, commit 4e4b889), so every batched
matmul in these step graphs must take operands of one batch shape.

The graphs are traced (never run) with tile stacks, uneven tiles, a conv
kernel and size-1 dimensions, on one device and under MirroredStrategy (SOAP's
split refresh), with every nested function (conds, while loops) searched.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfopt
from tests.tfopt import mirrored

pytestmark = pytest.mark.tensorflow_only("traces TensorFlow graphs (tf.function, tf.distribute)")

SHAPES = [(40, 24), (3, 3, 4, 8), (10,), (1, 48, 16), (2, 1, 32, 16)]
_NESTED = ("f", "then_branch", "else_branch", "body", "cond", "branches")


def _operations(graph, seen=None):
    """Every operation of ``graph`` and of the functions it calls, at any depth."""
    seen = set() if seen is None else seen
    for op in graph.get_operations():
        yield op
        for attr in _NESTED:
            try:
                value = op.get_attr(attr)
            except ValueError:
                continue
            for function in value if isinstance(value, list) else [value]:
                if function.name not in seen:
                    seen.add(function.name)
                    yield from _operations(graph._get_function(function.name).graph, seen)


def broadcast_batch_matmuls(function) -> list[str]:
    """The batched matmuls of ``function``'s graph whose operands' batch shapes differ."""
    found = []
    for op in _operations(function.get_concrete_function().graph):
        if op.type.startswith("BatchMatMul"):
            a, b = (tuple(x.shape) for x in op.inputs)
            if a[:-2] != b[:-2]:
                found.append(f"{op.type} {a} x {b}")
    return found


def _step(optimizer):
    rng = np.random.default_rng(0)
    variables = [keras.Variable(np.ones(s, "float32")) for s in SHAPES]
    gradients = [tf.constant(rng.normal(size=s).astype("float32")) for s in SHAPES]
    optimizer.build(variables)
    return variables, gradients


def test_the_check_sees_a_broadcast():
    a, b = tf.ones((2, 1, 4, 3)), tf.ones((1, 3, 3))
    assert broadcast_batch_matmuls(tf.function(lambda: tf.matmul(a, b)))
    nested = tf.function(lambda: tf.cond(a[0, 0, 0, 0] > 0, lambda: tf.matmul(a, b), lambda: a))
    assert broadcast_batch_matmuls(nested)
    assert not broadcast_batch_matmuls(tf.function(lambda: tf.matmul(a, tf.ones((2, 1, 3, 3)))))


OPTIMIZERS = {
    "soap_tiles": lambda: tfopt.SOAP(block_size=16, precondition_frequency=1),
    "soap_untiled": lambda: tfopt.SOAP(block_size=None, precondition_frequency=1),
    "shampoo_newton": lambda: tfopt.Shampoo(block_size=16, start_preconditioning_step=1),
    "shampoo_eigh": lambda: tfopt.Shampoo(
        block_size=16, start_preconditioning_step=1, root_method="eigh"
    ),
}


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_one_device_step_has_no_broadcast_batch_matmul(make):
    optimizer = make()
    variables, gradients = _step(optimizer)

    @tf.function
    def step():
        optimizer.apply(gradients, variables)

    assert broadcast_batch_matmuls(step) == []


# SOAP only: its split refresh (tfopt/_soap_split.py) has matmuls of its own;
# Shampoo's split roots run the one-device matrix functions checked above (and
# take ~17 s to trace here).
def test_mirrored_split_soap_step_has_no_broadcast_batch_matmul():
    strategy = mirrored.two_cpus()
    with strategy.scope():
        optimizer = OPTIMIZERS["soap_tiles"]()
        variables, gradients = _step(optimizer)
    assert optimizer.split_preconditioner_work

    def replica_step():
        optimizer.apply(gradients, variables)

    @tf.function
    def step():
        strategy.run(replica_step)

    assert broadcast_batch_matmuls(step) == []
    # The split path was traced: each replica picks its share with tf.switch_case.
    assert any("Case" in op.type for op in _operations(step.get_concrete_function().graph))
