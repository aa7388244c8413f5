"""tfopt.get answers the inputs keras.optimizers.get takes as Keras does.

Each case runs the same input through both functions and compares what comes
back (or that both raise a ValueError), so a change on either side shows here.
"""

from __future__ import annotations

import keras
import pytest

import tfopt


def _same_input_cases():
    # Built fresh per test: an instance must come back as the very same object.
    return {
        "none": lambda: None,
        "tfopt_instance": lambda: tfopt.Adam(1e-3),
        "tfopt_wrapper_instance": lambda: tfopt.SkipNonFinite(tfopt.SGD(0.1)),
        "keras_instance": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        "keras_wrapper_instance": lambda: keras.optimizers.LossScaleOptimizer(
            keras.optimizers.Adam()
        ),
        "tfopt_serialized_dict": lambda: keras.optimizers.serialize(tfopt.Adam(2e-3)),
        "tfopt_class_name": lambda: "tfopt>LazyAdam",
    }


@pytest.mark.parametrize("case", sorted(_same_input_cases()))
def test_same_input_same_answer(case):
    identifier = _same_input_cases()[case]()
    ours, theirs = tfopt.get(identifier), keras.optimizers.get(identifier)
    if identifier is None or isinstance(identifier, keras.optimizers.Optimizer):
        assert ours is identifier and theirs is identifier
    else:  # Both build a new optimizer of the same class and config.
        assert type(ours) is type(theirs)
        # Keras numbers default instance names ("lazy_adam", "lazy_adam_1").
        drop_name = lambda c: {k: v for k, v in c.items() if k != "name"}  # noqa: E731
        assert drop_name(ours.get_config()) == drop_name(theirs.get_config())


@pytest.mark.parametrize("identifier", [42, 1.5, ["adam"], object()],
                         ids=["int", "float", "list", "object"])  # Stable across xdist workers.
def test_what_keras_rejects_tfopt_rejects(identifier):
    with pytest.raises(ValueError):
        keras.optimizers.get(identifier)
    with pytest.raises(ValueError, match="Received"):
        tfopt.get(identifier)


def test_overrides_with_an_instance_or_none_are_an_error_naming_them():
    with pytest.raises(ValueError, match=r"Received: learning_rate=0\.1"):
        tfopt.get(tfopt.Adam(), learning_rate=0.1)
    with pytest.raises(ValueError, match=r"Received: momentum=0\.9"):
        tfopt.get(None, momentum=0.9)
    with pytest.raises(ValueError, match="skip_nonfinite=True"):
        tfopt.get(None, skip_nonfinite=True)


def test_skip_nonfinite_wraps_a_given_instance():
    inner = keras.optimizers.Adam()
    wrapped = tfopt.get(inner, skip_nonfinite=True)
    assert isinstance(wrapped, tfopt.SkipNonFinite)
    assert wrapped.inner_optimizer is inner
