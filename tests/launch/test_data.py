"""launch._data, launch._input and the digits builder: real data offline, mocked remote datasets."""

from __future__ import annotations

import collections
import glob
import os
import shutil
import socket

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from launch import _data, _input
from launch.datasets.digits import digits_dataset_builder as digits_builder
from strategies.compat import _keras_compat


def _pairs(ds: tf.data.Dataset) -> collections.Counter:
    """A multiset of (image bytes, label): order-free comparison of datasets."""
    return collections.Counter((image.tobytes(), int(label)) for image, label in tfds.as_numpy(ds))


def _source_pairs(indices: np.ndarray) -> collections.Counter:
    d = load_digits()
    images = np.rint(d.images * 255 / 16).astype(np.uint8)[..., None]
    return collections.Counter((images[i].tobytes(), int(d.target[i])) for i in indices)


# --- The digits builder, on the data bundled with scikit-learn ------------------------------


def test_digits_metadata(digits: _data.ImageDataset) -> None:
    assert digits.input_shape == (8, 8, 1)
    assert digits.num_classes == 10
    assert digits.num_examples == {"train": 1437, "test": 360}


@pytest.mark.parametrize("split", ["train", "test"])
def test_digits_split_is_every_fifth_source_image(digits: _data.ImageDataset, split: str) -> None:
    # The documented rule, recomputed from scikit-learn's copy: source image i is
    # in `test` iff i % 5 == 0, stored as round(v * 255 / 16).
    n = len(load_digits().target)
    is_test = np.arange(n) % digits_builder.TEST_EVERY == 0
    expected = _source_pairs(np.flatnonzero(is_test if split == "test" else ~is_test))
    assert _pairs(digits.load(split)) == expected


def test_digits_loads_with_plain_tfds_load(digits_dir: str) -> None:
    # After `import launch.datasets.digits`, it is an ordinary TFDS dataset.
    ds, info = tfds.load(
        "digits", split="test", data_dir=digits_dir, download=False, as_supervised=True, with_info=True
    )
    assert info.features["label"].num_classes == 10
    images = np.stack([image for image, _ in tfds.as_numpy(ds)])
    assert images.dtype == np.uint8 and images.max() == 255 and images.min() == 0


