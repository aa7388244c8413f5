"""What a run leaves in ``--model_dir`` besides the model: ``summary.json`` and a plot.

Both files are written to a temporary name and then renamed, so a run killed
while writing never leaves a half-written file in place of a good one. Paths go
through ``tf.io.gfile``, so ``--model_dir=gs://...`` works as on a TPU pod.
"""

from __future__ import annotations

import io
import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

import strategies

SUMMARY_FILE = "summary.json"
PLOT_FILE = "curves.png"


def jsonable(value: Any) -> Any:
    """``value`` with NumPy/TF scalars as Python numbers and NaN/inf as strings.

    JSON has no NaN, and ``json.dumps`` would otherwise write a non-standard
    ``NaN`` that strict parsers reject.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "numpy"):  # a TF or Keras tensor / variable
        value = value.numpy()
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _write_atomically(path: str, data: bytes) -> None:
    """The old file or the new one; a failed write raises `strategies.CheckpointWriteError`."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except (OSError, tf.errors.OpError) as error:
        kept = path if tf.io.gfile.exists(path) else None
        raise strategies.CheckpointWriteError(path, error, kept=kept) from None
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)


def write_summary(model_dir: str, summary: Mapping[str, Any]) -> str:
    """Writes ``summary`` into ``model_dir/summary.json`` and returns the path.

    Keys already in the file that ``summary`` does not set are kept:
    `strategies.fit` writes its own summary first, and this one extends it.
    """
    path = os.path.join(model_dir, SUMMARY_FILE)
    merged: dict[str, Any] = {}
    if tf.io.gfile.exists(path):
        try:
            with tf.io.gfile.GFile(path) as f:
                merged = json.load(f)
        except (OSError, ValueError, tf.errors.OpError):
            merged = {}  # Unreadable: replaced below, as a whole.
        if not isinstance(merged, dict):
            merged = {}
    merged.update(jsonable(summary))
    text = json.dumps(merged, indent=2) + "\n"
    _write_atomically(path, text.encode())
    return path


def plot_curves(model_dir: str, history: Mapping[str, Sequence[float]], title: str = "") -> str:
    """Plots loss and accuracy per epoch (train, and eval when present) to a PNG.

    Uses Matplotlib's Agg canvas directly, not ``pyplot``, so it changes no
    global backend (e.g. a notebook's inline one) and needs no display.

    Args:
      model_dir: Where to write ``curves.png``.
      history: ``keras.callbacks.History.history``: ``{"loss": [...],
        "accuracy": [...], "val_loss": [...], "val_accuracy": [...]}``.
      title: The figure's title.

    Returns:
      The path of the PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy"), strict=True):
        for key, label in ((metric, "train"), (f"val_{metric}", "eval")):
            values = history.get(key)
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
    if title:
        fig.suptitle(title)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    path = os.path.join(model_dir, PLOT_FILE)
    _write_atomically(path, png.getvalue())
    return path
