"""What a report was measured on: one ``machine`` record for every benchmark and check.

Every JSON report under ``launch`` (the benchmarks' and ``device_check``'s)
carries ``"machine": machine(...)``, so that one reader reads them all::

    {"platform": "Linux-6.8...", "processor": "x86_64", "python": "3.11.7",
     "cpu_count": 2, "tensorflow": "2.21.0", "keras": "3.15.1",
     "git": "096621c+uncommitted changes", ...what the report adds}

It imports no TensorFlow: a package's version is read from the module when it
is already imported (a TPU or nightly build installs under another name), and
from the installed distribution otherwise.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from typing import Any

UNKNOWN = "unknown"
DIRTY = "+uncommitted changes"


def git_state() -> str:
    """The short commit of the code that runs, with `DIRTY` appended when tracked
    files differ from it; `UNKNOWN` outside a git checkout or without git."""
    here = os.path.dirname(os.path.abspath(__file__))
    run: dict[str, Any] = dict(capture_output=True, text=True, timeout=10, check=True, cwd=here)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return commit + (DIRTY if dirty.strip() else "")


def version(package: str) -> str:
    """``package``'s version, or ``"not installed"``."""
    module = sys.modules.get(package)
    if getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine(**extra: Any) -> dict[str, Any]:
    """The machine, software and code a measurement ran on, plus ``extra`` keys.

    Args:
        **extra: what a report adds about its own setup (``device``, ``gpus``).
    """
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "tensorflow": version("tensorflow"),
        "keras": version("keras"),
        "git": git_state(),
        **extra,
    }
