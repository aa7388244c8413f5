"""A fresh MirroredStrategy(["CPU:0", "CPU:1"]) per call, safe to create many times.

Every MirroredStrategy numbers its collective groups from 1, and TF's
collective executor remembers each (group, instance) key for the life of the
process. A second strategy over the same devices therefore reuses the first
one's keys, and its first all-reduce of a different size fails with "Shape
mismatch in the collective instance 100" (tensorflow/tensorflow#62790, seen
with TF 2.21). TF's own tests give each strategy its own key range through
the class attribute ``_collective_key_base`` ("Only set this in tests"), and
so does strategies.compat._keras_compat.mirrored_strategy, which this uses.
"""

from __future__ import annotations

import tensorflow as tf

from strategies.compat import _keras_compat


def two_cpus() -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over the two logical CPUs that tests/conftest.py creates.

    Built through the one workaround the project ships, so that every test
    module draws its collective keys from the same counter.
    """
    strategy = _keras_compat.mirrored_strategy(["CPU:0", "CPU:1"])
    assert strategy.num_replicas_in_sync == 2
    return strategy
