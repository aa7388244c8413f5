"""Shampoo's roots split over the two workers of a real MultiWorkerMirrored cluster.

Two processes on 127.0.0.1 (launch.local_cluster), one CPU replica each, run
tests/tfopt/shampoo_programs.py: the refresh's all-reduce is a
CollectiveAllReduce inside a tf.cond of the cross-replica context. Both
workers must end with the one-device weights.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from launch import local_cluster
from tests.tfopt import shampoo_programs

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.tensorflow_only("Shampoo's root splitting runs under tf.distribute (TensorFlow) only"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_multi_worker_split_refresh_equals_one_device(tmp_path):
    command = [sys.executable, "-m", "tests.tfopt.shampoo_programs", str(tmp_path)]
    result = local_cluster.run_cluster(
        command, workers=2, timeout=150.0, env={"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT},
        output=None, cwd=ROOT,
    )  # fmt: skip
    tail = "\n".join(f"[{n}] {line}" for n, out in result.output.items() for line in out[-15:])
    assert result.returncode == 0, f"{result.reason}\n{tail}"
    expected = shampoo_programs.train(tf.distribute.OneDeviceStrategy("CPU:0"))
    for worker in ("worker0", "worker1"):
        with open(tmp_path / f"shampoo-{worker}.json") as f:
            assert json.load(f)["replicas"] == 2
        with np.load(tmp_path / f"shampoo-{worker}.npz") as saved:
            weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        for want, got in zip(expected, weights, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=worker)
