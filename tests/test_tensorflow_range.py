"""The TensorFlow range is written once (setup.cfg) and every other place agrees with it.

setup.cfg's install_requires holds ``tensorflow>=2.20,<2.22`` and TensorBoard's
matching range; its ``tpu`` extra holds ``tensorflow-tpu==2.20.*``, the newest
TPU build. The noxfile, the Makefile, launch.tpu_vm, the compat layer's version
guard, the notebooks and the docs must say the same.
"""

from __future__ import annotations

import glob
import os
import re

import pytest
from packaging.requirements import Requirement

import noxfile
from launch import _requirements, tpu_vm
from strategies.compat import _keras_compat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINORS = _requirements.tensorflow_minors()
# A TensorFlow requirement written anywhere: tensorflow, tensorflow-tpu,
# tensorflow[and-cuda] or tensorboard, then a version specifier.
_SPEC = re.compile(r"\b(tensorflow(?:-tpu)?(?:\[and-cuda\])?|tensorboard)\s*((?:[=<>!~]=?\s*[\d.*]+,?\s*)+)")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _documents() -> list[str]:
    paths = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "Makefile")]
    paths += sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
    paths += sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb")))
    paths += sorted(glob.glob(os.path.join(ROOT, "launch", "**", "*.py"), recursive=True))
    paths += sorted(glob.glob(os.path.join(ROOT, "strategies", "**", "*.py"), recursive=True))
    return paths


def _allowed_specs() -> set[tuple[str, str]]:
    """(name, specifier) pairs setup.cfg writes, in every form a document may quote them."""
    allowed = set()
    for line in _requirements.install_requires() + _requirements.extra("gpu") + _requirements.extra("tpu"):
        req = Requirement(line)
        name = req.name + (f"[{','.join(sorted(req.extras))}]" if req.extras else "")
        allowed.add((name, str(req.specifier)))
    return allowed


def _normalize(spec: str) -> str:
    return str(Requirement("x" + re.sub(r"\s+", "", spec).rstrip(",")).specifier)


def test_setup_cfg_supports_tensorflow_2_20_and_2_21_and_matching_tensorboard() -> None:
    assert _requirements.tensorflow_spec() == "<2.22,>=2.20"
    assert MINORS == ["2.20", "2.21"]
    tensorboard = _requirements.requirement("tensorboard", _requirements.install_requires())
    assert str(tensorboard.specifier) == _requirements.tensorflow_spec()
    gpu = _requirements.requirement("tensorflow", _requirements.extra("gpu"))
    assert gpu.extras == {"and-cuda"} and str(gpu.specifier) == _requirements.tensorflow_spec()


def test_tpu_extra_is_the_newest_tpu_build_and_its_tensorboard() -> None:
    assert _requirements.extra("tpu") == ["tensorflow-tpu==2.20.*", "tensorboard==2.20.*"]
    assert MINORS[0] == "2.20"  # the TPU build must be inside the range the suite runs on


def test_tpu_vm_installs_the_tpu_extra_instead_of_tensorflow() -> None:
    requirements = tpu_vm.tpu_requirements()
    assert requirements[:2] == _requirements.extra("tpu")
    names = [Requirement(r).name for r in requirements]
    assert "tensorflow" not in names and names.count("tensorboard") == 1
    assert tpu_vm.TENSORFLOW_TPU == "tensorflow-tpu==2.20.*"


def test_nox_pins_the_oldest_tensorflow_of_the_range() -> None:
    assert noxfile.tensorflow_min_pins() == [f"tensorflow=={MINORS[0]}.*", f"tensorboard=={MINORS[0]}.*"]


def test_the_compat_guard_admits_exactly_the_range() -> None:
    verified = [f"{major}.{minor}" for major, minor in _keras_compat.VERIFIED_TENSORFLOW]
    assert verified == MINORS


def test_makefile_runs_the_oldest_tensorflow_and_writes_no_version() -> None:
    makefile = _read(os.path.join(ROOT, "Makefile"))
    assert "fast_tf_min" in makefile
    assert not _SPEC.search(makefile)


def test_the_oldest_tensorflow_skips_only_launcher_modules_that_exist() -> None:
    # A renamed module would otherwise be dropped from the list silently; and
    # only launcher tests may be left out (tfopt and strategies run in full there).
    for path in noxfile.TF_VERSION_FREE:
        assert os.path.isfile(os.path.join(ROOT, path)), path
        assert path.startswith(os.path.join("tests", "launch", "test_")), path
    assert os.path.join("tests", "launch", "test_train.py") not in noxfile.TF_VERSION_FREE


@pytest.mark.parametrize("path", _documents(), ids=lambda p: os.path.relpath(p, ROOT))
def test_every_quoted_tensorflow_requirement_is_setup_cfgs(path: str) -> None:
    allowed = _allowed_specs()
    wrong = [(name, spec) for name, spec in _SPEC.findall(_read(path)) if (name, _normalize(spec)) not in allowed]
    assert not wrong, f"{os.path.relpath(path, ROOT)} quotes {wrong}; setup.cfg says {sorted(allowed)}"


def test_the_check_catches_a_stale_pin() -> None:
    # The pattern must see the forms the documents use, or the test above proves nothing.
    found = _SPEC.findall('pip install "tensorflow-tpu==2.21.*" tensorflow[and-cuda]==2.21.*')
    assert [(n, _normalize(s)) for n, s in found] == [("tensorflow-tpu", "==2.21.*"),
                                                      ("tensorflow[and-cuda]", "==2.21.*")]
    assert not {(n, _normalize(s)) for n, s in found} & _allowed_specs()
