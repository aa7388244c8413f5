"""The UCI handwritten digits as a TFDS dataset: ``tfds.load("digits", data_dir=...)``."""

from launch.datasets.digits.digits_dataset_builder import Builder

__all__ = ["Builder"]
