"""Fixtures shared by the launcher tests: the real digits data, prepared once."""

from __future__ import annotations

import os

import pytest
import tensorflow_datasets as tfds

from launch import _data


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A TFDS data_dir holding the digits dataset, prepared by the real builder."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    _data.prepare("digits", data_dir)
    return data_dir


@pytest.fixture(scope="session")
def digits(digits_dir: str) -> _data.ImageDataset:
    return _data.prepare("digits", digits_dir)


def _fake_prepared(name: str, data_dir: str, splits: dict[str, int]) -> None:
    """Writes the metadata of a prepared ``name`` (no records), as mock_data's USE_FILES wants."""
    builder = tfds.builder(name, data_dir=data_dir)
    builder.info.set_splits(
        tfds.core.SplitDict(
            [tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0) for s, n in splits.items()]
        )
    )
    os.makedirs(builder.data_path)
    builder.info.write_to_directory(builder.data_path)


@pytest.fixture
def mocked(tmp_path):
    """``mocked(name)`` -> a data_dir where ``name`` reads as prepared, with random records."""
    data_dir = str(tmp_path)

    def make(name: str, num_examples: int = 48):
        _fake_prepared(name, data_dir, {"train": num_examples, "test": num_examples // 2})
        return tfds.testing.mock_data(
            num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=data_dir
        )

    make.data_dir = data_dir
    return make
