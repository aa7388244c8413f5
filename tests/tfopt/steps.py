"""Many optimizer steps on plain variables, compiled the way each Keras backend compiles.

The shared suites (test_conformance.py, test_references.py) run under any
``KERAS_BACKEND``. Their gradients are written with ``keras.ops`` (the
problems' gradients are known in closed form), so no tape is needed; what
differs per backend is only how a loop of steps is compiled:

* TensorFlow: one ``tf.function`` holding a ``tf.range`` loop of ``optimizer.apply``;
* JAX: one ``jax.jit`` of a ``lax.fori_loop`` of ``optimizer.stateless_apply``,
  the way a JAX user's own loop calls it, written back to the variables at the end;
* PyTorch: an eager loop of ``optimizer.apply`` (PyTorch does not trace).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras

GradFn = Callable[[list[Any]], list[Any]]


def run(optimizer: keras.optimizers.Optimizer, grad_fn: GradFn,
        variables: Sequence[keras.Variable], steps: int) -> None:  # fmt: skip
    """Takes ``steps`` steps of ``optimizer`` on ``variables``; ``grad_fn(values)`` gives the gradients."""
    variables = list(variables)
    optimizer.build(variables)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        _run_tensorflow(optimizer, grad_fn, variables, steps)
    elif backend == "jax":
        _run_jax(optimizer, grad_fn, variables, steps)
    elif backend == "torch":
        _run_torch(optimizer, grad_fn, variables, steps)
    else:
        raise ValueError(f"No step loop for the Keras backend {backend!r}.")


def _run_tensorflow(optimizer, grad_fn, variables, steps):
    import tensorflow as tf

    @tf.function
    def loop(n):
        for _ in tf.range(n):
            optimizer.apply(grad_fn([v.value for v in variables]), variables)

    loop(tf.constant(steps))


def _run_jax(optimizer, grad_fn, variables, steps):
    import jax

    def body(_, state):
        values, optimizer_values = state
        values, optimizer_values = optimizer.stateless_apply(
            optimizer_values, grad_fn(values), values
        )
        return list(values), list(optimizer_values)

    state = ([v.value for v in variables], [v.value for v in optimizer.variables])
    values, optimizer_values = jax.jit(lambda state: jax.lax.fori_loop(0, steps, body, state))(state)
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)
    for variable, value in zip(optimizer.variables, optimizer_values, strict=True):
        variable.assign(value)


def _run_torch(optimizer, grad_fn, variables, steps):
    import torch

    with torch.no_grad():
        for _ in range(steps):
            optimizer.apply(grad_fn([v.value for v in variables]), variables)
