"""TFDS image-classification data for `launch.train`: find it, or prepare it.

Two rules keep a run from hanging on a network that is not there:

* Prepared data is looked for first (``builder.is_prepared()``), and then read
  with ``tfds.load(..., download=False)``, so TFDS never reaches for the
  network when the data is local.
* A dataset that is not prepared is built only if it is one of this project's
  local builders (``digits``: its source ships inside scikit-learn) or if the
  download host answers within a few seconds. Otherwise `DataError` says which
  dataset, which directory, and how to prepare it. (Offline, TFDS 4.9 would
  otherwise retry the network for about 200 s before failing.)

A ``--data_dir`` with a scheme (``gs://bucket/tfds``, ``ram://tfds``) is used
as given: TFDS reads and writes it through `tf.io.gfile`, and nothing of it is
created on the local disk. TFDS's path layer (etils.epath) knows gs://, s3://,
az:// and hf:// only; `register_tf_file_systems` routes TensorFlow's other file
systems (ram://, and any a plugin adds) to `tf.io.gfile` too.

Batching the result for a strategy is `launch._input`'s job.
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
import re
import socket
import sys
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from launch import _paths

LOCAL_DATASETS = ("digits",)
# mnist, fashion_mnist and most TFDS downloads are served from here; a host
# that cannot reach it in _PROBE_TIMEOUT_S is treated as offline.
_PROBE_HOST = ("storage.googleapis.com", 443)
_PROBE_TIMEOUT_S = 3.0


class DataError(ValueError):
    """Data that cannot be found, prepared or used; the message says how to fix it."""


def default_data_dir() -> str:
    """TFDS's own default: ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``.

    Sharing TFDS's directory means a dataset prepared by any TFDS tool (e.g.
    ``tfds build mnist``) is found without a flag.
    """
    return os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")


def network_reachable(timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether the TFDS download host accepts a TCP connection within ``timeout`` s."""
    try:
        socket.create_connection(_PROBE_HOST, timeout=timeout).close()
    except OSError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A prepared TFDS image-classification dataset and what a model needs to know of it."""

    name: str
    data_dir: str
    image_key: str
    label_key: str
    input_shape: tuple[int, int, int]
    num_classes: int
    num_examples: dict[str, int]

    def load(self, split: str, *, shuffle_files: bool = False, seed: int | None = None) -> tf.data.Dataset:
        """``(image uint8 [H, W, C], label int64)`` pairs of ``split``, read offline."""
        # No TFDS auto-cache: an in-memory cache shared by several iterators
        # can serve a truncated epoch when one of them stops early (TF warns
        # "the partially cached contents ... will be discarded"), and
        # Keras/tf.distribute open and abandon iterators to inspect a batch.
        # Files are shuffled once, by the seed, not again per iterator: the
        # order must not depend on how many iterators a process made (see epoch_stream).
        read_config = tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=False,
                                      try_autocache=False)
        ds = tfds.load(
            self.name,
            split=split,
            data_dir=self.data_dir,
            download=False,
            shuffle_files=shuffle_files,
            read_config=read_config,
        )
        return ds.map(
            lambda ex: (ex[self.image_key], ex[self.label_key]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    def split_bytes(self, split: str) -> int:
        """Bytes of ``split``'s decoded uint8 images."""
        return self.num_examples[split] * math.prod(self.input_shape)

    def read_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """All of ``split`` as NumPy ``(images, labels)``, in the order TFDS stores it.

        Raises:
          DataError: a record file that is missing, truncated or of another
            dataset, naming the directory.
        """
        ds = self.load(split).batch(self.num_examples[split])
        try:
            images, labels = next(iter(tfds.as_numpy(ds)))
        except (tf.errors.OpError, StopIteration) as e:
            raise DataError(
                f"Cannot read split {split!r} of dataset {self.name!r} in --data_dir={self.data_dir}: "
                f"{_first_line(e)}; delete {os.path.join(self.data_dir, self.name)} and prepare it again."
            ) from None
        return images, labels


def _register_local_builders() -> None:
    # Importing the module registers the builder with TFDS under its name.
    import launch.datasets.digits  # noqa: F401

    register_tf_file_systems()


