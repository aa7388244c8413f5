"""The two input conventions `fit` accepts, turned into what each training path consumes.

* a ``tf.data.Dataset`` of **global** batches: the strategy splits every batch
  over the replicas (``experimental_distribute_dataset``);
* ``dataset_fn(input_context) -> tf.data.Dataset`` of **per-replica** batches:
  called once per input pipeline (``distribute_datasets_from_function``), and
  expected to shard by ``input_context.input_pipeline_id`` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

DatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]
Data = tf.data.Dataset | DatasetFn


def check(data: Any, name: str = "data") -> None:
    """Raises ValueError unless ``data`` follows one of the two conventions."""
    if isinstance(data, tf.data.Dataset) or (callable(data) and not isinstance(data, type)):
        return
    raise ValueError(
        f"`{name}` must be a tf.data.Dataset of global batches, or a function "
        "dataset_fn(input_context) returning a tf.data.Dataset of per-replica batches. "
        f"Received: {name}={_short(data)} of type {type(data).__name__}."
    )


def is_dataset_fn(data: Data) -> bool:
    return not isinstance(data, tf.data.Dataset)


def local_dataset(data: Data, strategy: tf.distribute.Strategy) -> tf.data.Dataset:
    """The dataset one input pipeline would read (for specs and coordinator-side loops)."""
    if not is_dataset_fn(data):
        return data
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=strategy.num_replicas_in_sync)
    dataset = data(context)
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            "`dataset_fn(input_context)` must return a tf.data.Dataset. "
            f"Received: {_short(dataset)} of type {type(dataset).__name__}."
        )
    return dataset


def element_spec(data: Data, strategy: tf.distribute.Strategy) -> Any:
    """TensorSpecs of one batch: enough to build a model without reading any data."""
    return local_dataset(data, strategy).element_spec


def for_keras(data: Data, strategy: tf.distribute.Strategy) -> Any:
    """What to hand to ``model.fit``: a Dataset as is (Keras distributes it), else a
    DistributedDataset made from the function."""
    if not is_dataset_fn(data):
        return data
    return strategy.distribute_datasets_from_function(data)


def skip(data: Data, steps: int) -> Data:
    """``data`` without its first ``steps`` batches (per pipeline for a dataset_fn)."""
    if steps <= 0:
        return data
    if not is_dataset_fn(data):
        return data.skip(steps)

    def skipped(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return data(context).skip(steps)

    return skipped


def cardinality(data: Data, strategy: tf.distribute.Strategy) -> int | None:
    """Batches per epoch when known and finite (per pipeline for a dataset_fn), else None."""
    n = int(local_dataset(data, strategy).cardinality())
    return n if n >= 0 else None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
