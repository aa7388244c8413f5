"""The two views of a `launch.bench.optimizers` run: a Markdown table and a plot.

Apart from the measuring code because they only read its rows (one dict per
optimizer, size, XLA setting and implementation, as ``optimizers.json``
stores them), so either side can change without the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def size_label(n: int) -> str:
    """1048576 -> "1M", 2048 -> "2K", anything else as it is."""
    return f"{n >> 20}M" if n % (1 << 20) == 0 else (f"{n >> 10}K" if n % 1024 == 0 else str(n))


_TABLE_HEADER = (
    "| optimizer | params | XLA | tfopt ms | tfopt GB/s | tfopt % roof "
    "| Keras | Keras ms | Keras % roof | tfopt/Keras |\n"
    "|---|---|---|---:|---:|---:|---|---:|---:|---:|"
)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """tfopt vs Keras, side by side: one line per (optimizer, size, XLA)."""
    keras_rows = {
        (r["optimizer"], r["params"], r["xla"]): r for r in rows if r["implementation"] == "keras"
    }
    lines = [_TABLE_HEADER]
    for r in rows:
        if r["implementation"] != "tfopt":
            continue
        ours = (
            f"| {r['optimizer']} | {size_label(r['params'])} | {'on' if r['xla'] else 'off'} "
            f"| {r['step_ms']:.2f} | {r['gb_per_s']:.1f} | {100 * r['fraction_of_roof']:.0f}% "
        )
        k = keras_rows.get((r["optimizer"], r["params"], r["xla"]))
        if k is None:
            theirs = "| none | | | |"
        else:
            theirs = (
                f"| {k['class']} | {k['step_ms']:.2f} | {100 * k['fraction_of_roof']:.0f}% "
                f"| {r['step_ms'] / k['step_ms']:.2f} |"
            )
        lines.append(ours + theirs)
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    """Bars of the fraction of the roof, one panel per size."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sizes = sorted({r["params"] for r in rows})
    names = list(dict.fromkeys(r["optimizer"] for r in rows))
    series = sorted(
        {(r["implementation"], r["xla"]) for r in rows}, key=lambda s: (s[0] != "tfopt", s[1])
    )
    fig = Figure(figsize=(max(8, 1.1 * len(names)), 3.2 * len(sizes)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(sizes), 1, squeeze=False)[:, 0]
    width = 0.8 / len(series)
    for ax, n in zip(axes, sizes, strict=True):
        by_key = {
            (r["optimizer"], r["implementation"], r["xla"]): r for r in rows if r["params"] == n
        }
        for i, (impl, xla) in enumerate(series):
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
            ys = [
                by_key[(o, impl, xla)]["fraction_of_roof"] if (o, impl, xla) in by_key else 0
                for o in names
            ]
            ax.bar(xs, ys, width, label=f"{impl}, XLA {'on' if xla else 'off'}")
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
        ax.set_ylabel("fraction of roof")
        ax.set_title(f"{size_label(n)} fp32 parameters")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(ncols=len(series), fontsize="small")
    fig.savefig(path, dpi=100)
