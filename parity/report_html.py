"""Self-contained ``report.html``: inline CSS, plots as base64 PNG, result tables.

Plots use ``matplotlib.figure.Figure`` with the Agg canvas directly, so that no
pyplot state or global backend is touched. Without matplotlib the page is still
written, with a note in place of each plot.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re

from parity.report import Column, RunReport, format_value, describe_location
from parity.tolerance import FULL_PRECISION, METRIC_WORDS

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}
tr.fail td{background:#fde2e2}.pass{color:#17692c;font-weight:600}.fail{color:#b00020;font-weight:600}
.note{color:#555;font-style:italic}img{max-width:100%;border:1px solid #ddd}
code{background:#f5f5f5;padding:0 .2em}
"""

_LAYER_SUFFIX = re.compile(r"\[\d+\]$")


def primary_metric(dtype: str) -> str:
    """The metric a column's tensors are judged by (and that its plot shows)."""
    return "max_rel_err" if dtype in FULL_PRECISION else "gold_err_cand_max"


def plot_column(col: Column) -> str | None:
    """Base64 PNG of error per layer for one column, log scale, with tolerances; None if nothing to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metric = primary_metric(col.dtype)
    series: dict[str, list[tuple[int, float, float | None, bool, float | None]]] = {}
    for r in col.results:
        if r.layer is None or r.metrics.kind == "ids":
            continue
        value = getattr(r.metrics, metric)
        value = math.nan if value is None else float(value)
        tol = r.verdict.tolerance if r.verdict.metric == metric else None
        own = r.metrics.gold_err_ref_max  # PyTorch's own low-precision error, if any
        series.setdefault(_LAYER_SUFFIX.sub("", r.name), []).append(
            (r.layer, value, tol, r.verdict.passed, None if own is None else float(own)))
    if not series:
        return None

    points = [p for pts in series.values() for p in pts]
    positive = [x for _, v, t, _, o in points for x in (v, t, o) if x is not None and math.isfinite(x) and x > 0]
    bottom = min(positive) / 10 if positive else 1e-12
    top = max(positive) * 10 if positive else 1.0
    tolerances = {t for _, _, t, _, _ in points if t is not None}

    fig = Figure(figsize=(7.5, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_yscale("log")
    colors = [f"C{i % 10}" for i in range(len(series))]
    for color, (family, pts) in zip(colors, series.items()):
        pts.sort(key=lambda p: p[0])
        xs = [p[0] for p in pts]
        ys = [min(max(v, bottom), top) if math.isfinite(v) else top for _, v, _, _, _ in pts]
        ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.2, color=color, label=family)
        bad = [(x, y) for (x, y, p) in zip(xs, ys, pts) if not math.isfinite(p[1])]
        if bad:
            ax.scatter(*zip(*bad), marker="X", s=60, color="#b00020", zorder=5)
        failed = [(x, y) for (x, y, p) in zip(xs, ys, pts) if not p[3]]
        if failed:
            ax.scatter(*zip(*failed), s=80, facecolors="none", edgecolors="#b00020", zorder=4)
        own_pts = [(p[0], p[4]) for p in pts if p[4] is not None and math.isfinite(p[4]) and p[4] > 0]
        if own_pts:
            ax.plot(*zip(*own_pts), linestyle=":", linewidth=0.9, color=color, alpha=0.8)
        if len(tolerances) > 1:
            tol_pts = [(p[0], p[2]) for p in pts if p[2] is not None and p[2] > 0]
            if tol_pts:
                ax.plot(*zip(*tol_pts), linestyle="--", linewidth=0.9, color=color, alpha=0.8)
    if len(tolerances) == 1:
        (tol,) = tolerances
        if tol > 0:
            ax.axhline(tol, linestyle="--", color="black", linewidth=1, label=f"tolerance {tol:.3g}")
    elif tolerances:
        ax.plot([], [], linestyle="--", color="gray", label="tolerance (dashed, per tensor)")
    if any(p[4] is not None for p in points):
        ax.plot([], [], linestyle=":", color="gray", label="max |torch - gold| (dotted)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom / 2, top * 2)
    ax.set_xlabel("layer")
    ax.set_ylabel(METRIC_WORDS.get(metric, metric), fontsize=8)
    ax.set_title(col.title + "  (zeros at the bottom, non-finite as X at the top)", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_html(report: RunReport) -> str:
    e = html.escape
    status = "PASSED" if report.passed else "FAILED"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Parity report {e(report.run_name)}</title><style>{_CSS}</style></head><body>",
        f'<h1>Parity report <code>{e(report.run_name)}</code>: '
        f'<span class="{status.lower()[:4]}">{status}</span></h1>',
        "<table><tr><th>dtype</th><th>Flax device</th><th>PyTorch device</th><th>tensors</th>"
        "<th>failed</th><th class=l>first failure</th><th>result</th></tr>",
    ]
    for col in report.columns:
        first = col.first_failure
        where = "-" if first is None else (
            f"{e(describe_location(first.group, first.layer))} (<code>{e(first.name)}</code>): "
            f"{e(METRIC_WORDS.get(first.metric, first.metric))} {e(format_value(first.value))}, "
            f"tolerance {e(format_value(first.tolerance))}")
        parts.append(
            f"<tr><td>{e(col.dtype)}</td><td>{e(col.flax_device)}</td><td>{e(col.torch_device)}</td>"
            f"<td>{len(col.results)}</td><td>{len(col.failures)}</td><td class=l>{where}</td>"
            f"<td class={'pass' if col.passed else 'fail'}>{'pass' if col.passed else 'FAIL'}</td></tr>")
    parts.append("</table>")
    parts += [f'<p class="note">{e(note)}</p>' for note in report.notes]
    parts.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in report.policy.describe()) + "</ul>")

    try:
        import matplotlib  # noqa: F401
        have_mpl = True
    except ImportError:
        have_mpl = False
    for col in report.columns:
        parts.append(f"<h2>{e(col.title)}</h2>")
        if not have_mpl:
            parts.append('<p class="note">matplotlib is not installed: plot omitted.</p>')
        else:
            png = plot_column(col)
            if png is None:
                parts.append('<p class="note">No per-layer tensors in this column: nothing to plot.</p>')
            else:
                parts.append(f'<img alt="error per layer, {e(col.key)}" src="data:image/png;base64,{png}">')
        parts.append(_results_table(col))

    env = report.environment.to_dict()
    env["config_hash"] = report.config_hash
    env["checkpoint_hash"] = report.checkpoint_hash
    env["created"] = report.created
    parts.append("<h2>Environment</h2><table>" + "".join(
        f"<tr><th class=l>{e(str(k))}</th><td class=l>{e(', '.join(v) if isinstance(v, list) else str(v))}</td></tr>"
        for k, v in env.items()) + "</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _results_table(col: Column) -> str:
    e = html.escape
    rows = ["<table><tr><th class=l>tensor</th><th class=l>group</th><th>layer</th><th>max abs</th>"
            "<th>max rel</th><th>mean abs</th><th>cosine</th><th class=l>logits / gold</th>"
            "<th class=l>judged by</th><th>value</th><th>tolerance</th><th>result</th></tr>"]
    for r in col.results:
        m = r.metrics
        if m.kind == "ids":
            extra = f"{m.mismatches} mismatched of {m.count}"
        else:
            bits = []
            if m.argmax_agreement is not None:
                bits.append(f"argmax {_num(m.argmax_agreement)}, top-5 {_num(m.top5_overlap)}, KL {_num(m.mean_kl)}")
            if m.gold_ratio is not None:
                bits.append(f"err flax/torch {_num(m.gold_ratio)}")
            extra = "; ".join(bits) or "-"
        ok = r.verdict.passed
        rows.append(
            f"<tr{'' if ok else ' class=fail'}><td class=l><code>{e(r.name)}</code></td><td class=l>{e(r.group)}</td>"
            f"<td>{'-' if r.layer is None else r.layer}</td><td>{_num(m.max_abs_err)}</td>"
            f"<td>{_num(m.max_rel_err)}</td><td>{_num(m.mean_abs_err)}</td><td>{_num(m.cosine, 8)}</td>"
            f"<td class=l>{e(extra)}</td><td class=l>{e(r.verdict.metric)}</td>"
            f"<td>{_num(r.verdict.value)}</td><td>{_num(r.verdict.tolerance)}</td>"
            f"<td class={'pass' if ok else 'fail'}>{'pass' if ok else 'FAIL'}</td></tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return format_value(value)
    return f"{value:.{digits}g}"
