"""`autocomp report RUN --html`: one self-contained HTML page for a run directory.

Everything is inline (CSS, SVG drawn here, a little plain JS for tooltips and the axis switch), so the file
opens from disk with no server and no network. Only the standard library: reading a run costs no torch.
Every string from the run files (run names, layer names, errors, settings) goes through `html.escape`;
data for the script is JSON with `<`, `>` and `&` escaped, so nothing in it can close the script element.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autocomp.early_stop import curve
from autocomp.errors import RunError
from autocomp.report import TEST_COLUMN
from autocomp.store import RunStore, write_atomic

REPORT = "report.html"

# knob -> (label, value shown, bar length in [0, 1]); bits on a log scale so 2, 4, 8 and 32 bits all show
_BITS = ("bits", lambda v: v, lambda v: min(1.0, max(0.0, (math.log2(max(v, 1)) + 1) / 6)))
KNOB_VIEWS: dict[tuple[str, str], tuple[str, Any, Any]] = {
    ("prune", "ratio"): ("weights kept", lambda v: 1 - v, lambda v: 1 - v),
    ("channels", "ratio"): ("channels kept", lambda v: 1 - v, lambda v: 1 - v),
    ("lowrank", "rank_ratio"): ("rank ratio", lambda v: v, lambda v: v),
    ("lowrank", "energy"): ("energy kept", lambda v: v, lambda v: v),
    ("quantize", "bits"): ("weight bits",) + _BITS[1:],
    ("quantize", "act_bits"): ("activation bits",) + _BITS[1:],
    ("share", "bits"): ("shared-weight bits",) + _BITS[1:],
    ("skip", "drop"): ("dropped", lambda v: v, lambda v: float(v)),
}
PERCENT_KNOBS = {("prune", "ratio"), ("channels", "ratio")}
SERIES_COLORS = ("#2f6fb0", "#e07b28", "#3a9a5b", "#b8453b", "#7d5ab5", "#8c6d31", "#c2549d", "#5f6b73")
FRONT_COLORS = ("#d1495b", "#2f6fb0", "#3a9a5b", "#e07b28", "#7d5ab5", "#00798c", "#c2549d", "#8c6d31")


def esc(value: Any) -> str:
    """HTML-escaped text of any value (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def _num(value: Any) -> float | None:
    """A finite float, or None (missing, NaN, inf, non-numeric)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


# the built-in tasks' primary metrics, for a run that has no pareto.json yet (run.json names only the task)
TASK_METRICS = {"classification": "accuracy", "language-model": "perplexity", "regression": "mse"}
# metrics better when lower, where the run's objectives do not say (a primary metric that is no objective)
MINIMIZED = ("perplexity", "mse", "mae", "loss")


def _is_pct(name: str) -> bool:
    """Accuracy-like names read as percentages: `*accuracy`, `*accuracy_drop`, with test_/search_ and @N."""
    base = name.split("@", 1)[0]
    while base.startswith(("test_", "search_")):
        base = base.split("_", 1)[1]
    return base.endswith(("accuracy", "accuracy_drop"))


def _si(value: float, unit: str = "") -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def fmt(name: str, value: Any) -> str:
    """A metric as people read it: accuracies in %, bytes with thousands separators, ratios as 12.3x."""
    number = _num(value)
    if number is None:
        return "-" if value is None else str(value)
    if _is_pct(name):
        return f"{100 * number:.2f}%"
    if name.endswith("bytes") or name in ("flops", "flops_sparse", "params", "params_stored", "params_nonzero"):
        return f"{number:,.0f}"
    if name == "compression_ratio":
        return f"{number:.1f}x"
    if name.endswith("_ms"):
        return f"{number:.3f} ms"
    if number == int(number) and abs(number) < 1e15:
        return f"{int(number):,}"
    return f"{number:.4g}"


def _tick_label(name: str, value: float, step: float) -> str:
    if _is_pct(name):
        digits = max(0, min(3, -math.floor(math.log10(100 * step)) if step > 0 else 0))
        return f"{100 * value:.{digits}f}%"
    if name.endswith("bytes"):
        return _si(value, "B")
    if abs(value) >= 1e3:
        return _si(value)
    return f"{value:.3g}"


def layer_summary(primitives: Mapping[str, Mapping[str, Any]]) -> str:
    """One layer's policy in words, identity knobs left out: 'pruned 90% · 4-bit · rank 0.25'."""
    parts = []
    for name, knobs in primitives.items():
        knobs = knobs if isinstance(knobs, Mapping) else {}
        if name == "prune" and (_num(knobs.get("ratio")) or 0) > 0:
            parts.append(f"pruned {100 * knobs['ratio']:.0f}%")
        elif name == "channels" and (_num(knobs.get("ratio")) or 0) > 0:
            parts.append(f"channels -{100 * knobs['ratio']:.0f}%")
        elif name == "lowrank" and (_num(knobs.get("rank_ratio")) or 1) < 1:
            parts.append(f"rank {knobs['rank_ratio']:.3g}")
        elif name == "quantize":
            if (_num(knobs.get("bits")) or 32) < 32:
                parts.append(f"{knobs['bits']}-bit")
            if (_num(knobs.get("act_bits")) or 32) < 32:
                parts.append(f"act {knobs['act_bits']}-bit")
        elif name == "share" and (_num(knobs.get("bits")) or 32) < 32:
            parts.append(f"shared {knobs['bits']}-bit")
        elif name == "skip" and knobs.get("drop"):
            parts.append("skipped")
        elif name == "substitute" and knobs.get("block") not in (None, "none"):
            parts.append(f"block {knobs['block']}")
        elif name not in ("prune", "channels", "lowrank", "quantize", "share", "skip", "substitute"):
            parts.append(f"{name}({', '.join(f'{k}={v}' for k, v in knobs.items())})")
    return " · ".join(parts) or "-"


def policy_lines(policy: Mapping[str, Any] | None) -> list[list[str]]:
    """[[layer, summary], ...] for a policy dict {layer: {primitive: {knob: value}}}."""
    if not isinstance(policy, Mapping):
        return []
    return [[str(layer), layer_summary(prims) if isinstance(prims, Mapping) else str(prims)]
            for layer, prims in policy.items()]


# --- reading the run --------------------------------------------------------------------------------------


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return None


def load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What the report shows, read from the run directory (no lock taken: a running search is fine)."""
    store = RunStore(run_dir)
    info = store.read_json("run.json")
    if info is None:
        raise RunError(f"'{run_dir}' is not a run directory (no run.json)")
    return {
        "name": store.path.resolve().name,
        "info": info,
        "trials": store.trials(),
        "pareto": store.read_json("pareto.json"),
        "final": store.read_json("final.json"),
        "sensitivity": store.read_json("sensitivity.json"),
        "latency_table": (store.path / "latency_table.json").is_file(),
        "space_yaml": _read_text(store.path / "space.yaml"),
    }


def _objectives(run: Mapping[str, Any]) -> list[dict[str, str]]:
    found = (run["pareto"] or {}).get("objectives") or run["info"].get("objectives") or []
    out = []
    for item in found:  # pareto.json: {"name", "direction"}; older files may hold [name, direction]
        if isinstance(item, Mapping) and "name" in item:
            out.append({"name": str(item["name"]), "direction": str(item.get("direction", "maximize"))})
        elif isinstance(item, (list, tuple)) and item:
            out.append({"name": str(item[0]), "direction": str(item[1]) if len(item) > 1 else "maximize"})
    return out


def _metric(run: Mapping[str, Any], objectives: Sequence[Mapping[str, str]]) -> tuple[str, bool]:
    """The run's primary metric and whether higher is better (runs from before tasks: accuracy)."""
    metric = (run["pareto"] or {}).get("metric")
    if not isinstance(metric, str) or not metric:
        metric = TASK_METRICS.get(str(run["info"].get("task", "classification")), "accuracy")
    direction = next((o["direction"] for o in objectives if o["name"] == metric), None)
    if direction is None:
        return metric, not (metric in MINIMIZED or metric.endswith(("_loss", "_error")))
    return metric, direction == "maximize"


def _value(trial: Mapping[str, Any], name: str, objectives: Sequence[Mapping[str, str]]) -> float | None:
    """A metric of a trial, or an objective's value (a user-function objective is only in `values`)."""
    metrics = trial.get("metrics") or {}
    if name in metrics:
        return _num(metrics[name])
    values = trial.get("values") or []
    for i, o in enumerate(objectives):
        if o["name"] == name and i < len(values):
            return _num(values[i])
    return None


def _pairs(run: Mapping[str, Any], objectives: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
    """(x, y) metric pairs to plot: the primary metric vs size_bytes when the run has both, then objective pairs.

    The primary metric goes on y wherever it is one of the two.
    """
    metric = run["metric"]
    have = set(run["pareto"]["baseline"]) if run["pareto"] else set()
    for t in run["trials"]:
        have |= set(t.get("metrics") or {})
    have |= {o["name"] for o in objectives}
    pairs = []
    if {metric, "size_bytes"} <= have:
        pairs.append(("size_bytes", metric))
    names = [o["name"] for o in objectives]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            # the maximized one goes up, so "up and left" or "up and right" reads as better
            y, x = (a, b) if objectives[i]["direction"] == "maximize" or a == metric else (b, a)
            if y == "size_bytes" or x == metric:
                x, y = y, x
            if (x, y) not in pairs:
                pairs.append((x, y))
    if not pairs and names:  # one objective: against size when there is one, else against the trial number
        pairs.append(("size_bytes" if "size_bytes" in have and names[0] != "size_bytes" else "id", names[0]))
    return pairs[:12]


# --- SVG ---------------------------------------------------------------------------------------------------


class _Axis:
    """A linear or log scale from data values to pixels; log when all values are positive and span >= 20x."""

    def __init__(self, name: str, values: Iterable[float], lo_px: float, hi_px: float, log: bool | None = None,
                 integer: bool = False, title: str | None = None):
        self.integer = integer  # whole-number ticks only (epochs, trial numbers)
        self.title = title  # the axis title, where the metric's name alone does not say enough
        vals = [v for v in values if v is not None and math.isfinite(v)]
        self.name, self.lo_px, self.hi_px = name, lo_px, hi_px
        positive = bool(vals) and min(vals) > 0
        self.log = positive and (max(vals) / min(vals) >= 20 if log is None else log)
        if not vals:
            vals = [0.0, 1.0]
        lo, hi = min(vals), max(vals)
        if self.log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi == lo:
            pad = abs(lo) * 0.05 or 0.5
        else:
            pad = (hi - lo) * 0.06
        self.lo, self.hi = lo - pad, hi + pad

    def __call__(self, value: float) -> float:
        v = math.log10(value) if self.log else value
        return self.lo_px + (v - self.lo) / (self.hi - self.lo) * (self.hi_px - self.lo_px)

    def ticks(self) -> list[tuple[float, str]]:
        if self.log:
            first, last = math.floor(self.lo), math.ceil(self.hi)
            mults = (1,) if last - first > 3 else (1, 2, 5)
            values = [m * 10**k for k in range(first, last + 1) for m in mults]
            values = [v for v in values if self.lo <= math.log10(v) <= self.hi]
            step = min(values) if values else 1.0
            return [(v, _tick_label(self.name, v, step / 10)) for v in values]
        span = self.hi - self.lo
        raw = span / 5
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
        if self.integer:
            step = max(1.0, math.ceil(step))
        out, v = [], math.ceil(self.lo / step) * step
        while v <= self.hi + step * 1e-9:
            out.append((round(v, 12), _tick_label(self.name, round(v, 12), step)))
            v += step
        return out


def _axis_title(name: str, axis: _Axis) -> str:
    words = axis.title or {"size_bytes": "size_bytes (packed artifact)", "accuracy": "validation accuracy",
                           "latency_ms": "latency_ms", "id": "trial"}.get(name, name)
    return words + (" (log scale)" if axis.log else "")


def _metric_title(run: Mapping[str, Any], name: str) -> str | None:
    """The axis title of the run's primary metric (saying so when lower is better), None for other names."""
    if name != run["metric"]:
        return None
    return f"validation {name}" + ("" if run["maximize"] else " (lower is better)")


def _frame(x: _Axis, y: _Axis, width: int, height: int, left: int, top: int) -> list[str]:
    """Grid, ticks and axis titles of a chart."""
    out = [f'<rect class="plot" x="{left}" y="{top}" width="{width}" height="{height}"/>']
    for value, label in x.ticks():
        px = x(value)
        out.append(f'<line class="grid" x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{top + height}"/>')
        out.append(f'<text class="tick" x="{px:.1f}" y="{top + height + 16}" text-anchor="middle">{esc(label)}</text>')
    for value, label in y.ticks():
        py = y(value)
        out.append(f'<line class="grid" x1="{left}" y1="{py:.1f}" x2="{left + width}" y2="{py:.1f}"/>')
        out.append(f'<text class="tick" x="{left - 6}" y="{py + 4:.1f}" text-anchor="end">{esc(label)}</text>')
    out.append(f'<text class="axis" x="{left + width / 2:.0f}" y="{top + height + 38}" text-anchor="middle">'
               f'{esc(_axis_title(x.name, x))}</text>')
    out.append(f'<text class="axis" transform="translate({left - 56},{top + height / 2:.0f}) rotate(-90)" '
               f'text-anchor="middle">{esc(_axis_title(y.name, y))}</text>')
    return out


def _star(cx: float, cy: float, r: float) -> str:
    points = []
    for i in range(10):
        radius = r if i % 2 == 0 else r * 0.45
        angle = math.pi / 2 + i * math.pi / 5
        points.append(f"{cx + radius * math.cos(angle):.1f},{cy - radius * math.sin(angle):.1f}")
    return " ".join(points)


def scatter_svg(run: Mapping[str, Any], x_name: str, y_name: str, objectives: Sequence[Mapping[str, str]],
                *, step_line: bool) -> str:
    """Every trial faint, the front highlighted (one hover target per point), the baseline as a star."""
    front_ids = {t["id"] for t in (run["pareto"] or {}).get("trials", [])}

    def coord(t: Mapping[str, Any]) -> tuple[float | None, float | None]:
        if x_name == "id":
            return _num(t.get("id")), _value(t, y_name, objectives)
        return _value(t, x_name, objectives), _value(t, y_name, objectives)

    points = [(t, *coord(t)) for t in run["trials"]]
    points = [(t, px, py) for t, px, py in points if px is not None and py is not None]
    baseline = (run["pareto"] or {}).get("baseline") or run["info"].get("baseline") or {}
    bx, by = _num(baseline.get(x_name)), _num(baseline.get(y_name))
    width, height, left, top = 700, 380, 78, 14
    xs = [p[1] for p in points] + ([bx] if bx is not None else [])
    ys = [p[2] for p in points] + ([by] if by is not None else [])
    x = _Axis(x_name, xs, left, left + width, log=None if x_name != "id" else False, integer=x_name == "id",
              title=_metric_title(run, x_name))
    y = _Axis(y_name, ys, top + height, top, title=_metric_title(run, y_name))
    out = [f'<svg class="chart scatter" viewBox="0 0 {left + width + 20} {top + height + 50}" '
           f'data-x="{esc(x_name)}" data-y="{esc(y_name)}" role="img" '
           f'aria-label="{esc(y_name)} against {esc(x_name)}">']
    out += _frame(x, y, width, height, left, top)
    for t, px, py in points:
        if t["id"] in front_ids:
            continue
        status = "complete" if t.get("status") == "complete" and not t.get("violation") else "other"
        out.append(f'<circle class="hov pt trial st-{status}" tabindex="0" cx="{x(px):.1f}" cy="{y(py):.1f}" '
                   f'r="3.5" data-id="{esc(t["id"])}"/>')
    front = sorted(((x(px), y(py), t) for t, px, py in points if t["id"] in front_ids), key=lambda p: p[0])
    if step_line and len(front) > 1:
        path = [f"M{front[0][0]:.1f},{front[0][1]:.1f}"]
        for x1, y1, _ in front[1:]:
            path.append(f"H{x1:.1f}V{y1:.1f}")
        out.append(f'<path class="frontline" d="{"".join(path)}"/>')
    for px, py, t in front:
        out.append(f'<circle class="hov pt front" tabindex="0" cx="{px:.1f}" cy="{py:.1f}" r="6" '
                   f'data-id="{esc(t["id"])}"/>')
    if bx is not None and by is not None:
        out.append(f'<polygon class="hov base" tabindex="0" points="{_star(x(bx), y(by), 9)}" '
                   f'data-id="baseline"/>')
    out.append("</svg>")
    return "\n".join(out)


def _bar_series(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(primitive, knob) pairs worth a column: those the search varied, else the compressing knobs present."""
    seen: dict[tuple[str, str], set[str]] = {}
    order: list[tuple[str, str]] = []
    policies = [t.get("policy") for t in run["trials"]] + [t.get("policy") for t in run["front"]]
    for policy in policies:
        if not isinstance(policy, Mapping):
            continue
        for prims in policy.values():
            if not isinstance(prims, Mapping):
                continue
            for prim, knobs in prims.items():
                for knob, value in (knobs.items() if isinstance(knobs, Mapping) else ()):
                    key = (str(prim), str(knob))
                    if key not in seen:
                        seen[key] = set()
                        order.append(key)
                    seen[key].add(json.dumps(value, sort_keys=True, default=str))
    varied = [k for k in order if len(seen[k]) > 1]
    return varied or [k for k in order if k in KNOB_VIEWS]


def _knob(policy: Mapping[str, Any], layer: str, key: tuple[str, str]) -> Any:
    prims = policy.get(layer)
    knobs = prims.get(key[0]) if isinstance(prims, Mapping) else None
    return knobs.get(key[1]) if isinstance(knobs, Mapping) else None


def _knob_label(key: tuple[str, str]) -> str:
    return KNOB_VIEWS[key][0] if key in KNOB_VIEWS else f"{key[0]}.{key[1]}"


def _knob_text(key: tuple[str, str], value: Any) -> str:
    number = _num(value)
    if number is None:
        return "-" if value is None else str(value)
    if key in KNOB_VIEWS:
        shown = KNOB_VIEWS[key][1](number)
        if key in PERCENT_KNOBS:
            return f"{100 * shown:.0f}%"
        return f"{shown:.3g}"
    return f"{number:.4g}"


def _knob_bar(key: tuple[str, str], value: Any, scale: float) -> float | None:
    number = _num(value)
    if number is None:
        return None
    if key in KNOB_VIEWS:
        return min(1.0, max(0.0, KNOB_VIEWS[key][2](number)))
    return min(1.0, max(0.0, abs(number) / scale)) if scale > 0 else 0.0


def policy_bars_svg(policy: Mapping[str, Any], series: Sequence[tuple[str, str]],
                    scales: Mapping[tuple[str, str], float]) -> str:
    """Per layer, one thin bar per numeric knob (length = kept fraction / rank / log bits), value beside it."""
    numeric = [k for k in series if any(_num(_knob(policy, layer, k)) is not None for layer in policy)]
    layers = list(policy)
    if not numeric or not layers:
        return ""
    bar_h, gap, label_w, bar_w = 8, 10, 70, 150
    row_h = len(numeric) * (bar_h + 2) + gap
    height = row_h * len(layers) + 4
    out = [f'<svg class="chart bars" viewBox="0 0 {label_w + bar_w + 40} {height}" role="img" '
           f'aria-label="per-layer policy">']
    for i, layer in enumerate(layers):
        y0 = 2 + i * row_h
        name = layer if len(layer) <= 11 else layer[:4] + "…" + layer[-6:]
        out.append(f'<text class="layer" x="{label_w - 6}" y="{y0 + (row_h - gap) / 2 + 4:.1f}" text-anchor="end">'
                   f'<title>{esc(layer)}</title>{esc(name)}</text>')
        for j, key in enumerate(numeric):
            value = _knob(policy, layer, key)
            frac = _knob_bar(key, value, scales.get(key, 1.0))
            yy = y0 + j * (bar_h + 2)
            color = SERIES_COLORS[series.index(key) % len(SERIES_COLORS)]
            out.append(f'<rect class="track" x="{label_w}" y="{yy}" width="{bar_w}" height="{bar_h}"/>')
            if frac is not None:
                out.append(f'<rect x="{label_w}" y="{yy}" width="{bar_w * frac:.1f}" height="{bar_h}" '
                           f'fill="{color}"><title>{esc(layer)}: {esc(_knob_label(key))} '
                           f'{esc(_knob_text(key, value))}</title></rect>')
            out.append(f'<text class="val" x="{label_w + bar_w + 4}" y="{yy + bar_h - 0.5}">'
                       f'{esc(_knob_text(key, value))}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _full_curve(trial: Mapping[str, Any], epochs: int | None, metric: str = "accuracy") -> list[tuple[int, float]]:
    """A trial's `<metric>@N` points (e.g. accuracy@N, perplexity@N), plus the last epoch of a complete trial.

    The last epoch's point is the trial's `<metric>`: the journal has no `<metric>@last`, the trial's score
    is that value.
    """
    metrics = trial.get("metrics") or {}
    points = curve(metrics, metric)
    last = _num(metrics.get(metric))
    if points and trial.get("status") == "complete" and last is not None and epochs and epochs > max(points):
        points[epochs] = last
    return sorted(points.items())


def curves_svg(run: Mapping[str, Any]) -> str:
    """The validation primary metric after each fine-tuning epoch: every trial faint, front trials in colour."""
    front_ids = [t["id"] for t in run["front"]]
    metric = run["metric"]
    curves = [(t, _full_curve(t, run["epochs"], metric)) for t in run["trials"]]
    curves = [(t, c) for t, c in curves if c and all(_num(v) is not None for _, v in c)]
    if not curves:
        return ""
    width, height, left, top = 700, 320, 78, 14
    x = _Axis("epoch", [e for _, c in curves for e, _ in c] + [1], left, left + width, log=False, integer=True)
    y = _Axis(metric, [v for _, c in curves for _, v in c], top + height, top, title=_metric_title(run, metric))
    out = [f'<svg class="chart curves" viewBox="0 0 {left + width + 20} {top + height + 50}" role="img" '
           f'aria-label="learning curves">']
    out += _frame(x, y, width, height, left, top)
    ordered = sorted(curves, key=lambda tc: tc[0]["id"] in front_ids)  # front drawn last, on top
    for t, c in ordered:
        pts = " ".join(f"{x(e):.1f},{y(v):.1f}" for e, v in c)
        if t["id"] in front_ids:
            color = FRONT_COLORS[front_ids.index(t["id"]) % len(FRONT_COLORS)]
            cls, style = "curve front", f' style="stroke:{color}"'
        else:
            cls, style = f"curve st-{esc(t.get('status', 'other'))}", ""
        out.append(f'<polyline class="hov {cls}" points="{pts}" data-id="{esc(t["id"])}"{style}/>')
        e, v = c[-1]
        fill = f' style="fill:{color}"' if t["id"] in front_ids else ""
        out.append(f'<circle class="hov end {cls}" tabindex="0" cx="{x(e):.1f}" cy="{y(v):.1f}" '
                   f'r="{4 if t["id"] in front_ids else 2.5}" data-id="{esc(t["id"])}"{fill}/>')
    out.append("</svg>")
    return "\n".join(out)


def latency_svg(rows: Sequence[tuple[Any, float, float]]) -> str:
    """Predicted (layer table) against measured (timed whole) latency of the front, with the y = x line."""
    width, height, left, top = 420, 320, 78, 14
    values = [v for _, p, m in rows for v in (p, m)]
    x = _Axis("predicted latency_ms", values, left, left + width, log=False)
    y = _Axis("measured latency_ms", values, top + height, top)
    lo, hi = max(x.lo, y.lo), min(x.hi, y.hi)
    out = [f'<svg class="chart latency" viewBox="0 0 {left + width + 20} {top + height + 50}" role="img" '
           f'aria-label="predicted against measured latency">']
    out += _frame(x, y, width, height, left, top)
    if hi > lo:
        out.append(f'<line class="diag" x1="{x(lo):.1f}" y1="{y(lo):.1f}" x2="{x(hi):.1f}" y2="{y(hi):.1f}"/>')
    for trial_id, predicted, measured in rows:
        out.append(f'<circle class="hov pt front" tabindex="0" cx="{x(predicted):.1f}" cy="{y(measured):.1f}" '
                   f'r="5" data-id="{esc(trial_id)}"/>')
    out.append("</svg>")
    return "\n".join(out)


# --- HTML pieces -------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "", raw: bool = False,
           row_attrs: Sequence[str] | None = None, head_cls: Sequence[str] | None = None) -> str:
    """An HTML table; cells are escaped unless `raw` (then the caller escaped them)."""
    def cell(text: str) -> str:
        return text if raw else esc(text)

    head = "".join(f'<th class="{head_cls[i]}">{cell(h)}</th>' if head_cls and head_cls[i] else f"<th>{cell(h)}</th>"
                   for i, h in enumerate(header))
    body = []
    for i, row in enumerate(rows):
        attrs = f" {row_attrs[i]}" if row_attrs else ""
        tds = "".join(f'<td class="{head_cls[j]}">{cell(c)}</td>' if head_cls and head_cls[j] else
                      f"<td>{cell(c)}</td>" for j, c in enumerate(row))
        body.append(f"<tr{attrs}>{tds}</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _value_html(value: Any) -> str:
    """A settings value: scalars inline, small flat lists joined, anything nested as indented JSON."""
    if isinstance(value, Mapping):
        if value and all(not isinstance(v, (Mapping, list)) for v in value.values()):
            return _kv_table(value)
        if value:
            return _kv_table(value)
        return "<code>{}</code>"
    if isinstance(value, list):
        if value and all(isinstance(v, Mapping) and all(not isinstance(x, (Mapping, list)) for x in v.values())
                         for v in value):  # e.g. objectives, constraints: one row each
            keys = list(dict.fromkeys(k for v in value for k in v))
            return _table(keys, [["-" if v.get(k) is None else str(v.get(k)) for k in keys] for v in value],
                          cls="inner")
        if all(not isinstance(v, (Mapping, list)) for v in value):
            return esc(", ".join(str(v) for v in value)) if value else '<span class="muted">none</span>'
        return f"<pre>{esc(json.dumps(value, indent=1, default=str))}</pre>"
    if value is None:
        return '<span class="muted">none</span>'
    if isinstance(value, bool):
        return "true" if value else "false"
    return esc(value)


def _kv_table(mapping: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{_value_html(v)}</td></tr>" for k, v in mapping.items())
    return f'<table class="kv">{rows}</table>'


def _section(anchor: str, title: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{note}</p>' if note else ""
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{note_html}{body}</section>'


def _metric_columns(rows: Sequence[Mapping[str, Any]], objectives: Sequence[Mapping[str, str]],
                    metric: str = "accuracy") -> list[str]:
    wanted = [metric, "size_bytes", "compression_ratio", "flops", "latency_ms"]
    wanted += [o["name"] for o in objectives if o["name"] not in wanted]
    return [c for c in wanted if any(_num((r.get("metrics") or {}).get(c)) is not None for r in rows)]


def _front_section(run: Mapping[str, Any], objectives: Sequence[Mapping[str, str]]) -> str:
    pareto = run["pareto"]
    pairs = _pairs(run, objectives)
    two = len(objectives) == 2
    names = {o["name"] for o in objectives}
    charts = []
    for i, (x_name, y_name) in enumerate(pairs):
        svg = scatter_svg(run, x_name, y_name, objectives, step_line=two and {x_name, y_name} == names)
        hidden = "" if i == 0 else " hidden"
        charts.append(f'<div class="pair" data-pair="{i}"{hidden}>{svg}</div>')
    legend = ('<div class="legendrow">'
              '<span class="key"><svg width="12" height="12"><circle class="pt trial" cx="6" cy="6" r="3.5"/></svg>'
              'complete trial</span>'
              '<span class="key"><svg width="12" height="12"><circle class="pt trial st-other" cx="6" cy="6" r="3.5"/>'
              '</svg>infeasible / violating a constraint</span>'
              '<span class="key"><svg width="14" height="14"><circle class="pt front" cx="7" cy="7" r="5.5"/></svg>'
              'Pareto front</span>'
              f'<span class="key"><svg width="16" height="16"><polygon class="base" points="{_star(8, 8, 7.5)}"/>'
              '</svg>uncompressed fp32</span></div>')
    select = ""
    if len(pairs) > 1:
        options = "".join(f'<option value="{i}">{esc(y)} vs {esc(x)}</option>' for i, (x, y) in enumerate(pairs))
        select = f'<label class="pairsel">axes <select id="ac-pair">{options}</select></label>'
    front = run["front"]
    metric = run["metric"]
    test_key = f"test_{metric}"
    rows = [{"id": "fp32", "metrics": pareto["baseline"], "policy": None,
             test_key: pareto["baseline"].get(test_key)}] + list(front)
    columns = _metric_columns(rows, objectives, metric)
    measured = any(_num(t.get("latency_measured_ms")) is not None for t in front)
    if measured and "latency_ms" in columns:  # the baseline's latency_ms was measured: show it as such
        rows[0] = {**rows[0], "latency_measured_ms": pareto["baseline"].get("latency_ms"),
                   "metrics": {**pareto["baseline"], "latency_ms": pareto["baseline"].get("latency_predicted_ms")}}
    tested = any(_num(t.get(test_key)) is not None for t in rows)
    renames = {metric: f"validation {metric}", "latency_ms": "latency_ms (predicted)" if measured else "latency_ms"}
    header = ["trial", *(renames.get(c, c) for c in columns)]
    classes = ["", *("" for _ in columns)]
    if measured:
        header.append("latency measured (ms)")
        classes.append("")
    header.append("policy")
    classes.append("policy")
    if tested:
        header.append(TEST_COLUMN)
        classes.append("test")
    body, attrs = [], []
    for r in rows:
        metrics = r.get("metrics") or {}
        cells = [esc(r["id"])]
        cells += [esc(fmt(c, metrics.get(c))) for c in columns]
        if measured:
            cells.append(esc(fmt("latency_measured_ms", r.get("latency_measured_ms"))))
        if r["policy"] is None:
            cells.append('<span class="muted">uncompressed</span>')
        else:
            cells.append(f'<a href="#policy-{esc(r["id"])}">'
                         + "<br>".join(f"<b>{esc(layer)}</b> {esc(s)}" for layer, s in policy_lines(r["policy"]))
                         + "</a>")
        if tested:
            cells.append(esc(fmt(test_key, r.get(test_key))))
        body.append(cells)
        attrs.append(f'class="{"base" if r["policy"] is None else "frontrow"}" data-id="{esc(r["id"])}"')
    table = _table(header, body, cls="front", raw=True, row_attrs=attrs, head_cls=classes)
    note = ("Hover a point for its metrics and policy; click a front point for its per-layer policy. "
            "The front and its selection use validation metrics only.")
    if tested:
        note += f" The column &ldquo;{esc(TEST_COLUMN)}&rdquo; is the test split&rsquo;s one use, after the search."
    return _section("front", f"Pareto front ({len(front)} points)", select + legend + "".join(charts) + table, note)


def _policy_section(run: Mapping[str, Any]) -> str:
    front = run["front"]
    if not front:
        return ""
    series = _bar_series(run)
    metric = run["metric"]
    scales = {}
    for key in series:
        if key not in KNOB_VIEWS:
            values = [abs(v) for t in front for layer in (t.get("policy") or {})
                      if (v := _num(_knob(t["policy"], layer, key))) is not None]
            scales[key] = max(values, default=1.0)
    legend = "".join(f'<span class="key"><i style="background:{SERIES_COLORS[i % len(SERIES_COLORS)]}"></i>'
                     f"{esc(_knob_label(k))}</span>" for i, k in enumerate(series)
                     if any(_num(_knob(t.get("policy") or {}, layer, k)) is not None
                            for t in front for layer in (t.get("policy") or {})))
    cards = []
    for t in front:
        policy = t.get("policy") if isinstance(t.get("policy"), Mapping) else {}
        metrics = t.get("metrics") or {}
        header = ["layer", *(_knob_label(k) for k in series)]
        rows = [[layer, *(_knob_text(k, _knob(policy, layer, k)) for k in series)] for layer in policy]
        attrs = [f'class="layer-row" data-layer="{esc(layer)}"' for layer in policy]
        table = _table(header, rows, cls="policy", row_attrs=attrs)
        title = (f"trial {esc(t['id'])}: val {esc(fmt(metric, metrics.get(metric)))}, "
                 f"{esc(fmt('size_bytes', metrics.get('size_bytes')))} B, "
                 f"{esc(fmt('compression_ratio', metrics.get('compression_ratio')))}")
        bars = policy_bars_svg(policy, series, scales)
        cards.append(f'<div class="card" id="policy-{esc(t["id"])}" data-id="{esc(t["id"])}"><h3>{title}</h3>'
                     f'<div class="cardbody">{table}{bars}</div></div>')
    note = ("Bars: fractions kept (weights kept = 1 - prune.ratio, channels kept = 1 - channels.ratio), rank "
            "ratio, and bit-widths on a log scale (32 bits = full bar); the value is printed beside each bar.")
    return _section("policies", "Per-layer policy of each front point",
                    f'<div class="legendrow">{legend}</div><div class="cards">{"".join(cards)}</div>', note)


def _curves_section(run: Mapping[str, Any]) -> str:
    svg = curves_svg(run)
    if not svg:
        return ""
    counts: dict[str, int] = {}
    metric = run["metric"]
    for t in run["trials"]:
        if curve(t.get("metrics") or {}, metric):
            counts[str(t.get("status"))] = counts.get(str(t.get("status")), 0) + 1
    better = "" if run["maximize"] else " (lower is better)"
    note = (f"Validation {esc(metric)}{better} after each fine-tuning epoch (<code>{esc(metric)}@N</code> in "
            "trials.jsonl). "
            "Front trials in colour; trials stopped early (<code>pruned</code>) dashed. "
            + esc(", ".join(f"{n} {status}" for status, n in sorted(counts.items()))))
    return _section("curves", "Learning curves (fine-tuning)", svg, note)


def _latency_section(run: Mapping[str, Any]) -> str:
    rows = []
    for t in run["front"]:
        predicted, measured = _num((t.get("metrics") or {}).get("latency_ms")), _num(t.get("latency_measured_ms"))
        if predicted is not None and measured is not None:
            rows.append((t["id"], predicted, measured))
    if not rows:
        return ""
    table = _table(["trial", "predicted (ms)", "measured (ms)", "error"],
                   [[str(i), f"{p:.3f}", f"{m:.3f}", f"{100 * (p - m) / m:+.1f}%" if m else "-"]
                    for i, p, m in rows], cls="lat", row_attrs=[f'data-id="{esc(i)}"' for i, _, _ in rows])
    summary = (run["pareto"] or {}).get("latency_prediction") or {}
    note = ("Latency predicted by the layer table during the search, then every front point timed whole; "
            "error = (predicted - measured) / measured; points on the dashed line were predicted exactly.")
    if _num(summary.get("median_abs_error")) is not None and _num(summary.get("max_abs_error")) is not None:
        note += (f" Median error {100 * summary['median_abs_error']:.1f}%, max "
                 f"{100 * summary['max_abs_error']:.1f}% over {esc(summary.get('points', len(rows)))} points.")
    return _section("latency", "Predicted vs measured latency",
                    f'<div class="side">{latency_svg(rows)}{table}</div>', note)


def _sensitivity_grids(doc: Any) -> tuple[list[tuple[str, list[str], list[str], list[list[float | None]]]], list[str]]:
    """sensitivity.json as heat maps (title, rows, columns, values), and what could not be read."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("knobs"), Mapping):
        return [], ["sensitivity.json has no 'knobs' mapping"]
    layers = [str(layer) for layer in doc.get("layers") or []]
    grids, skipped = [], []
    for knob, spec in doc["knobs"].items():
        columns: list[str] = []
        matrix: list[list[float | None]] = []
        rows = layers
        if isinstance(spec, Mapping) and any(isinstance(spec.get(k), list) for k in ("values", "settings", "grid")) \
                and any(isinstance(spec.get(k), list) for k in ("matrix", "scores", "accuracy", "drop", "metric")):
            columns = [str(v) for v in next(spec[k] for k in ("values", "settings", "grid") if isinstance(spec.get(k),
                                                                                                          list))]
            data = next(spec[k] for k in ("matrix", "scores", "accuracy", "drop", "metric")
                        if isinstance(spec.get(k), list))
            matrix = [[_num(v) for v in row] if isinstance(row, list) else [_num(row)] for row in data]
        elif isinstance(spec, Mapping) and spec and all(isinstance(v, list) for v in spec.values()):
            columns = [str(k) for k in spec]  # setting -> one value per layer
            n = max(len(v) for v in spec.values())
            matrix = [[_num(spec[c][i]) if i < len(spec[c]) else None for c in spec] for i in range(n)]
        elif isinstance(spec, Mapping) and spec and all(isinstance(v, Mapping) for v in spec.values()):
            rows = [str(k) for k in spec]  # layer -> setting -> value
            columns = list(dict.fromkeys(str(s) for v in spec.values() for s in v))
            matrix = [[_num({str(k): x for k, x in spec[r].items()}.get(c)) for c in columns] for r in spec]
        elif isinstance(spec, Mapping) and spec:
            rows, columns = [str(k) for k in spec], [str(knob)]  # layer -> value
            matrix = [[_num(v)] for v in spec.values()]
        elif isinstance(spec, list) and spec and all(isinstance(v, list) for v in spec):
            width = max(len(v) for v in spec)
            columns = [str(v) for v in doc.get("values", {}).get(knob, [])] if isinstance(doc.get("values"),
                                                                                          Mapping) else []
            columns = columns if len(columns) == width else [str(i) for i in range(width)]
            matrix = [[_num(v) for v in row] for row in spec]
        elif isinstance(spec, list) and spec:
            columns, matrix = [str(knob)], [[_num(v)] for v in spec]
        else:
            skipped.append(str(knob))
            continue
        if len(rows) != len(matrix):
            rows = rows[:len(matrix)] + [f"#{i}" for i in range(len(rows), len(matrix))]
        if not any(v is not None for row in matrix for v in row):
            skipped.append(str(knob))
            continue
        grids.append((str(knob), rows, columns, matrix))
    return grids, skipped


def _heat(value: float | None, lo: float, hi: float) -> str:
    if value is None:
        return ""
    t = 0.0 if hi <= lo else (value - lo) / (hi - lo)
    # white -> orange -> dark red
    r, g, b = (255 - 30 * t, 245 - 165 * t, 235 - 200 * t)
    color = "#fff" if t > 0.7 else "#222"
    return f' style="background:rgb({r:.0f},{g:.0f},{b:.0f});color:{color}"'


def _sensitivity_section(run: Mapping[str, Any]) -> str:
    doc = run["sensitivity"]
    if doc is None:
        return ""
    grids, skipped = _sensitivity_grids(doc)
    parts = []
    for knob, rows, columns, matrix in grids:
        values = [v for row in matrix for v in row if v is not None]
        lo, hi = min(values), max(values)
        head = "".join(f"<th>{esc(c)}</th>" for c in columns)
        body = "".join(
            f'<tr data-layer="{esc(r)}"><th>{esc(r)}</th>'
            + "".join(f"<td{_heat(row[j] if j < len(row) else None, lo, hi)}>"
                      f"{esc(f'{row[j]:.3g}') if j < len(row) and row[j] is not None else ''}</td>"
                      for j in range(len(columns)))
            + "</tr>" for r, row in zip(rows, matrix))
        parts.append(f'<div class="heat"><h3>{esc(knob)}</h3><table class="heat"><thead><tr><th>layer</th>{head}'
                     f"</tr></thead><tbody>{body}</tbody></table></div>")
    extra = {k: v for k, v in doc.items() if k not in ("layers", "knobs", "values")} if isinstance(doc, Mapping) \
        else {}
    note = "Per-layer sensitivity from <code>sensitivity.json</code>; darker = larger value."
    if extra:
        note += " " + esc("; ".join(f"{k}: {v}" for k, v in extra.items() if not isinstance(v, (Mapping, list))))
    if skipped:
        note += " Not shown (unreadable format): " + esc(", ".join(skipped)) + "."
    return _section("sensitivity", "Sensitivity", f'<div class="heats">{"".join(parts)}</div>', note)


def _final_section(run: Mapping[str, Any]) -> str:
    final = run["final"]
    if not isinstance(final, Mapping) or not final.get("trials"):
        return ""
    metric = str(final["metric"] if isinstance(final.get("metric"), str) else run["metric"])
    header = ["trial", f"val {metric} at search", f"val {metric} retrained", "size_bytes", "ratio", "policy",
              "artifact", "seconds", TEST_COLUMN]
    classes = ["", "", "", "", "", "policy", "", "", "test"]
    rows = []
    for r in final["trials"]:
        rows.append([esc(r.get("id")), esc(fmt(metric, r.get(f"search_{metric}"))),
                     esc(fmt(metric, r.get(metric))), esc(fmt("size_bytes", r.get("size_bytes"))),
                     esc(fmt("compression_ratio", r.get("compression_ratio"))),
                     "<br>".join(f"<b>{esc(layer)}</b> {esc(s)}" for layer, s in policy_lines(r.get("policy"))),
                     f"<code>{esc(r.get('artifact', '-'))}</code>", esc(r.get("seconds", "-")),
                     esc(fmt(f"test_{metric}", r.get(f"test_{metric}")))])
    table = _table(header, rows, cls="final", raw=True, head_cls=classes,
                   row_attrs=[f'data-id="{esc(r.get("id"))}"' for r in final["trials"]])
    settings = _kv_table(final.get("settings") or {})
    chosen = ""
    if final.get("selected") is not None:
        base = final.get("baseline") or {}
        chosen = (f"<p class=\"selected\">Selected on validation: trial <b>{esc(final['selected'])}</b> "
                  f"({esc(final.get('selection', ''))}). Baseline as trained: validation "
                  f"{'' if metric == 'accuracy' else esc(metric) + ' '}{esc(fmt(metric, base.get(metric)))}, test "
                  f"{esc(fmt(f'test_{metric}', base.get(f'test_{metric}')))}.</p>")
    return _section("final", "Finalized (retrained)", chosen + table + "<h3>retraining settings</h3>" + settings,
                    "Chosen front points retrained longer (<code>autocomp finalize</code>) and exported; the point "
                    "to ship is selected on validation, then every row is measured once on the test split.")


def _settings_section(run: Mapping[str, Any]) -> str:
    info = run["info"]
    shown = ("settings", "objectives", "constraints", "constraints_resolved", "data", "model_ref", "input_shape",
             "latency", "executor", "machine", "started")
    main = {k: info[k] for k in shown if k in info}
    rest = {k: v for k, v in info.items() if k not in shown and k != "baseline"}
    baseline = (run["pareto"] or {}).get("baseline") or info.get("baseline") or {}
    base = _table(["metric", "uncompressed fp32"],
                  [[{run["metric"]: f"validation {run['metric']}", f"test_{run['metric']}": TEST_COLUMN}.get(k, k),
                    fmt(k, v)]
                   for k, v in baseline.items()],
                  cls="kvt")
    blocks = [("baseline", base)] + [(k, _value_html(v)) for k, v in main.items()]
    parts = ['<div class="settings">' + "".join(f'<div data-key="{esc(k)}"><h3>{esc(k)}</h3>{body}</div>'
                                               for k, body in blocks) + "</div>"]
    if rest:
        parts.append(f"<details><summary>the rest of run.json</summary><pre>"
                     f"{esc(json.dumps(rest, indent=1, default=str))}</pre></details>")
    if run["space_yaml"]:
        parts.append(f"<details><summary>space.yaml</summary><pre>{esc(run['space_yaml'])}</pre></details>")
    return _section("settings", "Run settings and baseline", "".join(parts))


def _tip_data(run: Mapping[str, Any], objectives: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """What a tooltip shows per id: status, main metrics (validation only), per-layer policy."""
    metric = run["metric"]
    keys = [metric, "size_bytes", "compression_ratio", "flops", "latency_ms"]
    keys += [o["name"] for o in objectives if o["name"] not in keys]
    predicted = bool((run["info"].get("latency") or {}).get("table"))
    names = {metric: f"val {metric}", "latency_ms": "latency_ms (predicted)" if predicted else "latency_ms"}
    front_ids = {t["id"] for t in run["front"]}
    by_id = {t["id"]: t for t in run["trials"]}
    by_id.update({t["id"]: {**by_id.get(t["id"], {}), **t} for t in run["front"]})
    out: dict[str, Any] = {}
    for trial_id, t in by_id.items():
        metrics = t.get("metrics") or {}
        shown = [[names.get(k, k), fmt(k, metrics[k])] for k in keys if k in metrics]
        if _num(t.get("latency_measured_ms")) is not None:
            shown.append(["latency measured", fmt("latency_measured_ms", t["latency_measured_ms"])])
        epochs = _full_curve(t, run["epochs"], metric)
        if epochs:
            shown.append(["epochs fine-tuned", str(epochs[-1][0])])
        out[str(trial_id)] = {"title": f"trial {trial_id}" + (" · Pareto front" if trial_id in front_ids else ""),
                              "status": str(t.get("status", "")), "metrics": shown,
                              "policy": policy_lines(t.get("policy")), "error": t.get("error") or ""}
    baseline = (run["pareto"] or {}).get("baseline") or run["info"].get("baseline") or {}
    out["baseline"] = {"title": "uncompressed fp32 baseline", "status": "",
                       "metrics": [[f"val {metric}" if k == metric else k, fmt(k, baseline[k])]
                                   for k in keys if k in baseline], "policy": [], "error": ""}
    return out


def _script_json(obj: Any) -> str:
    """JSON for a <script type="application/json">: no NaN (JSON.parse refuses it), nothing that ends the tag."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    text = json.dumps(clean(obj), default=str, allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


CSS = """
:root{--fg:#1d2329;--muted:#6b7680;--line:#dde3e8;--bg:#f6f8fa;--accent:#d1495b;--card:#fff}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);
 background:var(--bg)}
header{background:#1f2d3a;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px;font-weight:600;word-break:break-all}
header .sub{color:#c5d0da;font-size:13px}
header .stats{display:flex;flex-wrap:wrap;gap:10px;margin-top:12px}
header .stat{background:rgba(255,255,255,.09);border-radius:6px;padding:6px 12px}
header .stat b{display:block;font-size:17px}
nav{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line);padding:8px 28px}
nav a{margin-right:16px;color:#2f6fb0;text-decoration:none;font-weight:500}
main{max-width:1320px;margin:0 auto;padding:8px 28px 40px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin:18px 0}
h2{margin:0 0 6px;font-size:18px}
h3{margin:14px 0 6px;font-size:14px}
.note{color:var(--muted);margin:0 0 10px}
.muted{color:var(--muted)}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:right;vertical-align:top}
th{background:#f0f3f6;font-weight:600}
td.policy,th.policy{text-align:left;font-size:12px;min-width:260px}
td.policy a{color:inherit;text-decoration:none}
td.policy b{font-weight:600;color:#2f4a63}
th.test,td.test{background:#fbf6e9;border-left:3px solid #d9b44a;color:#6a5a2a}
th.test{font-weight:600}
tr.base td{color:var(--muted);font-style:italic}
tr.frontrow:hover td,tr.hl td{background:#fdecef}
table.kv th{text-align:left;background:none;color:#2f4a63;white-space:nowrap;width:1%}
table.kv td{text-align:left}
table.inner th,table.inner td{text-align:left;padding:2px 10px 2px 0}
table.kv table.kv{margin:0}
table.kvt td:first-child{text-align:left}
pre{background:#f3f5f7;border-radius:4px;padding:8px;overflow:auto;max-height:420px;font-size:12px;margin:4px 0}
details{margin:8px 0}summary{cursor:pointer;color:#2f6fb0}
svg.chart{width:100%;max-width:820px;height:auto;display:block;font-size:11px}
svg.latency{max-width:520px}
.plot{fill:#fcfdfe;stroke:#c9d1d8}
.grid{stroke:#edf0f3}
.tick{fill:#58636d}
.axis{fill:#2b3640;font-size:12px;font-weight:600}
.pt.trial{fill:#9aa5af;fill-opacity:.55;stroke:none}
.pt.trial.st-other{fill:none;stroke:#b6bec6;stroke-width:1.2}
.pt.front{fill:var(--accent);stroke:#fff;stroke-width:1.5}
.frontline{fill:none;stroke:var(--accent);stroke-width:1.6;stroke-opacity:.7}
.base{fill:#2f6fb0;stroke:#fff;stroke-width:1}
.legend text{fill:#38434d;font-size:11px}
.hov{cursor:pointer}
.hov:hover,.hov:focus,.hov.hl{stroke:#111;stroke-width:2;outline:none}
circle.front.hl{r:8}
.diag{stroke:#9aa5af;stroke-dasharray:4 3}
.curve{fill:none;stroke:#9aa5af;stroke-opacity:.45;stroke-width:1.2}
.curve.st-pruned{stroke:#c9a3a3;stroke-dasharray:3 3}
.curve.front{stroke-opacity:1;stroke-width:2.2}
circle.end.curve{fill:#9aa5af;stroke:none}
circle.end.curve.front{stroke:#fff;stroke-width:1}
polyline.curve:hover{stroke-width:3.5;stroke-opacity:1}
.pairsel{float:right;color:var(--muted)}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(580px,1fr));gap:14px}
.settings{columns:3 360px;column-gap:14px}
.settings>div{border:1px solid var(--line);border-radius:6px;padding:8px 12px;overflow:auto;break-inside:avoid;
 margin-bottom:14px}
.settings h3{margin:0 0 4px}
.card{border:1px solid var(--line);border-radius:6px;padding:10px 12px;background:#fff}
.card:target,.card.hl{border-color:var(--accent);box-shadow:0 0 0 2px #f4c7cf}
.card h3{margin:0 0 6px}
.cardbody{display:flex;flex-wrap:wrap;gap:6px 16px;align-items:flex-start}
table.policy td:first-child{text-align:left;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
svg.chart.bars{flex:1 1 200px;min-width:200px;max-width:300px;margin-top:6px}
table.policy{font-size:12px}
table.policy th,table.policy td{padding:3px 8px}
svg.bars .layer{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:10px;fill:#2f4a63}
svg.bars .val{font-size:9px;fill:#38434d}
svg.bars .track{fill:#eef1f4}
.legendrow{margin:4px 0 10px}
.key{display:inline-flex;align-items:center;margin-right:14px;font-size:12px}
.key svg{margin-right:5px}
.key i{display:inline-block;width:14px;height:8px;margin-right:5px;border-radius:2px}
.side{display:flex;gap:20px;flex-wrap:wrap;align-items:flex-start}
.heats{display:flex;flex-wrap:wrap;gap:18px}
table.heat td{min-width:48px;text-align:center}
table.heat th:first-child{text-align:left;font-family:ui-monospace,Menlo,Consolas,monospace}
#ac-tip{position:fixed;z-index:20;pointer-events:none;background:#1f2d3a;color:#f2f5f7;border-radius:6px;
 padding:8px 10px;font-size:12px;max-width:420px;box-shadow:0 4px 14px rgba(0,0,0,.25);display:none}
#ac-tip .t{font-weight:600;margin-bottom:3px}
#ac-tip table{margin:2px 0;font-size:12px}
#ac-tip th,#ac-tip td{border:none;padding:0 8px 0 0;background:none;color:inherit;text-align:left}
#ac-tip th{color:#aebbc7;font-weight:400}
#ac-tip .pol{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;margin-top:4px;color:#dfe6ec}
#ac-tip .err{color:#ffb4b4;margin-top:4px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:10px}
"""

# Recorded before anything else runs, so a test (or a person) can see that the page's script raised nothing.
EARLY_JS = ("window.acErrors=[];window.addEventListener('error',function(e){window.acErrors.push(String(e.message));"
            "document.documentElement.setAttribute('data-js-errors',String(window.acErrors.length));});")

JS = r"""
(function () {
  'use strict';
  var data = JSON.parse(document.getElementById('ac-data').textContent);
  var tip = document.getElementById('ac-tip');
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fill(id) {
    var d = data[id];
    tip.textContent = '';
    if (!d) { tip.appendChild(el('div', 't', 'trial ' + id)); return; }
    tip.appendChild(el('div', 't', d.title + (d.status && d.status !== 'complete' ? ' (' + d.status + ')' : '')));
    if (d.metrics.length) {
      var table = el('table');
      d.metrics.forEach(function (m) {
        var tr = el('tr'); tr.appendChild(el('th', '', m[0])); tr.appendChild(el('td', '', m[1]));
        table.appendChild(tr);
      });
      tip.appendChild(table);
    }
    d.policy.forEach(function (p) { tip.appendChild(el('div', 'pol', p[0] + ': ' + p[1])); });
    if (d.error) tip.appendChild(el('div', 'err', d.error));
  }
  function place(x, y) {
    var w = tip.offsetWidth, h = tip.offsetHeight;
    var left = x + 14, top = y + 14;
    if (left + w > window.innerWidth - 4) left = Math.max(4, x - w - 14);
    if (top + h > window.innerHeight - 4) top = Math.max(4, y - h - 14);
    tip.style.left = left + 'px'; tip.style.top = top + 'px';
  }
  function highlight(id, on) {
    document.querySelectorAll('[data-id="' + CSS.escape(id) + '"]').forEach(function (e) {
      e.classList.toggle('hl', on);
    });
  }
  var current = null;
  function show(target, x, y) {
    var id = target.getAttribute('data-id');
    if (current !== id) { if (current !== null) highlight(current, false); current = id; highlight(id, true); }
    fill(id);
    tip.style.display = 'block';
    tip.setAttribute('data-for', id);
    place(x, y);
  }
  function hide() {
    if (current !== null) highlight(current, false);
    current = null;
    tip.style.display = 'none';
    tip.removeAttribute('data-for');
  }
  document.addEventListener('mouseover', function (ev) {
    var t = ev.target.closest && ev.target.closest('svg .hov');
    if (t) show(t, ev.clientX, ev.clientY); else if (current !== null) hide();
  });
  document.addEventListener('mousemove', function (ev) { if (current !== null) place(ev.clientX, ev.clientY); });
  document.addEventListener('focusin', function (ev) {
    var t = ev.target.closest && ev.target.closest('svg .hov');
    if (t) { var r = t.getBoundingClientRect(); show(t, r.right, r.bottom); }
  });
  document.addEventListener('focusout', hide);
  document.addEventListener('click', function (ev) {
    var t = ev.target.closest && ev.target.closest('svg .hov.front');
    if (t && document.getElementById('policy-' + t.getAttribute('data-id'))) {
      location.hash = 'policy-' + t.getAttribute('data-id');
    }
  });
  var select = document.getElementById('ac-pair');
  function showPair(i) {
    document.querySelectorAll('#front .pair').forEach(function (p) { p.hidden = p.getAttribute('data-pair') !== i; });
    var visible = document.querySelector('#front .pair:not([hidden])');
    document.body.setAttribute('data-front-points', visible ? visible.querySelectorAll('.pt.front').length : 0);
  }
  if (select) select.addEventListener('change', function () { showPair(select.value); });
  showPair('0');
  document.body.setAttribute('data-hover-targets', document.querySelectorAll('svg .hov').length);
  document.body.setAttribute('data-ready', '1');
})();
"""


def build_html(run_dir: str | os.PathLike) -> str:
    """The report page for a run directory, as one string."""
    run = load_run(run_dir)
    pareto = run["pareto"]
    if pareto is None:  # a run still going: show what the journal has
        run["pareto"] = pareto = {"baseline": run["info"].get("baseline") or {}, "trials": []}
    run["front"] = [t for t in pareto.get("trials") or [] if isinstance(t, Mapping) and "id" in t]
    run["trials"] = [t for t in run["trials"] if isinstance(t, Mapping) and "id" in t]
    objectives = _objectives(run)
    run["metric"], run["maximize"] = _metric(run, objectives)
    metric = run["metric"]
    info = run["info"]
    tuning = (info.get("signature") or {}).get("finetune") or {}
    run["epochs"] = int(tuning["epochs"]) if _num(tuning.get("epochs")) is not None else None
    counts: dict[str, int] = {}
    for t in run["trials"]:
        status = str(t.get("status"))
        counts[status] = counts.get(status, 0) + 1
    settings = info.get("settings") or {}
    baseline = pareto.get("baseline") or {}
    stats = [("trials", len(run["trials"])), ("front", len(run["front"])),
             ("optimizer", settings.get("optimizer", "-")),
             ("objectives", ", ".join(f"{o['name']} ({o['direction'][:3]})" for o in objectives) or "-"),
             ("baseline val acc" if metric == "accuracy" else f"baseline val {metric}",
              fmt(metric, baseline.get(metric))),
             ("baseline size", fmt("size_bytes", baseline.get("size_bytes")) + " B")]
    stats_html = "".join(f'<div class="stat"><b>{esc(v)}</b>{esc(k)}</div>' for k, v in stats)
    sub = " · ".join(esc(x) for x in (
        info.get("started", ""), ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
        "finished" if run["front"] else "no pareto.json yet (run not finished)") if x)
    sections = [
        _front_section(run, objectives),
        _policy_section(run),
        _curves_section(run),
        _latency_section(run),
        _sensitivity_section(run),
        _final_section(run),
        _settings_section(run),
    ]
    titles = {"front": "Pareto front", "policies": "Policies", "curves": "Learning curves",
              "latency": "Latency", "sensitivity": "Sensitivity", "final": "Finalized", "settings": "Settings"}
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in titles.items() if any(f'<section id="{a}"' in s
                                                                             for s in sections))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>autocomp report: {esc(run['name'])}</title>
<style>{CSS}</style>
<script>{EARLY_JS}</script>
</head><body>
<header><h1>autocomp report: {esc(run['name'])}</h1><div class="sub">{sub}</div>
<div class="stats">{stats_html}</div></header>
<nav>{nav}</nav>
<main>
{"".join(s for s in sections if s)}
</main>
<footer>written by <code>autocomp report --html</code> from the run directory; self-contained, no network</footer>
<div id="ac-tip" role="tooltip"></div>
<script type="application/json" id="ac-data">{_script_json(_tip_data(run, objectives))}</script>
<script>{JS}</script>
</body></html>
"""


def write_html_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the report (default RUN/report.html) atomically; returns its path."""
    path = Path(out) if out is not None else Path(run_dir) / REPORT
    if path.is_dir():
        raise RunError(f"--html-out '{path}' is a directory; give a file name")
    write_atomic(path, build_html(run_dir))
    return path


__all__ = ["REPORT", "TEST_COLUMN", "build_html", "esc", "fmt", "layer_summary", "load_run", "policy_lines",
           "write_html_report"]
