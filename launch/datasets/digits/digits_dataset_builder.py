"""TFDS builder for the UCI handwritten digits bundled with scikit-learn.

The 1,797 8x8 images come from ``sklearn.datasets.load_digits``, whose CSV ships
inside scikit-learn's wheel, so preparing this dataset never touches the
network. Importing this module registers the builder with TFDS under the name
``"digits"``; after that it loads like any TFDS dataset::

    import launch.datasets.digits  # registers "digits"
    ds = tfds.load("digits", split="train", data_dir=data_dir, as_supervised=True)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

# Every TEST_EVERY-th image (by position in the source file) is a test image.
# The file cycles through the classes 0..9 in order, so this split is
# deterministic, needs no RNG (whose streams may change between library
# versions) and is close to stratified: 1,437 train and 360 test images.
TEST_EVERY = 5
NUM_CLASSES = 10
# The source pixels count the "on" pixels of a 4x4 block: 0..16. They are
# stored as round(v * 255 / 16), a lossless map onto the uint8 range that every
# TFDS image dataset uses, so the same /255 rescaling serves all of them.
_SOURCE_MAX = 16

_DESCRIPTION = """\
The UCI "Optical Recognition of Handwritten Digits" images, as bundled with
scikit-learn (`sklearn.datasets.load_digits`): 1,797 grayscale 8x8 images of the
digits 0-9. Each source pixel (0-16, the number of set pixels in a 4x4 block of
the original 32x32 bitmap) is stored as round(v * 255 / 16) in uint8.

Split (deterministic): image i of the source file is in `test` if
i % 5 == 0 (360 images), else in `train` (1,437 images).
"""

_CITATION = """\
@misc{alpaydin1998optdigits,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
  doi = {10.24432/C50P49}
}
"""


def _load_source() -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [N, 8, 8, 1], labels int64 [N]) from scikit-learn."""
    # Imported here: scikit-learn is only needed to prepare, never to load.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / _SOURCE_MAX)).astype(np.uint8)
    return images[..., np.newaxis], digits.target.astype(np.int64)


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for the UCI digits (8x8 grayscale, 10 classes)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: scikit-learn's copy, i % 5 == 0 is test."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # The data is local: nothing to download.
        images, labels = _load_source()
        is_test = np.arange(len(labels)) % TEST_EVERY == 0
        return {
            "train": self._generate_examples(images, labels, np.flatnonzero(~is_test)),
            "test": self._generate_examples(images, labels, np.flatnonzero(is_test)),
        }

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray
    ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
        for i in indices:
            # The key is the source index: stable, unique, and it fixes the order.
            yield int(i), {"image": images[i], "label": int(labels[i])}
