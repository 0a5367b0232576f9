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
.badge{color:#fff;padding:.15em .6em;border-radius:.3em;margin-right:.4em}.headline{font-size:1.05em;font-weight:600}
h3{font-size:1em;margin-top:1.5em}
"""

_LAYER_SUFFIX = re.compile(r"\[\d+\]$")
_KIND_FAMILIES = {"grad": "dLoss/dParam", "param": "after AdamW steps"}  # a line per group, not per parameter


def primary_metric(dtype: str) -> str:
    """The metric a column's tensors are judged by."""
    return "max_rel_err" if dtype in FULL_PRECISION else "gold_err_cand_max"


def family(name: str) -> str:
    """'cls/fully_masked_row/decoder_hidden_states[3]' -> 'decoder_hidden_states'."""
    return _LAYER_SUFFIX.sub("", name.rsplit("/", 1)[-1])


def _fraction(r) -> float:
    v = r.verdict
    if not math.isfinite(v.value) or math.isnan(v.value):
        return math.inf
    if v.tolerance <= 0:
        return 0.0 if v.value == 0 and v.passed else math.inf
    return v.value / v.tolerance


def plot_column(col: Column) -> str | None:
    """Base64 PNG: per layer, the largest share of its tolerance each tensor family uses (over heads and
    input cases), log scale, tolerance at 1; one line per family, legend beside the axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    series: dict[str, dict[int, tuple[float, bool]]] = {}
    for r in col.results:
        if r.layer is None or r.metrics.kind == "ids":
            continue
        kind = _KIND_FAMILIES.get(r.metrics.kind)
        fam = series.setdefault(f"{r.group} {kind}" if kind else family(r.name), {})
        frac, ok = fam.get(r.layer, (0.0, True))
        fam[r.layer] = (max(frac, _fraction(r)), ok and r.verdict.passed)
    if not series:
        return None
    finite = [f for fam in series.values() for f, _ in fam.values() if math.isfinite(f) and f > 0]
    bottom = min([*finite, 1.0]) / 3
    top = max([*finite, 1.0]) * 3

    fig = Figure(figsize=(9, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.1, 0.15, 0.6, 0.72))
    ax.set_yscale("log")
    for i, (name, fam) in enumerate(sorted(series.items())):
        layers = sorted(fam)
        ys = [min(max(fam[x][0], bottom), top) for x in layers]
        ax.plot(layers, ys, marker="o", markersize=3.5, linewidth=1.4, color=f"C{i % 10}", label=name)
        bad = [(x, y) for x, y in zip(layers, ys) if not fam[x][1]]
        if bad:
            ax.scatter(*zip(*bad), s=90, facecolors="none", edgecolors="#b00020", linewidths=1.5, zorder=4)
    ax.axhline(1.0, linestyle="--", color="black", linewidth=1, label="tolerance (1.0)")
    every = [x for fam in series.values() for x in fam]
    lo, hi = min(every), max(every)
    if hi - lo < 16:   # whole layers only: MaxNLocator(integer=True) gives fractions over a single layer
        ax.set_xticks(range(lo, hi + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(lo - 0.5, hi + 0.5)
    ax.set_ylim(bottom, top)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of tolerance used\n(max over heads and inputs)", fontsize=8)
    ax.set_title(f"{col.title}: {METRIC_WORDS.get(primary_metric(col.dtype), primary_metric(col.dtype))}"
                 " / tolerance", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _worst_rows(report: RunReport, limit: int = 5) -> list[tuple[str, object]]:
    rows = [(col.key, r) for col in report.columns for r in col.results]
    return sorted(rows, key=lambda kr: -_fraction(kr[1]))[:limit]


def render_html(report: RunReport) -> str:
    from parity.machine import describe as describe_machine
    from parity.outcome import COLORS, WORDS
    from parity.report import baseline_lines

    from parity.report_junit import xml_safe

    def e(text: str) -> str:   # escaped, and no control characters (a run name or message may hold them)
        return html.escape(xml_safe(str(text)))

    state = report.status
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(state)}: parity report {e(report.run_name)}</title><style>{_CSS}</style></head><body>",
        f'<h1><span id="verdict" class="badge" style="background:{COLORS[state]}">{e(WORDS[state])}</span> '
        f"Parity report <code>{e(report.run_name)}</code></h1>",
        f'<p class="headline">{e(report.headline)}</p>',
    ]
    blines = baseline_lines(report)
    if blines:
        parts.append("<ul>" + "".join(f"<li>{e(line)}</li>" for line in blines) + "</ul>")
    parts.append("<h2>Closest to tolerance</h2><table><tr><th class=l>column</th><th class=l>tensor</th>"
                 "<th>share of tolerance</th><th>result</th></tr>" + "".join(
                     f"<tr{'' if r.verdict.passed else ' class=fail'}><td class=l>{e(key)}</td>"
                     f"<td class=l><code>{e(r.name)}</code></td><td>{_num(_fraction(r))}</td>"
                     f"<td class={'pass' if r.verdict.passed else 'fail'}>{'pass' if r.verdict.passed else 'FAIL'}"
                     "</td></tr>" for key, r in _worst_rows(report)) + "</table>")
    parts.append(f'<p class="note">Machine: {e(describe_machine(report.machine))}</p>')
    parts.append("<h2>Columns</h2><table><tr><th>dtype</th><th>Flax device</th><th>PyTorch device</th><th>tensors</th>"
                 "<th>failed</th><th class=l>first failure</th><th>result</th></tr>")
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
                parts.append(f'<img class="plot" alt="share of tolerance per layer, {e(col.key)}" '
                             f'src="data:image/png;base64,{png}">')
    parts.append("<h2>All tensors</h2>")
    for col in report.columns:
        parts.append(f"<h3>{e(col.title)}</h3>")
        parts.append(_results_table(col))

    env = report.environment.to_dict()
    env["config_hash"] = report.config_hash
    env["checkpoint_hash"] = report.checkpoint_hash
    env["created"] = report.created
    for key, value in (report.machine or {}).items():
        env[f"machine.{key}"] = value if not isinstance(value, dict) else ", ".join(f"{k}={v}" for k, v in value.items())
    parts.append("<h2>Environment</h2><table>" + "".join(
        f"<tr><th class=l>{e(str(k))}</th><td class=l>{e(', '.join(map(str, v)) if isinstance(v, list) else str(v))}"
        "</td></tr>" for k, v in env.items()) + "</table>")
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
