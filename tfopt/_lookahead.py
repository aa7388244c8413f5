"""Lookahead (Zhang et al., 2019): wraps any Keras 3 optimizer, as optax.lookahead."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import keras
from keras import ops

from tfopt._registry import register
from tfopt._validation import (
    check_greater_than,
    check_int,
    check_no_options,
    check_optimizer,
    check_unit_interval,
)
from tfopt._wrapper import InnerOptimizerMixin


@register("lookahead")
class Lookahead(InnerOptimizerMixin, keras.optimizers.Optimizer):
    """Lookahead: k fast steps forward, one slow step back, as ``optax.lookahead``.

    The wrapped ``optimizer`` takes every step on the model's variables (the
    "fast" weights). Lookahead keeps a "slow" copy of each variable, as
    optimizer state, and every ``sync_period`` steps pulls both together. With
    ``t`` the 1-based step and ``w`` the variable after the inner step (the
    definition of ``optax/_src/lookahead.py``, ``reset_state=False``)::

        if t % sync_period == 0:
            slow = slow + slow_step_size * (w - slow)
            w = slow

    The slow weights start equal to the variables. Between synchronizations
    the model holds the fast weights; right after one, fast and slow agree,
    so a run of a multiple of ``sync_period`` steps ends on the slow weights.

    How it fits Keras 3 (the shape of Keras' own ``LossScaleOptimizer`` and
    ``MultiOptimizer`` wrappers):

    * ``apply`` runs the whole inner ``apply`` (its clipping, weight decay,
      EMA, loss scale and all-reduce), then the synchronization as this
      optimizer's own ``update_step``, so that Keras places it on each
      replica's copy under ``tf.distribute`` (``MirroredStrategy`` works).
    * ``variables`` are Lookahead's (iterations and slow weights) followed by
      the inner optimizer's: ``.keras`` files and checkpoints keep both.
    * ``learning_rate`` and ``loss_scale_factor`` are the inner optimizer's.
    * ``get_config`` nests ``keras.optimizers.serialize(optimizer)``.

    Clipping, weight decay, EMA and the other Keras options belong to the
    inner optimizer; passing them to ``Lookahead`` is an error.

    Args:
      optimizer: the inner ("fast") optimizer, any ``keras.optimizers.Optimizer``
        (Keras' or tfopt's), not yet built on other variables.
      sync_period: number of fast steps between synchronizations, an int >= 1.
      slow_step_size: fraction of the way the slow weights move towards the
        fast ones at each synchronization, in (0, 1].
      name: the optimizer's name.

    Reference:
      Zhang et al., "Lookahead Optimizer: k steps forward, 1 step back", 2019,
      https://arxiv.org/abs/1907.08610

    Examples:
      >>> import keras, tfopt
      >>> opt = tfopt.Lookahead(tfopt.RAdam(1e-3), sync_period=6)  # "Ranger"
      >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
      >>> model.compile(optimizer=opt, loss="mse")
      >>> type(keras.optimizers.deserialize(keras.optimizers.serialize(opt))
      ...      .inner_optimizer).__name__
      'RAdam'
    """

    def __init__(
        self,
        optimizer: keras.optimizers.Optimizer,
        sync_period: int = 6,
        slow_step_size: float = 0.5,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        check_optimizer(optimizer)
        if getattr(optimizer, "gradient_accumulation_steps", None):
            raise ValueError(
                "Lookahead counts applied steps; wrap an optimizer without "
                "`gradient_accumulation_steps`. Received: "
                f"gradient_accumulation_steps={optimizer.gradient_accumulation_steps}."
            )
        check_int("sync_period", sync_period, 1)
        check_unit_interval("slow_step_size", slow_step_size, closed_right=True)
        check_greater_than("slow_step_size", slow_step_size, 0,
                           "at 0 the weights would be reset every sync")
        check_no_options("Lookahead", kwargs)
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer
        self.sync_period = sync_period
        self.slow_step_size = float(slow_step_size)

    def build(self, var_list: list[Any]) -> None:
        if self.built:
            return
        if not self.inner_optimizer.built:
            self.inner_optimizer.build(var_list)
        super().build(var_list)
        # Without a strategy, Keras' fit builds the optimizer while tracing the
        # first train step. The slow weights start as the variables' values,
        # so create them eagerly: a slot initialized from another variable
        # cannot be lifted out of the traced function (XLA would refuse it).
        with _init_scope():
            self._slow_weights = [
                None
                if self._overwrite_variable_with_gradient(variable)
                else self.add_variable_from_reference(
                    variable, name="slow", initializer=_value_of(variable)
                )
                for variable in var_list
            ]

    def apply(self, grads: list[Any], trainable_variables: list[Any] | None = None) -> None:
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if not self.built:
            self.build(trainable_variables)
        self.inner_optimizer.apply(grads, trainable_variables)
        # The synchronization needs no gradient. Scalar stand-ins route it
        # through Keras' per-variable update path, which runs update_step on
        # each replica's copy under tf.distribute, without all-reducing the
        # real gradients a second time.
        synced = [v for v in trainable_variables if not self._overwrite_variable_with_gradient(v)]
        if synced:
            super().apply([ops.zeros((), dtype=v.dtype) for v in synced], synced)
        else:
            self._iterations.assign_add(1)

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        del gradient, learning_rate  # The inner optimizer has used them.
        slow = self._slow_weights[self._get_variable_index(variable)]
        slow_step_size = ops.convert_to_tensor(self.slow_step_size, variable.dtype)

        def synchronize() -> None:
            self.assign(slow, slow + slow_step_size * (variable - slow))
            self.assign(variable, slow)

        is_sync_step = ops.equal((self.iterations + 1) % self.sync_period, 0)
        if keras.backend.backend() == "tensorflow":
            # Only a sync step reads and writes the weights.
            ops.cond(is_sync_step, synchronize, lambda: None)
            return
        # JAX traces a cond's branches as pure functions, so a write inside
        # one leaks its tracer (UnexpectedTracerError): select instead.
        w, w_slow = ops.convert_to_tensor(variable), ops.convert_to_tensor(slow)
        new_slow = w_slow + slow_step_size * (w - w_slow)
        self.assign(variable, ops.where(is_sync_step, new_slow, w))
        self.assign(slow, ops.where(is_sync_step, new_slow, w_slow))

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "optimizer": keras.optimizers.serialize(self.inner_optimizer),
            "sync_period": self.sync_period,
            "slow_step_size": self.slow_step_size,
        }

    @classmethod
    def from_config(
        cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None
    ) -> Lookahead:
        # Keras' deserialize() edits the dict it is given; keep the caller's.
        config = copy.deepcopy(config)
        optimizer = keras.optimizers.deserialize(
            config.pop("optimizer"), custom_objects=custom_objects
        )
        return cls(optimizer, **config)


def _init_scope() -> Any:
    """TensorFlow's ``init_scope`` (out of the traced step); other backends build eagerly."""
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    return tf.init_scope()


def _value_of(variable: Any) -> Any:
    """An initializer returning ``variable``'s value when the slot is created."""

    def initializer(shape: Any, dtype: Any = None) -> Any:
        del shape
        # A copy: JAX would otherwise hand the slot the variable's own buffer,
        # and a jitted step that donates both would donate it twice.
        return ops.copy(ops.cast(ops.convert_to_tensor(variable), dtype or variable.dtype))

    return initializer
