"""The `tpu` builder. Its one seam, `make_resolver`, is all that tests fake."""

from __future__ import annotations

import tensorflow as tf
from absl import logging

from strategies import cluster as cluster_lib
from strategies.building import _detect
from strategies.building._config import StrategyConfig
from strategies.building._errors import StrategyError

_WHAT_TO_DO = (
    "on Colab choose Runtime > Change runtime type > TPU and `pip install tensorflow-tpu`, "
    "on a Cloud TPU VM pass --tpu=local, elsewhere pass --tpu=NAME with --tpu_zone and --gcp_project"
)


def make_resolver(
    tpu: str | None, zone: str | None, project: str | None
) -> tf.distribute.cluster_resolver.TPUClusterResolver:
    """The seam: builds the TPU cluster resolver (the only TPU-specific lookup)."""
    return tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu, zone=zone, project=project)


def tpu(config: StrategyConfig) -> tf.distribute.Strategy:
    address = _detect.tpu_argument(config)
    tried = f"TPUClusterResolver(tpu={address!r}, zone={config.tpu_zone!r}, project={config.gcp_project!r})"
    if address and address.startswith("grpc://"):
        # Connecting to a dead address blocks forever inside TF; probe it first.
        host = address[len("grpc://") :]
        if not cluster_lib.reachable(host, timeout=min(config.cluster_timeout, 10.0)):
            raise _no_tpu(address, f"{host} did not accept a connection")
    try:
        resolver = make_resolver(address, config.tpu_zone, config.gcp_project)
        if address != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, OSError, tf.errors.OpError) as e:
        # ValueError: nothing to resolve; RuntimeError: missing cloud-tpu-client;
        # OSError: metadata/API lookup failed; OpError: no TPU kernels or chips.
        raise _no_tpu(address, f"{tried} failed with {type(e).__name__}: {_first_line(e)}") from e
    logging.info("TPU %s: %d cores", address, strategy.num_replicas_in_sync)
    return strategy


def _no_tpu(address: str | None, what: str) -> StrategyError:
    return StrategyError(
        f"No TPU could be reached with `tpu`={address!r} ({what}); {_WHAT_TO_DO}. "
        f"Received: strategy='tpu', tpu={address!r}."
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""
