"""`strategies.fit`'s checks of its model and data, before any step is taken.

Keras finds most of these problems itself, but late and far from their cause:
a batch of the wrong shape fails inside the traced step with a graph error, an
empty dataset "trains" zero steps with a warning, a label out of range turns
the loss into NaN (or, on CPU, an ``InvalidArgumentError`` from the sparse
cross-entropy kernel), a model built outside ``strategy.scope()`` fails deep
in the optimizer's first update under several replicas. Each check here raises
one ``ValueError`` that names the argument (``data``, ``validation_data``,
``model_fn``) and the received value, before the first step.

What is read: only the datasets' static ``element_spec`` and cardinality,
except for one first batch (label range, batch size when it is not static).
That batch is read only from a pipeline that reading cannot change: a
dataset whose graph holds a shuffle with ``reshuffle_each_iteration`` (or
another seeded random op) draws its next epoch's order whenever an iterator
is made, so peeking there would change the run. Such datasets get the static
checks only.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from strategies.compat import _tf_internals
from strategies.training import _data

# Dataset ops whose output changes each time an iterator is made from the same dataset.
_STATEFUL_OPS = ("ShuffleDatasetV2", "ShuffleDatasetV3", "ShuffleAndRepeatDatasetV2",
                 "RandomDatasetV2", "ExperimentalRandomDataset", "RandomDataset")  # fmt: skip


def check_model_in_scope(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Every variable the model (and its optimizer) already has was made under ``strategy``."""
    variables = list(model.weights)
    if model.optimizer is not None and model.optimizer.built:
        variables += list(model.optimizer.variables)
    outside = [v for v in variables if not strategy.extended.variable_created_in_scope(_tf_variable(v))]
    if outside:
        raise ValueError(
            "`model_fn()` must build the model and its optimizer inside `strategy.scope()` (fit calls "
            "it there): return a new model from the function instead of one made earlier. "
            f"Received: model {model.name!r} with {len(outside)} of {len(variables)} variables made "
            f"outside the scope of {type(strategy).__name__}, e.g. {_tf_variable(outside[0]).name!r}."
        )


def _tf_variable(variable: Any) -> Any:
    return getattr(variable, "value", variable) if isinstance(variable, keras.Variable) else variable


def check_data(model: keras.Model, data: _data.Data, strategy: tf.distribute.Strategy, name: str) -> None:
    """Shapes, dtypes, emptiness, batch divisibility and label range of ``data`` for ``model``."""
    local = _data.local_dataset(data, strategy)
    if int(local.cardinality()) == 0:
        raise ValueError(f"`{name}` is empty: it yields no batch. Received: {name}={_data._short(data)}.")
    x_spec, y_spec = _split(local.element_spec)
    _check_inputs(model, x_spec, name)
    if y_spec is not None:
        _check_labels_spec(model, y_spec, name)
    first = _first_batch(local) if _peekable(local) else None
    if first is not None and first is _EMPTY:
        raise ValueError(f"`{name}` is empty: it yields no batch. Received: {name}={_data._short(data)}.")
    if not _data.is_dataset_fn(data) and strategy.num_replicas_in_sync > 1:
        batch = _batch_size(x_spec, first)
        if batch is not None and batch % strategy.num_replicas_in_sync:
            raise ValueError(
                f"`{name}` holds global batches, which must divide evenly over the "
                f"{strategy.num_replicas_in_sync} replicas. Received: {name} with batch size {batch}."
            )
    if first is not None and y_spec is not None:
        _check_label_range(model, _split(first)[1], name)


_EMPTY = object()


def _split(element: Any) -> tuple[Any, Any]:
    if isinstance(element, (tuple, list)) and len(element) in (2, 3):
        return element[0], element[1]
    return element, None


def _peekable(dataset: tf.data.Dataset) -> bool:
    ops = _tf_internals.dataset_ops(dataset)
    return ops is not None and not ops & set(_STATEFUL_OPS)


def _first_batch(dataset: tf.data.Dataset) -> Any:
    for batch in dataset.take(1):
        return batch
    return _EMPTY


def _batch_size(x_spec: Any, first: Any) -> int | None:
    spec = tf.nest.flatten(x_spec)[0]
    if spec.shape.rank and spec.shape[0] is not None:
        return int(spec.shape[0])
    if first is not None and first is not _EMPTY:
        return int(tf.nest.flatten(_split(first)[0])[0].shape[0])
    return None


def _check_inputs(model: keras.Model, x_spec: Any, name: str) -> None:
    inputs = getattr(model, "inputs", None)
    specs = tf.nest.flatten(x_spec)
    for spec in specs:
        if not (spec.dtype.is_floating or spec.dtype.is_integer or spec.dtype.is_bool):
            raise ValueError(
                f"`{name}` must yield numeric features for the model. Received: features of "
                f"dtype {spec.dtype.name} and shape {spec.shape}."
            )
    if not inputs or len(inputs) != len(specs):
        return  # A subclassed model, or a structure this check does not map: Keras checks it.
    for spec, tensor in zip(specs, inputs, strict=True):
        want = tuple(tensor.shape)
        got = tuple(spec.shape.as_list()) if spec.shape.rank is not None else None
        if got is None:
            continue
        if len(got) != len(want) or any(g is not None and w is not None and g != w
                                         for g, w in zip(got[1:], want[1:], strict=True)):
            raise ValueError(
                f"`{name}` yields features of shape {_shape(got)}, but the model's input "
                f"{tensor.name!r} takes {_shape(want)} (the first axis is the batch). "
                f"Received: {name} with element_spec {x_spec}."
            )


def _shape(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _sparse_classes(model: keras.Model) -> int | None:
    """The number of classes when the loss takes class indices, else None."""
    loss = getattr(model, "loss", None)
    sparse = isinstance(loss, keras.losses.SparseCategoricalCrossentropy) or loss in (
        "sparse_categorical_crossentropy", keras.losses.sparse_categorical_crossentropy)
    outputs = getattr(model, "outputs", None)
    if not sparse or not outputs or len(outputs) != 1 or outputs[0].shape[-1] is None:
        return None
    return int(outputs[0].shape[-1])


def _check_labels_spec(model: keras.Model, y_spec: Any, name: str) -> None:
    specs = tf.nest.flatten(y_spec)
    if any(not (s.dtype.is_integer or s.dtype.is_floating or s.dtype.is_bool) for s in specs):
        raise ValueError(
            f"`{name}` must yield numeric labels. Received: labels of dtype "
            f"{', '.join(s.dtype.name for s in specs)}."
        )


def _check_label_range(model: keras.Model, labels: Any, name: str) -> None:
    classes = _sparse_classes(model)
    if classes is None:
        return
    values = np.asarray(tf.nest.flatten(labels)[0])
    if values.size == 0:
        return
    low, high = values.min(), values.max()
    if low < 0 or high >= classes or (values.dtype.kind == "f" and not np.all(values == np.round(values))):
        raise ValueError(
            f"`{name}` yields class labels outside [0, {classes}) for a model with {classes} outputs "
            f"and a sparse categorical loss. Received: labels from {low} to {high} in the first batch."
        )
