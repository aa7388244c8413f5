"""Input pipelines for `strategies.fit` from a prepared `launch._data.ImageDataset`.

Batching follows ``tf.distribute``'s conventions: ``--batch_size`` is global.
Single-host strategies get one dataset of global batches, which Keras splits
across replicas; multi-worker, parameter-server and TPU strategies get a
``dataset_fn(input_context)`` of per-replica batches, one input pipeline per
host, sharded by example (TFDS datasets often have fewer files than hosts).

A split small enough (``IN_MEMORY_MAX_BYTES``) is decoded once into memory, as
NumPy arrays given to ``model.fit`` would be; larger ones stream from TFDS.
Neither uses ``Dataset.cache()``, whose shared in-memory cache can serve a
truncated epoch when another iterator of the same dataset stops early.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from launch._data import DataError, ImageDataset

_SHUFFLE_BUFFER_MAX = 60_000
# Epoch e of a run with seed s shuffles with the seed s * stride + e (< 2**63 for s < 2**32).
_EPOCH_SEED_STRIDE = 2**24
_EPOCH_GRAPH_SEED = 20_240_611
# A split whose decoded images fit in this many bytes (mnist: 47 MB, cifar10:
# 150 MB) is read into memory once; larger ones stream from TFDS each epoch.
IN_MEMORY_MAX_BYTES = 256 * 2**20

InputFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]


def uses_input_fn(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy`` should read per-host pipelines of per-replica batches.

    Multi-worker and parameter-server strategies need one pipeline per worker;
    TPU pods need one per host and static shapes. Single-host strategies are
    simplest and fastest with one dataset of global batches.
    """
    per_host = (
        tf.distribute.MultiWorkerMirroredStrategy,
        tf.distribute.experimental.ParameterServerStrategy,
        tf.distribute.TPUStrategy,
    )
    return isinstance(strategy, per_host)


def drops_remainder(strategy: tf.distribute.Strategy) -> bool:
    """TPUs compile for one batch shape, so a partial last batch is dropped there."""
    return isinstance(strategy, tf.distribute.TPUStrategy)


def check_batch_size(global_batch_size: int, num_replicas: int) -> None:
    """Every replica gets the same share of a global batch."""
    if global_batch_size < 1 or global_batch_size % num_replicas:
        raise DataError(
            f"--batch_size is global and must be a positive multiple of the {num_replicas} "
            f"replicas. Received: batch_size={global_batch_size}."
        )


def _pipeline(
    source: tuple[np.ndarray, np.ndarray] | Callable[[], tf.data.Dataset],
    num_examples: int,
    batch_size: int,
    *,
    training: bool,
    seed: int | None,
    drop_remainder: bool,
    repeat: bool,
    shard: tuple[int, int] | None,
) -> tf.data.Dataset:
    if isinstance(source, tuple):
        ds = tf.data.Dataset.from_tensor_slices(source)
    else:
        ds = source()
    if shard is not None:
        ds = ds.shard(*shard)
    if training:
        ds = epoch_stream(ds, min(num_examples, _SHUFFLE_BUFFER_MAX), batch_size, seed=seed,
                          drop_remainder=drop_remainder)
    else:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if repeat:
            # After batch, so every epoch ends on the same example boundary.
            ds = ds.repeat()
    options = tf.data.Options()
    # Explicit, so TF never tries (and warns about) FILE sharding: a pipeline
    # is either already sharded by us (OFF) or sharded by example (DATA).
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
        if shard is not None
        else tf.data.experimental.AutoShardPolicy.DATA
    )
    # Sharding by example needs the same order on every host, and a fixed
    # seed should give a fixed order; parallel map/interleave must not reorder.
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def epoch_stream(
    examples: tf.data.Dataset, buffer: int, batch_size: int, *, seed: int | None, drop_remainder: bool
) -> tf.data.Dataset:
    """Endless batches: epoch ``e`` is ``examples`` shuffled with the seed ``(seed, e)``, then batched.

    The order is a function of the position alone, never of how many
    iterators were made before: a resumed run skips the batches it trained
    (``strategies.training._resume``) and reads what the uninterrupted run read.
    ``shuffle(reshuffle_each_iteration=True)`` cannot promise that: each new
    iterator draws the next epoch's seed from a generator that restarts with
    the process. Each epoch ends with its own (possibly partial) batch.
    """

    def epoch(e: tf.Tensor) -> tf.data.Dataset:
        epoch_seed = None
        if seed is not None:
            # tf.data pairs an op seed with the graph-level seed, which this
            # function's graph inherits from TF's global seed (whatever the
            # program set, or nothing): fix it, so the order depends on (seed, e)
            # alone. (A global seed of 0 would also break a tensor op seed:
            # tf.random's get_seed compares the pair with (0, 0) in Python.)
            tf.compat.v1.get_default_graph().seed = _EPOCH_GRAPH_SEED
            epoch_seed = tf.constant(seed, tf.int64) * _EPOCH_SEED_STRIDE + e
        shuffled = examples.shuffle(buffer, seed=epoch_seed, reshuffle_each_iteration=False)
        return shuffled.batch(batch_size, drop_remainder=drop_remainder)

    stream = tf.data.Dataset.counter().flat_map(epoch)
    return stream.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))


