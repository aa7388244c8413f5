"""`serve_forever`: the loop a parameter-server ``worker`` or ``ps`` task runs."""

from __future__ import annotations

import time

from absl import logging

from strategies import cluster as cluster_lib
from strategies.building import _cluster_builders, _resolve
from strategies.building._config import StrategyConfig
from strategies.building._errors import StrategyError

# Polls in a row that must miss the chief before a server concludes it is gone;
# one miss can be a busy accept queue.
_MISSES_TO_STOP = 3


def serve_forever(config: StrategyConfig, *, timeout: float | None = None, poll_interval: float = 1.0) -> None:
    """Runs this ``worker``/``ps`` task's TensorFlow server until the chief is gone.

    In a parameter-server cluster only the chief runs Python training code; the
    other tasks host a `tf.distribute.Server` that the chief drives. Unlike
    ``server.join()``, which never returns, this returns when the chief's port
    stops answering (training ended or the chief died), or after ``timeout``
    seconds, so no task outlives its job.

    Args:
        config: The same config the chief uses; the cluster comes from its host
            fields, ``TF_CONFIG`` or Slurm, as in `strategies.build`.
        timeout: Optional upper bound on the whole call, in seconds.
        poll_interval: Seconds between checks that the chief is alive.

    Raises:
        StrategyError: If this task is not a parameter-server ``worker``/``ps``,
            or the chief does not come up within ``config.cluster_timeout``.

    Example:

    ```python
    if strategies.is_server_task(config):
        strategies.serve_forever(config)
    else:
        strategy = strategies.build(config)
    ```
    """
    import tensorflow as tf

    found = _resolve.resolve(config)
    if found is None:
        raise StrategyError(
            "`strategy` needs a parameter-server cluster for serve_forever: set TF_CONFIG or "
            "--chief_host/--worker_hosts/--ps_hosts with --task_type/--task_index. "
            f"Received: strategy={config.strategy!r}."
        )
    _cluster_builders.check_parameter_server_cluster(found)
    if found.task_type not in ("worker", "ps"):
        raise StrategyError(
            f"serve_forever runs parameter-server worker and ps tasks, and this process is the "
            f"{found.task_type}; call strategies.build(config) in it. Received: task_type={found.task_type!r}."
        )
    server = tf.distribute.Server(
        tf.train.ClusterSpec(found.spec), job_name=found.task_type, task_index=found.task_index,
        protocol="grpc", start=True,
    )  # fmt: skip
    name = cluster_lib.task_name(*found.task)
    logging.info("%s serving at %s", name, found.spec[found.task_type][found.task_index])
    try:
        _wait_for_chief(found, config.cluster_timeout, timeout, poll_interval)
    finally:
        # TF cannot shut a server down cleanly (it logs and leaks); dropping
        # the reference stops accepting work, and process exit does the rest.
        del server


def _wait_for_chief(found: _resolve.Cluster, cluster_timeout: float, timeout: float | None, poll: float) -> None:
    chief = found.spec["chief"][0]
    start = time.monotonic()
    end = None if timeout is None else start + timeout
    while not cluster_lib.reachable(chief, timeout=min(1.0, poll)):
        now = time.monotonic()
        if end is not None and now >= end:
            return
        if now - start >= cluster_timeout:
            raise StrategyError(
                f"The chief at {chief} did not come up within {cluster_timeout:g} s; start it, check its "
                f"address, or raise --cluster_timeout. Received: cluster_timeout={cluster_timeout:g}."
            )
        time.sleep(poll)
    misses = 0
    while misses < _MISSES_TO_STOP:
        if end is not None and time.monotonic() >= end:
            logging.info("serve_forever: timeout reached; stopping")
            return
        time.sleep(poll)
        misses = 0 if cluster_lib.reachable(chief, timeout=min(1.0, poll)) else misses + 1
    logging.info("serve_forever: chief at %s is gone; stopping", chief)
