"""What a person reads at the end of a run: the Pareto table and the accuracy-vs-size plot."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any


def policy_summary(policy: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """A compact per-layer view: 'fc1 p.90 r.25 4b' = prune 90%, rank ratio 0.25, 4-bit weights."""
    parts = []
    for layer, primitives in policy.items():
        knobs = []
        if "lowrank" in primitives and primitives["lowrank"]["rank_ratio"] < 1:
            knobs.append(f"r{primitives['lowrank']['rank_ratio']:.2g}")
        if "prune" in primitives and primitives["prune"]["ratio"] > 0:
            knobs.append(f"p{primitives['prune']['ratio']:.2f}")
        if "quantize" in primitives and primitives["quantize"]["bits"] < 32:
            knobs.append(f"{primitives['quantize']['bits']}b")
        parts.append(f"{layer}:{' '.join(knobs) or '-'}")
    return " ".join(parts)


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "ratio":
        return f"{value:.1f}x"
    if kind == "ms":
        return f"{value:.3f}"
    if kind == "num":
        return f"{value:.4g}"
    return str(value)


def is_fraction(metric: str) -> bool:
    """Whether a metric is a fraction shown in percent (accuracies and their drops), not a plain number."""
    return metric.endswith("accuracy") or metric.endswith("accuracy_drop")


def metric_text(metric: str, value: float) -> str:
    """A metric's value as the tables show it: accuracies in percent, other metrics to 4 significant digits."""
    return _cell(value, "pct" if is_fraction(metric) else "num")


COLUMNS = (
    ("trial", "id", None),
    ("val acc", "accuracy", "pct"),  # the task's primary metric (accuracy, perplexity, mse...) in its place
    ("size_bytes", "size_bytes", "int"),
    ("ratio", "compression_ratio", "ratio"),
    ("flops", "flops", "int"),
    ("latency_ms", "latency_ms", "ms"),
)


TEST_COLUMN = "test (measured once, not used for selection)"


def pareto_table(rows: Sequence[Mapping[str, Any]], baseline: Mapping[str, Any] | None = None,
                 metric: str = "accuracy") -> str:
    """Rows are flat dicts (metrics + id + policy); the baseline, when given, comes first.

    `metric` is the task's primary metric (accuracy in percent; perplexity, mse... as numbers). Validation
    metrics are what the front was chosen by; a test value (`test_<metric>`), where the rows carry one, gets
    a column of its own labelled as measured after the choice (never a column to pick by).
    """
    lines = []
    kind = "pct" if is_fraction(metric) else "num"
    columns = (COLUMNS[0], ("val acc" if metric == "accuracy" else f"val {metric}", metric, kind), *COLUMNS[2:])
    if any(row.get("latency_measured_ms") is not None for row in rows):  # latency predicted, front measured
        columns = (*columns, ("measured_ms", "latency_measured_ms", "ms"))
    if any(row.get(f"test_{metric}") is not None for row in rows):
        columns = (*columns, (TEST_COLUMN, f"test_{metric}", kind))
    header = [c[0] for c in columns] + ["policy"]
    body = []
    for row in ([{"id": "fp32", **baseline}] if baseline else []) + list(rows):
        cells = [_cell(row.get(key), kind) for _, key, kind in columns]
        cells.append(policy_summary(row["policy"]) if row.get("policy") else "uncompressed")
        body.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    lines.append("  ".join(h.rjust(w) if i < len(columns) else h for i, (h, w) in enumerate(zip(header, widths))))
    for cells in body:
        lines.append("  ".join(c.rjust(w) if i < len(columns) else c for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join(lines)


def latency_prediction_line(prediction: Mapping[str, Any]) -> str:
    """How far the layer table's latencies were from the front points timed whole (pareto.json's summary)."""
    return (f"latency predicted by the layer table; measured on the {prediction['points']} front points: median "
            f"error {100 * prediction['median_abs_error']:.1f}%, max {100 * prediction['max_abs_error']:.1f}%")


def plot_pareto(
    path: str | os.PathLike,
    trials: Sequence[Mapping[str, Any]],
    front: Sequence[Mapping[str, Any]],
    baseline: Mapping[str, Any],
    *,
    x: str = "size_bytes",
    y: str = "accuracy",
    title: str = "",
) -> None:
    """A validation metric (`y`, accuracy by default) against packed size (log x).

    Every trial, the Pareto front, and the uncompressed baseline.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    done = [t for t in trials if t.get("status") == "complete"]
    ax.scatter([t["metrics"][x] for t in done], [t["metrics"][y] for t in done], s=12, c="0.7", label="trials")
    points = sorted((t["metrics"][x], t["metrics"][y]) for t in front)
    if points:
        ax.plot(*zip(*points), "o-", c="tab:red", ms=4, lw=1.2, label="Pareto front", drawstyle="steps-post")
    ax.scatter([baseline[x]], [baseline[y]], marker="*", s=160, c="tab:blue", zorder=5, label="uncompressed fp32")
    ax.set_xscale("log")
    ax.set_xlabel(f"{x} (packed artifact, log scale)")
    ax.set_ylabel(f"validation {y}")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