def test_prepare_builds_digits_without_network(tmp_path, monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("digits must be prepared without touching the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    data = _data.prepare("digits", str(tmp_path), is_online=no_network)
    assert tfds.builder("digits", data_dir=str(tmp_path)).is_prepared()
    assert data.num_examples["train"] == 1437


# --- Unprepared, unknown or unsuitable datasets ----------------------------------------------


def test_unprepared_remote_dataset_offline_fails_fast_with_instructions(tmp_path, monkeypatch) -> None:
    # The real probe, on a machine whose network refuses at once; TFDS itself
    # must never be asked to download.
    def refuse(address, timeout=None):
        assert timeout is not None and timeout <= 5, "the probe must not wait long"
        raise OSError("network unreachable")

    def no_download(self, *args, **kwargs):
        raise AssertionError("TFDS must not try to download offline")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    with pytest.raises(_data.DataError) as e:
        _data.prepare("mnist", str(tmp_path))
    message = str(e.value)
    assert "'mnist'" in message and str(tmp_path) in message and "tfds build mnist" in message
    assert "\n" not in message


def test_unknown_dataset_is_named(tmp_path) -> None:
    with pytest.raises(_data.DataError, match="--dataset='no_such_dataset'"):
        _data.prepare("no_such_dataset", str(tmp_path))


def test_corrupt_metadata_names_the_directory(tmp_path) -> None:
    builder = tfds.builder("mnist", data_dir=str(tmp_path))
    os.makedirs(builder.data_path)
    (builder.data_path / "dataset_info.json").write_text("{not json")
    (builder.data_path / "features.json").write_text("{not json")
    with pytest.raises(_data.DataError, match="mnist") as e:
        _data.prepare("mnist", str(tmp_path), is_online=lambda: False)
    assert str(tmp_path) in str(e.value)


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_records_name_the_data_dir(digits_dir, tmp_path, damage: str) -> None:
    data_dir = str(tmp_path / "copy")
    shutil.copytree(digits_dir, data_dir)
    (record,) = glob.glob(os.path.join(data_dir, "digits", "*", "digits-train.tfrecord-*"))
    if damage == "missing":
        os.remove(record)
    else:
        with open(record, "r+b") as f:
            f.truncate(os.path.getsize(record) * 6 // 10)
    data = _data.prepare("digits", data_dir)
    with pytest.raises(_data.DataError) as e:
        data.read_arrays("train")
    assert f"--data_dir={data_dir}" in str(e.value) and "'digits'" in str(e.value)


@pytest.mark.parametrize(
    "name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))], ids=["mnist", "cifar10"]
)
def test_remote_datasets_through_mock_data(mocked, name: str, shape: tuple[int, ...]) -> None:
    with mocked(name):
        data = _data.prepare(name, mocked.data_dir, is_online=lambda: False)
        assert data.input_shape == shape and data.num_classes == 10
        ds = _input.make_input(
            data, "train", global_batch_size=16, strategy=tf.distribute.get_strategy(), training=True, seed=1
        )
        images, labels = next(iter(ds))
    assert images.shape == (16, *shape) and images.dtype == tf.uint8
    assert labels.shape == (16,)


def test_non_image_dataset_is_rejected(mocked) -> None:
    # iris: (features, label) where features is a Tensor, not an Image.
    with mocked("iris"), pytest.raises(_data.DataError, match="not an image-classification dataset"):
        _data.prepare("iris", mocked.data_dir, is_online=lambda: False)


# --- Batching for strategies -----------------------------------------------------------------


def test_global_batches_for_single_host_strategies(digits: _data.ImageDataset) -> None:
    strategy = _keras_compat.mirrored_strategy(["/cpu:0", "/cpu:1"])
    ds = _input.make_input(digits, "test", global_batch_size=32, strategy=strategy, training=False)
    assert isinstance(ds, tf.data.Dataset)
    assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    sizes = [int(x.shape[0]) for x, _ in ds]
    assert sizes == [32] * 11 + [8]  # 360 test images; the last batch is partial off TPU.
    assert _input.steps_per_epoch(digits, "test", 32, drop_remainder=False) == 12
    assert _input.steps_per_epoch(digits, "test", 32, drop_remainder=True) == 11


@pytest.mark.parametrize("in_memory", [True, False], ids=["in-memory", "streamed"])
def test_per_replica_input_fn_shards_disjointly(digits: _data.ImageDataset, monkeypatch, in_memory: bool) -> None:
    # As for MultiWorkerMirrored: 2 hosts x 2 replicas, global batch 32.
    monkeypatch.setattr(_input, "uses_input_fn", lambda strategy: True)
    if not in_memory:
        monkeypatch.setattr(_input, "IN_MEMORY_MAX_BYTES", 0)
    strategy = _keras_compat.mirrored_strategy(["/cpu:0", "/cpu:1"])
    dataset_fn = _input.make_input(digits, "test", global_batch_size=32, strategy=strategy, training=False)
    shards = []
    for host in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=host, num_replicas_in_sync=4)
        ds = dataset_fn(ctx)
        assert ds.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF
        assert max(int(x.shape[0]) for x, _ in ds) == 8  # per-replica batch = 32 / 4
        shards.append(_pairs(ds.unbatch()))
    # Together the hosts read every test example exactly once.
    assert shards[0] + shards[1] == _pairs(digits.load("test"))
    assert min(sum(s.values()) for s in shards) == 180
    # The same function also feeds the real distribution API.
    distributed = strategy.distribute_datasets_from_function(dataset_fn)
    assert next(iter(distributed)) is not None


def test_training_order_is_seeded(digits: _data.ImageDataset) -> None:
    strategy = tf.distribute.get_strategy()

    def first_labels(seed: int) -> list[int]:
        ds = _input.make_input(digits, "train", global_batch_size=64, strategy=strategy, training=True, seed=seed)
        return next(iter(ds))[1].numpy().tolist()

    assert first_labels(3) == first_labels(3)
    assert first_labels(3) != first_labels(4)


@pytest.mark.parametrize("batch_size", [0, 3], ids=["zero", "not-divisible"])
def test_batch_size_must_split_evenly(digits: _data.ImageDataset, batch_size: int) -> None:
    strategy = _keras_compat.mirrored_strategy(["/cpu:0", "/cpu:1"])
    with pytest.raises(_data.DataError, match=f"batch_size={batch_size}"):
        _input.make_input(digits, "train", global_batch_size=batch_size, strategy=strategy, training=True)
