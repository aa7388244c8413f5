"""A fresh MirroredStrategy(["CPU:0", "CPU:1"]) per call, safe to create many times.

Every MirroredStrategy numbers its collective groups from 1, and TF's
collective executor remembers each (group, instance) key for the life of the
process. A second strategy over the same devices therefore reuses the first
one's keys, and its first all-reduce of a different size fails with "Shape
mismatch in the collective instance 100" (tensorflow/tensorflow#62790, seen
with TF 2.21). TF's own tests give each strategy its own key range through
the class attribute ``_collective_key_base`` ("Only set this in tests"), and
so do we.
"""

from __future__ import annotations

import itertools
import threading

import tensorflow as tf

# Far above the keys of strategies created elsewhere in the same test process.
_KEY_BASES = itertools.count(start=100_000, step=1_000)
_LOCK = threading.Lock()


def two_cpus() -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over the two logical CPUs that tests/conftest.py creates."""
    with _LOCK:
        previous = tf.distribute.MirroredStrategy._collective_key_base
        tf.distribute.MirroredStrategy._collective_key_base = next(_KEY_BASES)
        try:
            strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
        finally:
            tf.distribute.MirroredStrategy._collective_key_base = previous
    assert strategy.num_replicas_in_sync == 2
    return strategy
