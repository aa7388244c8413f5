"""Update steps compiled with XLA, where that pays: Shampoo (SOAP opts out).

A Shampoo or SOAP step is hundreds of small ops per variable (block
partitions, Gram matrices, rotations, conds). Without XLA, TensorFlow
dispatches each one and writes each result to memory; that overhead, not the
arithmetic, made their steps 2-5x AdamW's on small models
(docs/benchmarks/second_order.md). Compiled, the ops of one variable's step
fuse into a few kernels.

Used only where it is sound and cannot surprise:

* the TensorFlow backend (JAX compiles the whole step already; PyTorch has no
  XLA here);
* outside any ``tf.distribute`` strategy, or in a ``OneDeviceStrategy``'s
  replica context (``strategies.fit`` with ``strategy="one_device"``): under
  Mirrored and the like, ``update_step`` runs per replica on per-replica
  variables, and Shampoo's split roots need their merge_call;
* outside an enclosing XLA context (``jit_compile=True``, TPUs): the step is
  compiled there already.

SOAP sets ``_compile_update = False``: compiled, its 784-wide autoencoder
step was 2x slower (docs/benchmarks/second_order.md).

Elsewhere the optimizer runs its ``keras.ops`` code as it is; the compiled
function runs that same code (tests/tfopt/test_shampoo.py and test_soap.py
check both against the references).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras


def eligible(optimizer: Any) -> bool:
    """Whether ``optimizer``'s update step here would be compiled (module docstring).

    An optimizer (or a benchmark's subclass) opts out with a class attribute
    ``_compile_update = False``.
    """
    if keras.backend.backend() != "tensorflow" or not getattr(optimizer, "_compile_update", True):
        return False
    import tensorflow as tf

    if tf.__internal__.get_enclosing_xla_context() is not None:
        return False
    if not tf.distribute.has_strategy():
        return True
    # A OneDeviceStrategy's variables are plain variables on its one device, and
    # in its replica context (`strategy.run`, Keras' `fit`) there is nothing to
    # reduce: the same as no strategy. (Its cross-replica `extended.update`,
    # where Keras calls `update_step`, is not: there the step stays uncompiled.)
    return isinstance(
        tf.distribute.get_strategy(), tf.distribute.OneDeviceStrategy
    ) and not tf.distribute.in_cross_replica_context()


class CompiledSteps:
    """One ``tf.function(jit_compile=True)`` per variable, built on first use.

    ``step(gradient, variable, learning_rate)`` is the optimizer's plain update
    step. The variable is closed over (its index picks the optimizer's slots at
    trace time, so two variables of one shape must not share a trace).
    """

    def __init__(self, step: Callable[[Any, Any, Any], None]) -> None:
        self._step = step
        self._functions: dict[int, tuple[Any, Any]] = {}

    def __call__(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        import tensorflow as tf

        from tfopt import _sparse

        key = id(variable)
        entry = self._functions.get(key)
        if entry is None or entry[0] is not variable:
            step = self._step

            def compiled(g: Any, lr: Any) -> None:
                step(g, variable, lr)

            entry = (variable, tf.function(compiled, jit_compile=True, autograph=False))
            self._functions[key] = entry
        entry[1](_sparse.densify(gradient), tf.convert_to_tensor(learning_rate))


def steps(optimizer: Any, step: Callable[[Any, Any, Any], None]) -> CompiledSteps:
    """``optimizer``'s :class:`CompiledSteps` of ``step``, made once.

    Kept out of Keras' attribute tracking (``object.__setattr__``): the
    functions are a cache, not state to save.
    """
    cache = optimizer.__dict__.get("_tfopt_compiled_steps")
    if cache is None:
        cache = CompiledSteps(step)
        object.__setattr__(optimizer, "_tfopt_compiled_steps", cache)
    return cache


def whole_step(
    optimizer: Any, step: Callable[[list, Any], None], name: str = "step"
) -> Callable[[list, Any], None]:
    """``step(pairs, learning_rate)`` over ``(gradient, variable)`` pairs, compiled once
    per set of variables (closed over, as in :class:`CompiledSteps`) and per ``name``
    (an optimizer may compile several steps, such as two halves of one)."""
    import tensorflow as tf

    from tfopt import _sparse

    cache = optimizer.__dict__.get("_tfopt_compiled_whole")
    if cache is None:
        cache = {}
        object.__setattr__(optimizer, "_tfopt_compiled_whole", cache)

    def run(pairs: list[tuple[Any, Any]], learning_rate: Any) -> None:
        variables = [v for _, v in pairs]
        key = (name, *(id(v) for v in variables))
        entry = cache.get(key)
        if entry is None or any(a is not b for a, b in zip(entry[0], variables, strict=True)):

            def compiled(grads: list[Any], lr: Any) -> None:
                step(list(zip(grads, variables, strict=True)), lr)

            entry = (variables, tf.function(compiled, jit_compile=True, autograph=False))
            cache[key] = entry
        grads = [_sparse.densify(g) for g, _ in pairs]
        entry[1](grads, tf.convert_to_tensor(learning_rate))

    return run
