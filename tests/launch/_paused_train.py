"""``launch.train`` with a pause at a chosen step, for the fault tests to strike at.

    python -m tests.launch._paused_train PAUSE_STEPS MARKER_DIR [launch.train flags...]

Runs launch.train's real console entry point (``launch.train.run``) with one
extra Keras callback handed to ``strategies.fit``: at the first step end at or
past each step in PAUSE_STEPS (comma-separated; the optimizer's step count, so
resumed steps are included), this process writes
``MARKER_DIR/paused-<step>-<task>`` and waits until ``MARKER_DIR/release-<step>``
exists (at most 120 s). A test
kills or signals the process there, at a step it knows, instead of guessing
with timers. PAUSE_STEPS may be empty: then it is launch.train, unchanged.
"""

from __future__ import annotations

import json
import os
import sys
import time

import keras

import strategies
from launch import train


class PauseAt(keras.callbacks.Callback):
    """Waits for a release file at the first step end at or past each of ``steps``.

    The step is the optimizer's counter, so it is global (resumed steps
    included) and also right under parameter servers, whose step ends come in
    chunks.
    """

    def __init__(self, steps: set[int], marker_dir: str) -> None:
        super().__init__()
        self.pending, self.marker_dir = sorted(steps), marker_dir
        task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
        self.task = f"{task.get('type', 'local')}{task.get('index', 0)}"

    def on_train_batch_end(self, batch, logs=None):
        if not self.pending:
            return
        step = int(self.model.optimizer.iterations.numpy())
        while self.pending and step >= self.pending[0]:
            self._pause(self.pending.pop(0), step)

    def _pause(self, target: int, step: int) -> None:
        with open(os.path.join(self.marker_dir, f"paused-{target}-{self.task}"), "w") as f:
            f.write(str(step))
        release = os.path.join(self.marker_dir, f"release-{target}")
        deadline = time.monotonic() + 120
        while not os.path.exists(release) and time.monotonic() < deadline:
            time.sleep(0.05)


def main() -> None:
    steps = {int(s) for s in sys.argv[1].split(",") if s}
    marker_dir = sys.argv[2]
    real_fit = strategies.fit

    def fit(*args, callbacks=(), **kwargs):
        return real_fit(*args, callbacks=[PauseAt(steps, marker_dir), *callbacks], **kwargs)

    strategies.fit = fit
    train.run([sys.argv[0], *sys.argv[3:]])


if __name__ == "__main__":
    main()