def register_tf_file_systems() -> list[str]:
    """Makes TFDS reach every `tf.io.gfile` scheme that etils.epath lacks; returns the schemes added.

    Without it, ``tfds.builder(name, data_dir="ram://tfds")`` fails with
    ``KeyError: 'ram://'`` (etils 1.15). The class registered keeps the
    ``scheme://`` in the path TFDS hands to `tf.io.gfile`.
    """
    from etils.epath import backend, gpath, register

    from strategies.compat import rename_tree

    class GfilePath(gpath.PosixGPath):
        """A path on a TensorFlow file system that etils does not know, through tf.io.gfile."""

        @property
        def _backend(self) -> backend.Backend:
            return backend.tf_backend

        @property
        def _path_str(self) -> str:
            # PurePosixPath("ram://a/b").parts is ("ram:", "a", "b"): put the "//" back.
            parts = self.parts
            if parts and parts[0].endswith(":"):
                return f"{parts[0]}//" + "/".join(parts[1:])
            return super()._path_str

        def rename(self, target: os.PathLike[str] | str) -> GfilePath:
            rename_tree(self._path_str, os.fspath(target))
            return self._new(target)

        def replace(self, target: os.PathLike[str] | str) -> GfilePath:
            rename_tree(self._path_str, os.fspath(target), overwrite=True)
            return self._new(target)

    added = []
    for scheme in tf.io.gfile.get_registered_schemes():
        prefix = f"{scheme}://"
        if scheme and scheme != "file" and prefix not in register._URI_PREFIXES_TO_CLS:
            register.register_path_cls(prefix)(GfilePath)
            added.append(prefix)
    return added


def _how_to_prepare(name: str, data_dir: str) -> str:
    return (
        f"prepare it on a machine with internet access with `tfds build {name} "
        f"--data_dir=DIR` and copy DIR/{name} into {data_dir}, or pass --data_dir=DIR"
    )


def _builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    _register_local_builders()
    try:
        return tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"Unknown TFDS dataset: --dataset={name!r}; tfds.list_builders() lists the names."
        ) from None
    except Exception as e:  # Unreadable files in data_dir fail in many types (protobuf's ParseError, OSError, ...).
        raise DataError(
            f"Cannot read dataset {name!r} in --data_dir={data_dir}: {_first_line(e)}; "
            f"delete {os.path.join(data_dir, name)} and prepare it again."
        ) from None


def check_available(
    name: str, data_dir: str | None = None, *, is_online: Callable[[], bool] | None = None
) -> tfds.core.DatasetBuilder:
    """Raises `DataError` unless ``name`` is prepared, local, or downloadable now.

    Touches only files (no TensorFlow device), so a launcher can call it before
    building a strategy, and fail in a fraction of a second rather than after a
    cluster has formed.

    Args:
      name: A TFDS dataset name, e.g. ``"digits"``, ``"mnist"``, ``"cifar10"``.
      data_dir: Where TFDS data lives; ``None`` means :func:`default_data_dir`.
      is_online: Returns whether downloads can work; default :func:`network_reachable`.

    Returns:
      The dataset's TFDS builder.
    """
    data_dir = _resolve_dir(data_dir)
    if _paths.is_cloud(data_dir):
        _check_writable(name, data_dir)  # The scheme, and a file in the way; through tf.io.gfile.
    elif os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"--data_dir must be a directory; {data_dir} is a file. Received: data_dir={data_dir!r}.")
    # Nothing is prepared in a directory that does not exist: check it before
    # TFDS looks (and warns) there. Preparing or downloading writes there.
    if not tf.io.gfile.isdir(data_dir):
        _check_writable(name, data_dir)
    builder = _builder(name, data_dir)
    if not builder.is_prepared():
        _check_writable(name, data_dir)
    online = is_online or network_reachable
    if not builder.is_prepared() and name not in LOCAL_DATASETS and not online():
        raise DataError(
            f"Dataset {name!r} is not prepared in --data_dir={data_dir} and this machine is "
            f"offline; {_how_to_prepare(name, data_dir)}."
        )
    return builder


