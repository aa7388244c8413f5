"""This project's requirements as setup.cfg writes them, the one place they are written.

`launch.tpu_vm`'s install step, the noxfile's TF sessions and the tests that
keep the docs and notebooks in step all read the TensorFlow range and the
extras from here. In a checkout they come from setup.cfg; in an installed
copy, from the distribution's metadata (the same lines, built from setup.cfg).

Imports nothing heavy (no TensorFlow): the noxfile imports it.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from packaging.requirements import Requirement

DISTRIBUTION = "tfopt-strategies"
SETUP_CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.cfg")
# Packages versioned with TensorFlow itself: the TPU path swaps both for the tpu extra's.
TENSORFLOW_PACKAGES = ("tensorflow", "tensorboard")
# Google's wheel index for libtpu and tensorflow-tpu (PyPI holds the releases too).
LIBTPU_INDEX = "https://storage.googleapis.com/libtpu-tf-releases/index.html"


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip() and not line.strip().startswith("#")]


def _parser(setup_cfg: str) -> configparser.ConfigParser | None:
    parser = configparser.ConfigParser()
    return parser if parser.read(setup_cfg) else None


def install_requires(setup_cfg: str = SETUP_CFG) -> list[str]:
    """``[options] install_requires``, one requirement string each, comments dropped."""
    parser = _parser(setup_cfg)
    if parser is not None:
        return _lines(parser.get("options", "install_requires", fallback=""))
    return [r for r in importlib.metadata.requires(DISTRIBUTION) or [] if "extra ==" not in r]


def extra(name: str, setup_cfg: str = SETUP_CFG) -> list[str]:
    """The requirements of extra ``name`` (``tpu``, ``gpu``, ``test``, ...)."""
    parser = _parser(setup_cfg)
    if parser is not None:
        if not parser.has_option("options.extras_require", name):
            raise ValueError(f"setup.cfg has no extra {name!r}. Received: name={name!r}.")
        return _lines(parser.get("options.extras_require", name))
    marker = re.compile(rf"""extra\s*==\s*["']{re.escape(name)}["']""")
    found = [r.split(";")[0].strip() for r in importlib.metadata.requires(DISTRIBUTION) or [] if marker.search(r)]
    if not found:
        raise ValueError(f"{DISTRIBUTION} has no extra {name!r}. Received: name={name!r}.")
    return found


def name_of(line: str) -> str:
    """``"tensorflow"`` for ``"tensorflow[and-cuda]>=2.20,<2.22"``: the distribution name, lowercased."""
    return re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line).group(1).lower()


def requirement(name: str, requirements: list[str]) -> Requirement:
    """The requirement for package ``name`` in ``requirements``."""
    from packaging.requirements import (
        Requirement,  # Lazy: Colab's TPU install cell imports this module.
    )

    for line in requirements:
        parsed = Requirement(line)
        if parsed.name.lower() == name:
            return parsed
    raise ValueError(f"no requirement for {name!r} in {requirements}")


def tensorflow_spec(setup_cfg: str = SETUP_CFG) -> str:
    """``">=2.20,<2.22"``: the TensorFlow versions this project supports."""
    return str(requirement("tensorflow", install_requires(setup_cfg)).specifier)


def tensorflow_minors(setup_cfg: str = SETUP_CFG) -> list[str]:
    """``["2.20", "2.21"]``: every TensorFlow minor release the range admits."""
    spec = requirement("tensorflow", install_requires(setup_cfg)).specifier
    return [f"2.{minor}" for minor in range(0, 40) if f"2.{minor}.0" in spec]


def tpu_requirements(setup_cfg: str = SETUP_CFG) -> list[str]:
    """What a TPU host installs: install_requires with TensorFlow's own packages
    (`TENSORFLOW_PACKAGES`) replaced by the ``tpu`` extra (``tensorflow-tpu==2.20.*``,
    ``tensorboard==2.20.*``)."""
    keep = [r for r in install_requires(setup_cfg) if name_of(r) not in TENSORFLOW_PACKAGES]
    return extra("tpu", setup_cfg) + keep
