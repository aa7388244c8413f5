"""`launch.device_check`'s report: ``device_check.json``'s content, and its markdown tables."""

from __future__ import annotations

from typing import Any

import launch.device_check._catalog as catalog
from launch import _provenance


def build_report(plan: list[catalog.Check], results: dict[str, dict[str, Any]], profile: str,
                 date: str, wall_s: float, budget_s: float) -> dict[str, Any]:  # fmt: skip
    """``device_check.json``'s content: the machine, then every check of ``plan`` with a status."""
    checks = []
    for c in plan:
        r = results.get(c.name) or {"status": catalog.FAILED, "reason": "no result was recorded"}
        checks.append({"name": c.name, "status": r["status"], "reason": r.get("reason", ""),
                       "what": c.what, "layout": c.layout, "box_s": c.box_s,
                       "seconds": r.get("seconds"), "device": r.get("device"),
                       "metrics": r.get("metrics", {}),
                       **{k: r[k] for k in ("traceback", "worker_pid") if k in r}})  # fmt: skip
    accel = results.get("accelerators") or {"status": catalog.SKIPPED, "reason": "the accelerators check did not run"}
    device = accel.get("device") or next((c["device"] for c in checks if c["device"]), "unknown")
    counts = {s: sum(c["status"] == s for c in checks) for s in catalog.STATUSES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    if accel["status"] != catalog.PASS:
        summary += "; no accelerator was checked" + (" (the CPU stood in)" if profile == catalog.QUICK else "")
    return {
        "schema": "device_check/1",
        "profile": profile,
        "date": date,
        "wall_seconds": wall_s,
        "time_budget_s": budget_s,
        "machine": _provenance.machine(device=device),
        "accelerator": {"status": accel["status"], "reason": accel.get("reason", "")},
        "summary": summary,
        "counts": counts,
        "checks": checks,
    }


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.0f}%"


def _fused_table(checks: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| optimizer | params | XLA | fused == keras.ops | tfopt ms | tfopt % roof | Keras ms "
        "| Keras % roof | tfopt/Keras | roof GB/s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for check in checks:
        for r in check.get("metrics", {}).get("rows", []):
            if r["ok"] is None:
                agree = "no fused kernel"
            else:
                agree = f"{'yes' if r['ok'] else 'NO'} ({r['max_abs_difference']:.1e})"
            keras_ms = r.get("keras_ms")
            keras_cell = "" if keras_ms is None else f"{keras_ms:.3f}"
            ratio = "" if keras_ms is None else f"{r['tfopt_ms'] / keras_ms:.2f}"
            lines.append(
                f"| {r['optimizer']} | {catalog.size_label(r['params'])} | {'on' if r['xla'] else 'off'} "
                f"| {agree} | {r['tfopt_ms']:.3f} | {_pct(r['tfopt_fraction_of_roof'])} "
                f"| {keras_cell} | {_pct(r.get('keras_fraction_of_roof'))} | {ratio} "
                f"| {r['roof_gb_per_s']:.1f} |"
            )
    return lines


def _numbers(check: dict[str, Any]) -> str:
    keep = {k: v for k, v in check.get("metrics", {}).items() if not isinstance(v, (list, dict))}
    parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in keep.items()]
    return _cell(", ".join(parts))


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: header, one row per check, then the fused-kernel numbers."""
    m = report["machine"]
    lines = [
        f"# Device check ({report['profile']} profile)",
        "",
        f"- **Device:** {m['device']}",
        f"- **Accelerator:** {report['accelerator']['status']} ({_cell(report['accelerator']['reason'])})",
        f"- **Date:** {report['date']}; wall time {report['wall_seconds']:.0f} s "
        f"(budget {report['time_budget_s']:.0f} s)",
        f"- **Software:** TensorFlow {m['tensorflow']}, Keras {m['keras']}, Python {m['python']}, "
        f"{m['platform']}; git {m['git']}",
        f"- **Result:** {report['summary']}",
        "",
        "| check | status | seconds | box s | result | numbers |",
        "|---|---|---:|---:|---|---|",
    ]
    for c in report["checks"]:
        seconds = "" if c.get("seconds") is None else f"{c['seconds']:.1f}"
        numbers = "" if c["name"].startswith("fused_kernels") else _numbers(c)
        lines.append(f"| {c['name']} | **{c['status']}** | {seconds} | {c['box_s']:.0f} "
                     f"| {_cell(c['reason'])} | {numbers} |")  # fmt: skip
    fused = [c for c in report["checks"] if c["name"].startswith("fused_kernels") and c.get("metrics")]
    if fused:
        lines += ["", "## Fused kernels vs the memory roof", "",
                  "Roof: the faster of an XLA triad and TensorFlow's fused gradient-descent kernel "
                  "(launch.bench._roof), timed in the same rounds as the steps on arrays of "
                  "max(params, 16M) parameters (1M in the quick profile). "
                  "% roof = (bytes a step must move / roof) / step time.",
                  "", *_fused_table(fused)]  # fmt: skip
    second = [c for c in report["checks"] if c["name"] == "second_order" and c.get("metrics")]
    if second:
        lines += ["", "## Second-order step cost vs AdamW", "",
                  "One train step (forward, backward, apply) per optimizer, one device, "
                  "precondition_frequency=10; x AdamW is the median per-round ratio.",
                  "", *_second_order_table(second)]  # fmt: skip
    return "\n".join(lines) + "\n"


def _second_order_table(checks: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | batch | optimizer | ms/step | x AdamW | target |",
             "|---|---:|---|---:|---:|---:|"]  # fmt: skip
    for check in checks:
        for r in check["metrics"].get("rows", []):
            target = "" if r["target_x_adamw"] is None else f"{r['target_x_adamw']:g}x"
            lines.append(f"| {r['model']} | {r['batch']} | {r['optimizer']} | {r['step_ms']:.2f} "
                         f"| {r['x_adamw']:.2f} | {target} |")  # fmt: skip
    return lines