def _check_writable(name: str, data_dir: str) -> None:
    reason = _paths.unwritable_reason(data_dir)
    if reason is not None:
        raise DataError(
            f"--data_dir must be a writable directory to prepare {name!r} in; {reason}. "
            f"Received: data_dir={data_dir!r}."
        )


def prepare(
    name: str, data_dir: str | None = None, *, is_online: Callable[[], bool] | None = None
) -> ImageDataset:
    """Finds ``name`` in ``data_dir``, preparing it first when that is possible.

    Local builders (``digits``) are prepared from the copy bundled with
    scikit-learn; other datasets are downloaded only if :func:`check_available`
    finds the machine online. TFDS shows its own progress bars.

    Args:
      name: A TFDS dataset name, e.g. ``"digits"``, ``"mnist"``, ``"cifar10"``.
      data_dir: Where TFDS data lives; ``None`` means :func:`default_data_dir`.
      is_online: Returns whether downloads can work; default :func:`network_reachable`.

    Returns:
      The dataset's shapes, classes and split sizes.

    Raises:
      DataError: unknown dataset, not prepared and offline, unreadable metadata,
        or not an image-classification dataset.
    """
    data_dir = _resolve_dir(data_dir)
    builder = check_available(name, data_dir, is_online=is_online)
    if not builder.is_prepared():
        builder = _prepare_once(name, data_dir)
    return _describe(builder, name, data_dir)


def _prepare_once(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """Prepares under an exclusive file lock, so that the processes of one
    cluster starting on a fresh ``data_dir`` build it once: without the lock,
    each writes its own incomplete copy and all but the first crash on TFDS'
    final rename (``FileExistsError``).

    A cloud ``data_dir`` has no file lock (the hosts of a pod do not share a
    kernel): there TFDS prepares directly, and a pod should find the data
    prepared already (``tfds build NAME --data_dir=gs://...`` once, see
    docs/strategies/platforms.md)."""
    if _paths.is_cloud(data_dir):
        tf.io.gfile.makedirs(data_dir)
        _builder(name, data_dir).download_and_prepare()
        return _builder(name, data_dir)
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(data_dir, f".{name}.prepare.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
        builder = _builder(name, data_dir)  # Another process may have finished meanwhile.
        if not builder.is_prepared():
            # Progress bars help on a terminal and fill a log with carriage returns.
            tfds.display_progress_bar(sys.stderr.isatty())
            builder.download_and_prepare()
    return _builder(name, data_dir)  # Reads the prepared dataset's info.


def _resolve_dir(data_dir: str | None) -> str:
    # A gs:// or ram:// directory stays as given; "~" is expanded in local paths only.
    return _paths.resolve(data_dir or default_data_dir())


def _describe(builder: tfds.core.DatasetBuilder, name: str, data_dir: str) -> ImageDataset:
    info = builder.info
    keys = info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys)):
        raise DataError(
            f"--dataset={name!r} is not an image-classification dataset: it has no "
            f"(image, label) supervised keys. Received: supervised_keys={keys!r}."
        )
    image_key, label_key = keys
    image, label = info.features[image_key], info.features[label_key]
    if not isinstance(image, tfds.features.Image) or not isinstance(label, tfds.features.ClassLabel):
        raise DataError(
            f"--dataset={name!r} is not an image-classification dataset: it needs an Image input "
            f"and a ClassLabel target. Received: {image_key}={type(image).__name__}, "
            f"{label_key}={type(label).__name__}."
        )
    if None in image.shape:
        raise DataError(
            f"--dataset={name!r} has images of varying size, which the launcher's models do not "
            f"resize. Received: image shape={image.shape}."
        )
    splits = {split: info.splits[split].num_examples for split in info.splits}
    for needed in ("train", "test"):
        if needed not in splits:
            raise DataError(
                f"--dataset={name!r} needs 'train' and 'test' splits. Received: splits={sorted(splits)}."
            )
    return ImageDataset(
        name=name,
        data_dir=data_dir,
        image_key=image_key,
        label_key=label_key,
        input_shape=tuple(image.shape),
        num_classes=label.num_classes,
        num_examples=splits,
    )


def _first_line(error: BaseException) -> str:
    text = error.message if isinstance(error, tf.errors.OpError) else str(error)
    # TF prefixes errors from inside a function with "{{function_node ...}}".
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
