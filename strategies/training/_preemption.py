"""Preemption: on SIGTERM, every worker saves at the same step, then training stops.

A preemption notice (Cloud TPU VMs, spot GPUs, Kubernetes evictions) is a
SIGTERM followed, some seconds later, by SIGKILL. `PreemptionWatcher` turns the
SIGTERM into one step at which training checkpoints and stops, raising
`Preempted`; ``launch.train`` then exits with status 143, the "restartable"
code TensorFlow's own GCE handler uses (``failure_handling_util``).

Under MultiWorkerMirroredStrategy the step must be the same on every worker,
because saving and every training step are collective: a worker that stopped
alone would leave the others waiting forever. TensorFlow's
``PreemptionCheckpointHandler`` solves this with its coordination service, but
it probes the GCE metadata server at start-up and does nothing on GCE CPU and
TPU VMs, which is where this toolkit meets preemptions. So this module runs the
same protocol itself, through the same coordination-service key-value store:

1. The first worker whose SIGTERM is seen at a step end claims the preemption
   (an insert that fails for every later claimer) and publishes
   ``target = its last finished step + 1``.
2. Every worker's watcher thread reads ``target`` and acknowledges it; the
   claimer waits for every acknowledgement before it starts its next step.
3. MultiWorkerMirrored steps are collective, so no worker can finish step
   ``target`` before the claimer starts it, and by then every worker knows
   ``target``: each one stops at its first step end at or after it.

Single-process strategies (and a parameter-server coordinator, which alone
runs the training loop) need no agreement: they stop at the next step end.
"""

from __future__ import annotations

import itertools
import signal
import threading
from typing import Any

import tensorflow as tf
from absl import logging

from strategies.compat import _tf_internals
from strategies.training import _roles

_STOP = "stop"
_ACK_TIMEOUT_MS = 60_000
# Keys are unique per fit() call; every worker makes the same calls, in order.
_CALLS = itertools.count()


class Preempted(Exception):  # A state, not a failure: "the run was preempted".
    """Training stopped on a preemption notice, after its checkpoint was saved.

    Attributes:
        step: the global step the checkpoint holds.
        checkpoint: the checkpoint's path on the chief (None on other workers).
    """

    def __init__(self, step: int, checkpoint: str | None) -> None:
        where = f" to {checkpoint}" if checkpoint else ""
        super().__init__(
            f"preempted (SIGTERM): saved a checkpoint at step {step}{where}; run the same "
            "command again to resume from it."
        )
        self.step = step
        self.checkpoint = checkpoint


class PreemptionWatcher:
    """Watches for SIGTERM and names the step at which every worker stops.

    Use it as a context manager around training, and call `should_stop` at
    every step end with the global step just finished.

    Args:
        strategy: the strategy training runs under.
        signum: the signal that announces a preemption.
    """

    def __init__(self, strategy: tf.distribute.Strategy, signum: int = signal.SIGTERM) -> None:
        self._signum = signum
        self._signaled = threading.Event()
        self._target: int | None = None
        self._claim_tried = False
        self._previous: Any = None
        self._thread: threading.Thread | None = None
        spec = strategy.cluster_resolver.cluster_spec().as_dict() if _is_multi_worker(strategy) else {}
        self._workers = len(spec.get("worker", [])) + len(spec.get("chief", []))
        task = _roles.task(strategy)
        self._me = "_".join(map(str, task)) if task else "local"
        self._peers = [f"{job}_{i}" for job in ("chief", "worker") for i in range(len(spec.get(job, [])))]
        call = next(_CALLS)
        self._claim_key = f"tfopt/preemption/{call}/claim"
        self._target_key = f"tfopt/preemption/{call}/target"
        self._ack_key = f"tfopt/preemption/{call}/ack/"

    @property
    def multi_worker(self) -> bool:
        return self._workers > 1

    def __enter__(self) -> PreemptionWatcher:
        if threading.current_thread() is not threading.main_thread():
            logging.warning("Not on the main thread: SIGTERM will not checkpoint before exiting.")
            return self
        self._previous = signal.signal(self._signum, self._on_signal)
        if self.multi_worker:
            self._thread = threading.Thread(target=self._watch, name="tfopt-preemption", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # After a preemption the process is on its way out: a second notice
        # (a launcher stopping the cluster, a scheduler repeating itself) must
        # not kill it before it exits by itself, so the handler stays.
        if self._previous is not None and self._target is None:
            signal.signal(self._signum, self._previous)
            self._previous = None
        if self._thread is not None and exc[0] is not None:
            # Training failed (a collective aborted: a lost peer, or a hung leader, whose
            # coordination service would never answer this write, which has no deadline).
            # The watcher is a daemon thread: it ends with the process.
            self._thread = None
        if self._thread is not None:
            # Wakes every worker's blocked watcher; the first one to finish sets it.
            try:
                _insert(self._target_key, _STOP)
            except tf.errors.OpError:
                # The chief, which runs the coordination service, is gone already;
                # the watcher (a daemon thread) then ends with the process.
                pass
            else:
                self._thread.join(timeout=5.0)
            self._thread = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only a flag: the training loop acts on it at its next step end.
        self._signaled.set()

    @property
    def signaled(self) -> bool:
        """Whether this process received the signal."""
        return self._signaled.is_set()

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint and stop now, ``step`` being the global step just finished."""
        if self._target is not None:
            return step >= self._target
        if not self._signaled.is_set():
            return False
        if not self.multi_worker:
            self._target = step
            return True
        if not self._claim_tried:
            self._claim_tried = True
            if _insert(self._claim_key, self._me):
                target = step + 1
                logging.info("SIGTERM: every worker checkpoints and stops after step %d.", target)
                _insert(self._target_key, str(target))
                try:
                    for peer in self._peers:
                        _tf_internals.get_cluster_value(self._ack_key + peer, _ACK_TIMEOUT_MS)
                except tf.errors.OpError as error:
                    # A peer that cannot acknowledge is gone; its collective will fail anyway.
                    logging.warning("No acknowledgement of the preemption step: %s",
                                    str(error).splitlines()[0])
        return False

    def _watch(self) -> None:
        try:
            value = _tf_internals.get_cluster_value(self._target_key)  # Blocks until set.
            if value == _STOP:
                return
            self._target = int(value)
            _insert(self._ack_key + self._me, "1")
        except tf.errors.OpError as error:  # The cluster is going down.
            logging.info("Preemption watcher stopped: %s", str(error).splitlines()[0])


def _insert(key: str, value: str) -> bool:
    """Inserts ``key`` unless it exists; returns whether this call inserted it."""
    try:
        _tf_internals.set_cluster_value(key, value)
    except tf.errors.AlreadyExistsError:
        return False
    return True


def _is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.cluster_resolver is not None and bool(strategy.cluster_resolver.cluster_spec().jobs)
    )
