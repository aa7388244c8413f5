"""An optimizer outside Keras vouches for its hook overrides with `replica_local_hooks`.

`strategies.fit`'s all-reduce-first path runs Keras' TF optimizer hooks
replica-local. `check_supported` refuses a class outside Keras that overrides
one of them without calling `super()`, unless the class itself declares the
override in its own `replica_local_hooks` dict. tfopt's classes are no longer
exempted by module name: each declares its overrides, like any third party.
"""

from __future__ import annotations

import inspect

import keras
import pytest

import tfopt
from strategies.compat import _keras_compat
from tests.tfopt import cases

_HOOKS = _keras_compat._REPLICA_LOCAL_HOOKS + _keras_compat._BYPASSED


def _tfopt_classes() -> list[type]:
    classes = {tfopt.get_class(name) for name in tfopt.available()}
    classes |= {c for _, c in inspect.getmembers(tfopt, inspect.isclass)
                if issubclass(c, keras.optimizers.Optimizer)}
    return sorted(classes, key=lambda c: c.__name__)


@pytest.mark.parametrize("name", tfopt.available())
def test_every_tfopt_optimizer_is_supported(name):
    _keras_compat.check_supported(cases.make(name))


def test_skip_nonfinite_is_supported():
    _keras_compat.check_supported(tfopt.SkipNonFinite(tfopt.LAMB(weight_decay=0.1)))


@pytest.mark.parametrize("cls", _tfopt_classes(), ids=lambda c: c.__name__)
def test_every_tfopt_hook_override_is_declared_next_to_it(cls):
    overridden = {name for name in _HOOKS if name in cls.__dict__}
    declared = set(cls.__dict__.get("replica_local_hooks", {}))
    assert declared == overridden
    for why in cls.__dict__.get("replica_local_hooks", {}).values():
        assert isinstance(why, str) and why


def test_the_overriding_tfopt_classes_are_the_expected_ones():
    # Guards the test above against vacuity: these classes do override hooks.
    overriding = {c.__name__ for c in _tfopt_classes() if any(h in c.__dict__ for h in _HOOKS)}
    assert overriding == {"LAMB", "LARS", "SOAP", "Shampoo"}


class _NoDecaySGD(keras.optimizers.SGD):
    """A third party's optimizer whose `_apply_weight_decay` does not call super()."""

    def _apply_weight_decay(self, variables):
        del variables


class _DeclaredNoDecaySGD(keras.optimizers.SGD):
    def _apply_weight_decay(self, variables):
        del variables

    replica_local_hooks = {"_apply_weight_decay": "does nothing, on any path"}


class _LARSSubclass(tfopt.LARS):
    """Overrides the hook LARS declared, again, without saying so."""

    def _apply_weight_decay(self, variables):
        del variables


def test_an_undeclared_override_is_refused():
    with pytest.raises(_keras_compat.UnsupportedOptimizerError, match="_NoDecaySGD"):
        _keras_compat.check_supported(_NoDecaySGD(0.1, weight_decay=0.1))


def test_a_declared_third_party_override_is_accepted():
    _keras_compat.check_supported(_DeclaredNoDecaySGD(0.1, weight_decay=0.1))


def test_a_declaration_is_not_inherited():
    with pytest.raises(_keras_compat.UnsupportedOptimizerError, match="_LARSSubclass"):
        _keras_compat.check_supported(_LARSSubclass(0.1, weight_decay=0.1))
