"""Checks that a directory flag names a place this process can write, before any work.

`launch.train` calls these for ``--model_dir`` (always written) and
``--data_dir`` (written only when a dataset must be prepared), so that a path
that is a file, lies under a file, cannot be created (``/proc/1/x``) or is not
writable (a read-only mount) is one line naming the flag, not a traceback from
``os.makedirs`` minutes into a run.

A path with a scheme (``gs://bucket/run``, ``ram://run``) is a cloud path and
stays one: every path flag of every entry point passes it through unchanged
(`resolve`), only `tf.io.gfile` touches it, and ``~`` is expanded only in local
paths. Its writability can only be known by writing, so the check asks the
file system what it can without writing: that TensorFlow has a file system for
the scheme, and that the path is not a file.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_cloud(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has a scheme (``gs://``, ``ram://``, ...): a path for `tf.io.gfile` only."""
    return bool(_SCHEME.match(os.fspath(path)))


def resolve(path: str) -> str:
    """``path`` unchanged if it has a scheme; else absolute, with ``~`` expanded."""
    return path if is_cloud(path) else os.path.abspath(os.path.expanduser(path))


def makedirs(path: str) -> str:
    """Creates directory ``path`` (and its parents) on any file system; returns `resolve(path)`.

    Local paths need no TensorFlow (launch.device_check reports a machine without it).
    """
    path = resolve(path)
    if not is_cloud(path):
        os.makedirs(path, exist_ok=True)
        return path
    import tensorflow as tf

    tf.io.gfile.makedirs(path)
    return path


@contextlib.contextmanager
def staged(path: str) -> Iterator[str]:
    """A local file name to write ``path`` through: ``path`` itself when local, else a
    temporary file copied to ``path`` (through tf.io.gfile) when the block ends without error.

    For writers that want a file name, such as Matplotlib's ``savefig``.
    """
    if not is_cloud(path):
        yield resolve(path)
        return
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="staged-") as local_dir:
        local = os.path.join(local_dir, path.rstrip("/").rsplit("/", 1)[-1])
        yield local
        tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
        tf.io.gfile.copy(local, path, overwrite=True)


def write_text(path: str, text: str | bytes) -> str:
    """Writes ``text`` (or bytes) to ``path`` (local or cloud), creating its directory; returns the path written.

    Local paths need no TensorFlow; cloud paths go through tf.io.gfile.
    """
    path = resolve(path)
    mode = "wb" if isinstance(text, bytes) else "w"
    if not is_cloud(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, mode) as f:
            f.write(text)
        return path
    import tensorflow as tf

    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    with tf.io.gfile.GFile(path, mode) as f:
        f.write(text)
    return path


def unwritable_reason(path: str) -> str | None:
    """Why ``path`` cannot be used as a directory to write in, or None if it can.

    ``path`` may not exist yet: then its nearest existing ancestor must be a
    writable directory, and every missing level must be creatable there.
    """
    if is_cloud(path):
        # The filesystem answers for writes when the run writes; the scheme
        # (grpc://, http:// are not file systems) and a file in the way can be
        # checked now, through tf.io.gfile, never os.path.
        import tensorflow as tf

        scheme = path.split("://", 1)[0]
        if scheme not in tf.io.gfile.get_registered_schemes():
            schemes = ", ".join(f"{s}://" for s in sorted(tf.io.gfile.get_registered_schemes()) if s)
            return f"TensorFlow has no file system for {scheme}:// here (it has {schemes})"
        try:
            if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
                return f"{path} is a file"
        except tf.errors.OpError as e:  # e.g. no credentials for gs://
            return f"{scheme}:// cannot be reached: {e.message.splitlines()[0] if e.message else type(e).__name__}"
        return None
    path = os.path.abspath(os.path.expanduser(path))
    too_long = _too_long(path)
    if too_long:
        return too_long
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path} is a file"
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"it cannot be created under the file {parent}"
    if not os.access(parent, os.W_OK | os.X_OK):
        verb = "is not writable" if parent == path else "cannot be created: the directory {parent} is not writable"
        return f"{path} {verb.format(parent=parent)}"
    return None


def _too_long(path: str) -> str | None:
    # os.path.exists() answers False for a name the kernel refuses (ENAMETOOLONG),
    # so without this check a long name fails later, in os.makedirs.
    name_max = os.pathconf("/", "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    path_max = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
    if len(os.fsencode(path)) >= path_max:
        return f"the path is longer than {path_max} bytes"
    for part in path.split(os.sep):
        if len(os.fsencode(part)) > name_max:
            return f"the name {part[:20]}... is longer than {name_max} bytes"
    return None


def local_model_dir_on_slice_reason(model_dir: str | None, num_hosts: int) -> str | None:
    """Why a local ``model_dir`` (None: the local default, runs/...) cannot serve a run over ``num_hosts`` hosts.

    Returns None when it can.

    On a multi-host TPU slice every host runs the same command; with a local
    directory each would write its own checkpoints and none would hold the run.
    """
    if num_hosts > 1 and not (model_dir and is_cloud(model_dir)):
        return (f"this TPU slice has {num_hosts} hosts and each would write its own checkpoints to its own "
                f"local disk; use shared storage such as gs://BUCKET/run. Received: model_dir={model_dir!r}.")
    return None
