"""Fixtures shared by the launcher tests: the real digits data, prepared once."""

from __future__ import annotations

import pytest

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
