"""Test session set-up shared by every test.

The CPU is split into two logical devices *before* TensorFlow initializes, so
that MirroredStrategy(["CPU:0", "CPU:1"]) runs in-process on any machine, as
Keras' own optimizer_distribute_test does. Single-device code is unaffected:
ops still default to CPU:0.

The suite runs on TensorFlow unless ``KERAS_BACKEND`` says otherwise (nox's
``backend-jax`` and ``backend-torch`` sessions run ``tests/tfopt`` on JAX and
PyTorch). On another backend, what is TensorFlow's alone is skipped with a
reason: ``strategies`` and ``launch`` (built on ``tf.distribute``), and the
tests marked ``tensorflow_only``. On JAX, float64 is switched on, as the
float64 checks need it (JAX computes in float32 otherwise).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Never let a test reach for the network (TFDS download, GCS, etc.).
os.environ.setdefault("TFDS_DISABLE_GCS", "1")
os.environ.setdefault("NO_GCE_CHECK", "True")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

NUM_VIRTUAL_CPUS = 2
BACKEND = os.environ["KERAS_BACKEND"]

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_VIRTUAL_CPUS
)

if BACKEND == "jax":
    import jax

    jax.config.update("jax_enable_x64", True)

# Top-level test folders whose code is TensorFlow's alone, and why.
_TENSORFLOW_PACKAGES = {
    "strategies": "strategies is TensorFlow-only: it builds tf.distribute strategies",
    "launch": "launch is TensorFlow-only: it trains through strategies (tf.distribute)",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tensorflow_only(reason): runs on the TensorFlow backend only (reason names what is "
        "TensorFlow's); skipped under another KERAS_BACKEND",
    )
    config.addinivalue_line(
        "markers",
        "longest: one of the suite's longest tests; collected first, so that xdist's "
        "workers start it first and finish together (longest first)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import keras

    items.sort(key=lambda item: item.get_closest_marker("longest") is None)  # stable
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    tests = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        top = os.path.relpath(str(item.path), tests).split(os.sep)[0]
        if top in _TENSORFLOW_PACKAGES:
            item.add_marker(pytest.mark.skip(reason=f"{_TENSORFLOW_PACKAGES[top]} (KERAS_BACKEND={backend})"))
        elif marker := item.get_closest_marker("tensorflow_only"):
            reason = marker.args[0] if marker.args else marker.kwargs.get("reason", "TensorFlow only")
            item.add_marker(pytest.mark.skip(reason=f"TensorFlow only: {reason} (KERAS_BACKEND={backend})"))
        elif backend == "torch" and item.originalname == "test_converges" and "[rosenbrock-" in item.name:
            # Keras' PyTorch backend steps eagerly: Rosenbrock's thousands of
            # steps take minutes per optimizer here. `make test`'s fast
            # selection leaves them out on torch; `nox -s backend-torch -- -m slow`
            # runs them (they run compiled, in seconds, on TensorFlow and JAX).
            item.add_marker(pytest.mark.slow)
