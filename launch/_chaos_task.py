"""One task of a `launch.chaos` job: ``launch.train``, reporting its progress to the harness.

    python -m launch._chaos_task PROGRESS_DIR [launch.train flags...]

Runs launch.train's real console entry point with two additions, both only
observations or pauses, never changes to training:

* after every step, ``PROGRESS_DIR/<task>.step`` holds the optimizer's step
  counter (written atomically), so the harness kills at steps it chose;
* while ``PROGRESS_DIR/kill-in-write`` exists, this task's next checkpoint
  save stops between writing its data files and committing them (the
  ``checkpoint`` state file update), writes ``PROGRESS_DIR/<task>.in-write``
  and waits there, so that the harness's SIGKILL lands inside a checkpoint
  write.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import keras

import strategies
from launch import train


def _task_name() -> str:
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    return f"{task.get('type', 'local')}{task.get('index', 0)}"


class ReportProgress(keras.callbacks.Callback):
    def __init__(self, progress_dir: str) -> None:
        super().__init__()
        self.path = os.path.join(progress_dir, f"{_task_name()}.step")

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        step = int(self.model.optimizer.iterations.numpy())
        with open(self.path + ".tmp", "w") as f:
            f.write(str(step))
        os.replace(self.path + ".tmp", self.path)


def _hold_inside_writes(progress_dir: str) -> None:
    from tensorflow.python.checkpoint import checkpoint_management

    original = checkpoint_management.update_checkpoint_state_internal
    request = os.path.join(progress_dir, "kill-in-write")
    marker = os.path.join(progress_dir, f"{_task_name()}.in-write")

    def update_state(*args: Any, **kwargs: Any) -> Any:
        # Only the chief's own checkpoints (other workers save to temporary directories).
        directory = str(kwargs.get("save_dir", args[0] if args else ""))
        if os.path.exists(request) and "worker_checkpoints" not in directory:
            with open(marker, "w") as f:
                f.write(directory)
            deadline = time.monotonic() + 60
            while os.path.exists(request) and time.monotonic() < deadline:
                time.sleep(0.01)
        return original(*args, **kwargs)

    checkpoint_management.update_checkpoint_state_internal = update_state


def run() -> None:
    """Entry point: ``python -m launch._chaos_task PROGRESS_DIR [launch.train flags...]``."""
    progress_dir = sys.argv[1]
    _hold_inside_writes(progress_dir)
    real_fit = strategies.fit

    def fit(*args: Any, callbacks: Any = (), **kwargs: Any) -> Any:
        return real_fit(*args, callbacks=[ReportProgress(progress_dir), *callbacks], **kwargs)

    strategies.fit = fit
    train.run([sys.argv[0], *sys.argv[2:]])


if __name__ == "__main__":
    run()
