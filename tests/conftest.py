"""Test session set-up shared by every test.

The CPU is split into two logical devices *before* TensorFlow initializes, so
that MirroredStrategy(["CPU:0", "CPU:1"]) runs in-process on any machine, as
Keras' own optimizer_distribute_test does. Single-device code is unaffected:
ops still default to CPU:0.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Never let a test reach for the network (TFDS download, GCS, etc.).
os.environ.setdefault("TFDS_DISABLE_GCS", "1")
os.environ.setdefault("NO_GCE_CHECK", "True")

import tensorflow as tf  # noqa: E402

NUM_VIRTUAL_CPUS = 2

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_VIRTUAL_CPUS
)
