"""Docstrings: every ``>>>`` example in the packages runs, and every public name has one.

The modules are discovered, not listed: a new module with an example joins by
itself. The docs site's API reference renders these docstrings, so a public
name without its own docstring would be an empty entry there.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import pkgutil

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("tfopt", "strategies", "launch")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package)
        for info in pkgutil.walk_packages([os.path.join(REPO, package)], prefix=package + "."):
            names.append(info.name)
    return names


def _modules_with_examples() -> list[str]:
    found = []
    for name in _modules():
        path = os.path.join(REPO, *name.split("."))
        path = os.path.join(path, "__init__.py") if os.path.isdir(path) else path + ".py"
        with open(path, encoding="utf-8") as f:
            if ">>>" in f.read():
                found.append(name)
    return found


MODULES = _modules_with_examples()


def test_examples_are_found():
    # Pins the discovery itself: the classic optimizers have always had examples.
    assert {"tfopt._adam", "tfopt._sgd", "tfopt._registry"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_examples(module):
    result = doctest.testmod(
        importlib.import_module(module),
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
    )
    assert result.attempted > 0, f"{module} has no example"
    assert result.failed == 0


def _own_doc(obj) -> str | None:
    if inspect.ismodule(obj):
        return obj.__doc__
    # Only the object's own docstring counts: a subclass inheriting Keras'
    # docstring would document Keras' class, not ours.
    return obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__


@pytest.mark.parametrize("package", ["tfopt", "strategies"])
def test_every_public_name_has_its_own_docstring(package):
    module = importlib.import_module(package)
    assert module.__doc__ and module.__doc__.strip()
    missing = [name for name in module.__all__
               if not (_own_doc(getattr(module, name)) or "").strip()]
    assert not missing, f"{package}.__all__ names without a docstring: {missing}"


def test_every_public_method_of_a_public_class_has_a_docstring():
    # mkdocstrings renders public methods a class defines itself; each needs words.
    missing = []
    for package in ("tfopt", "strategies"):
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.isclass(obj):
                continue
            for attr, value in vars(obj).items():
                if attr.startswith("_") or not inspect.isfunction(value):
                    continue
                if any(hasattr(base, attr) for base in obj.__mro__[1:]):
                    continue  # An override of a Keras hook (apply, on_epoch_end): Keras documents it.
                if not (value.__doc__ or "").strip():
                    missing.append(f"{package}.{name}.{attr}")
    assert not missing, f"public methods without a docstring: {missing}"
