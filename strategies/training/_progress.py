"""One progress line per epoch, the same under every strategy: metrics, steps/s, examples/s."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import keras

from strategies.compat import _keras_compat


def format_line(epoch: int, epochs: int, logs: dict[str, Any], steps: int, seconds: float,
                examples: float | None) -> str:
    """``Epoch 2/5 - loss: 0.2310 - accuracy: 0.9312 - 56 steps in 0.41s - 136.6 steps/s ...``."""
    parts = [f"Epoch {epoch + 1}/{epochs}"]
    parts += [f"{name}: {float(value):.4f}" for name, value in logs.items()
              if _is_scalar(value)]
    seconds = max(seconds, 1e-9)
    parts.append(f"{steps} steps in {seconds:.2f}s")
    parts.append(f"{steps / seconds:.1f} steps/s")
    if examples is not None:
        parts.append(f"{examples / seconds:.0f} examples/s")
    return " - ".join(parts)


def _is_scalar(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


class EpochProgress(keras.callbacks.Callback):
    """Prints one line per epoch and records its throughput in the epoch logs.

    The timing window is the epoch's training steps only (it closes at the
    first validation batch, if any). The example count comes from the loss
    tracker (exact, summed over replicas and workers) and is read on every
    worker, because under MultiWorkerMirroredStrategy that read is a
    collective; only ``print_fn`` is chief-only.

    Adds ``steps_per_second`` and ``examples_per_second`` to the epoch's logs,
    so History and TensorBoard record them.

    Args:
        print_fn: where the line goes; None reads and records but prints nothing.
        epochs: the run's total epochs for "Epoch 2/5"; None reads Keras' params
            (which a resumed, split run would get wrong).
        stream: used when ``print_fn`` is the default.
    """

    def __init__(self, print_fn: Callable[[str], None] | None | str = "default",
                 epochs: int | None = None, stream: TextIO | None = None) -> None:
        super().__init__()
        if print_fn == "default":
            out = stream or sys.stdout
            print_fn = lambda line: print(line, file=out, flush=True)  # noqa: E731
        self._print = print_fn
        self._total = epochs
        self._epochs = epochs or 0
        self.last: dict[str, float] = {}

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._epochs = self._total or int(self.params.get("epochs") or 0)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._steps = 0
        self._closed = False
        self._start = time.perf_counter()
        self._end = self._start
        self._examples: float | None = None

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # `batch` is the last step of this execution; Keras does not clamp it
        # to the epoch's length when the last execution is partial.
        total = self.params.get("steps") if self.params else None
        self._steps = min(batch + 1, total) if total else batch + 1
        self._end = time.perf_counter()

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        # Validation resets the loss tracker; read the training count first.
        if not self._closed and getattr(self, "_start", None) is not None:
            self._close()

    def _close(self) -> None:
        self._examples = _keras_compat.examples_seen(self.model)
        self._closed = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if not self._closed:
            self._close()
        seconds = max(self._end - self._start, 1e-9)
        self.last = {"steps": self._steps, "seconds": seconds,
                     "steps_per_second": self._steps / seconds}
        if self._examples is not None:
            self.last["examples"] = self._examples
            self.last["examples_per_second"] = self._examples / seconds
        if logs is not None:
            shown = dict(logs)
            logs["steps_per_second"] = self.last["steps_per_second"]
            if self._examples is not None:
                logs["examples_per_second"] = self.last["examples_per_second"]
        else:
            shown = {}
        if self._print is not None:
            self._print(format_line(epoch, self._epochs or epoch + 1, shown, self._steps,
                                    seconds, self._examples))
