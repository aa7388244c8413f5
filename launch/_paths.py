"""Checks that a directory flag names a place this process can write, before any work.

`launch.train` calls these for ``--model_dir`` (always written) and
``--data_dir`` (written only when a dataset must be prepared), so that a path
that is a file, lies under a file, cannot be created (``/proc/1/x``) or is not
writable (a read-only mount) is one line naming the flag, not a traceback from
``os.makedirs`` minutes into a run. Remote paths (``gs://...``) are left to
the filesystem (only the run can ask it), once their scheme is known to be one.
"""

from __future__ import annotations

import os


def unwritable_reason(path: str) -> str | None:
    """Why ``path`` cannot be used as a directory to write in, or None if it can.

    ``path`` may not exist yet: then its nearest existing ancestor must be a
    writable directory, and every missing level must be creatable there.
    """
    if "://" in path:
        # The filesystem answers for the path itself when the run writes; the
        # scheme can be checked now (grpc://, http:// are not file systems).
        import tensorflow as tf

        scheme = path.split("://", 1)[0]
        if scheme not in tf.io.gfile.get_registered_schemes():
            schemes = ", ".join(f"{s}://" for s in sorted(tf.io.gfile.get_registered_schemes()) if s)
            return f"TensorFlow has no file system for {scheme}:// here (it has {schemes})"
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
