"""The compact table `flax-bart parity` prints: one line per dtype x device column."""

from __future__ import annotations

from parity.report import format_value


def _worst(col):
    worst = max(col.results, key=lambda r: r.verdict.headroom, default=None)
    if worst is None:
        return "-"
    return f"{worst.name} at {format_value(worst.verdict.headroom)}x tol"


def _ratio(col) -> str:
    ratios = [r.metrics.gold_ratio for r in col.results if r.metrics.gold_ratio is not None]
    if not ratios:
        return "-"
    return format_value(max(ratios, key=lambda v: (v != v, v)))


def render_table(outcome) -> str:
    report, ckpt = outcome.report, outcome.checkpoint
    heads = report.environment.extra.get("heads", "")
    lines = [f"parity {report.run_name}: heads {heads}; checkpoint {ckpt.path} ({ckpt.source_head}); "
             f"Flax weights {ckpt.flax_origin}; matmul precision {report.environment.matmul_precision}"]
    header = ("column", "tensors", "failed", "max flax/torch err", "closest to tolerance", "first failure")
    rows = []
    for col in report.columns:
        first = col.first_failure
        first_text = "-" if first is None else (
            f"{first.name} [{first.group}{'' if first.layer is None else ' layer ' + str(first.layer)}] "
            f"{first.metric} {format_value(first.value)} > {format_value(first.tolerance)}")
        rows.append((col.key, str(len(col.results)), str(len(col.failures)), _ratio(col), _worst(col), first_text))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for i, row in enumerate([header, *rows]):
        lines.append("  ".join(cell.ljust(w) if j in (0, 4, 5) else cell.rjust(w)
                               for j, (cell, w) in enumerate(zip(row, widths))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