def make_input(
    data: ImageDataset,
    split: str,
    *,
    global_batch_size: int,
    strategy: tf.distribute.Strategy,
    training: bool,
    seed: int | None = None,
    repeat: bool = False,
) -> tf.data.Dataset | InputFn:
    """The ``data`` argument of `strategies.fit` for ``split``.

    Args:
      data: From `launch._data.prepare`.
      split: A TFDS split, e.g. ``"train"`` or ``"test"``.
      global_batch_size: Examples per step over all replicas.
      strategy: Decides global batches vs per-replica ``dataset_fn``, and
        ``drop_remainder`` (TPUs need static shapes).
      training: An endless `epoch_stream`, each epoch shuffled by ``(seed,
        epoch)``: pass ``steps_per_epoch`` to ``fit``.
      seed: Makes the order reproducible.
      repeat: Repeat forever (evaluation data; training data always repeats).

    Returns:
      A ``tf.data.Dataset`` of global batches, or ``dataset_fn(input_context)``.
    """
    check_batch_size(global_batch_size, strategy.num_replicas_in_sync)
    per_host = uses_input_fn(strategy)
    source: tuple[np.ndarray, np.ndarray] | Callable[[], tf.data.Dataset]
    if data.split_bytes(split) <= IN_MEMORY_MAX_BYTES:
        # Decoded once, here, and then served from memory like NumPy arrays
        # given to model.fit: no per-epoch decoding and no shared cache.
        source = data.read_arrays(split)
    else:
        # Sharding by example is disjoint only if every host reads the files
        # in the same order, so file shuffling is for unsharded pipelines only.
        def source() -> tf.data.Dataset:
            return data.load(split, shuffle_files=training and not per_host, seed=seed)

    kwargs = dict(
        num_examples=data.num_examples[split],
        training=training,
        seed=seed,
        drop_remainder=drops_remainder(strategy),
        repeat=repeat,
    )
    if not per_host:
        return _pipeline(source, batch_size=global_batch_size, shard=None, **kwargs)

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = input_context.get_per_replica_batch_size(global_batch_size)
        shard = (input_context.num_input_pipelines, input_context.input_pipeline_id)
        return _pipeline(source, batch_size=per_replica, shard=shard, **kwargs)

    return dataset_fn


def steps_per_epoch(data: ImageDataset, split: str, global_batch_size: int, *, drop_remainder: bool) -> int:
    """Steps that read ``split`` once: the last partial batch counts unless dropped."""
    n = data.num_examples[split]
    return n // global_batch_size if drop_remainder else -(-n // global_batch_size)
