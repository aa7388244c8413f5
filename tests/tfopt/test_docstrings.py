"""The docstring examples of the classic optimizers run and print what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "tfopt._gradient_descent",
    "tfopt._sgd",
    "tfopt._dynamic_gradient_descent",
    "tfopt._adagrad",
    "tfopt._adam",
    "tfopt._soap",
]


@pytest.mark.parametrize("module", MODULES)
def test_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{module} has no example"
    assert result.failed == 0
