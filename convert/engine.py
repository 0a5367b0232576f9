"""Carry out a plan tensor by tensor: read, verify tied copies, transform, cast, count non-finite
values, hand to a sink. Only one or two tensors are alive at a time."""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from convert.dtypes import cast, count_nonfinite, is_float, transpose2d
from convert.errors import ConversionError
from convert.plan import Plan, Step, display_name
from convert.sources import Source
from convert.summary import Summary

PROGRESS_MIN_BYTES = 300 * 2**20  # show a progress bar above this checkpoint size


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return np.array_equal(np.ascontiguousarray(a).view(np.uint8), np.ascontiguousarray(b).view(np.uint8))


def _diff_note(a: np.ndarray, b: np.ndarray) -> str:
    if not (is_float(a.dtype) and a.shape == b.shape):
        return ""
    x, y = a.astype(np.float32), b.astype(np.float32)
    differ = ~((x == y) | (np.isnan(x) & np.isnan(y)))
    with np.errstate(invalid="ignore", over="ignore"):   # inf - inf, NaN against a number
        d = np.abs(x - y)[differ]
    return f" ({int(differ.sum())} of {a.size} values differ, max |diff| {np.nanmax(d) if d.size else 0:.3g})"


def start_summary(plan: Plan, source: Source) -> Summary:
    s = Summary(head=plan.head, source_head=plan.source_head, source=source.describe())
    s.missing, s.unused, s.unexpected = list(plan.missing), list(plan.unused), list(plan.unexpected)
    return s


def run(plan: Plan, source: Source, order: list, write: Callable[[Any, np.ndarray], None],
        summary: Summary, *, dtype: np.dtype | None = None, quiet: bool = True) -> None:
    """Feed `write(target_key, array)` in `order` (target keys of `plan`)."""
    t0 = time.perf_counter()
    steps = {s.target: s for s in plan.steps}
    if set(order) != set(steps) or len(order) != len(steps):
        raise ConversionError("internal: writer order does not match the plan")
    total = sum(source.infos[steps[k].source].nbytes for k in order)
    bar = None
    if not quiet and total >= PROGRESS_MIN_BYTES:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc="converting", leave=False)
    cached = None  # (source key, array, first target) while later targets copy the same tensor
    try:
        for i, key in enumerate(order):
            step: Step = steps[key]
            if cached is not None and cached[0] == step.source:  # a tied copy in the target
                summary.copies.setdefault(display_name(cached[2]), []).append(display_name(key))
                write(key, cached[1])
                continue
            cached = None
            arr = source.read(step.source)
            for dup in step.tied:
                other = source.read(dup)
                if not _same_bits(arr, other):
                    raise ConversionError(
                        f"tied copies differ: {source.name(dup)} is not equal to {source.name(step.source)}"
                        f"{_diff_note(arr, other)}; the Flax layout holds one word embedding, so the "
                        f"checkpoint cannot be converted faithfully"
                    )
                del other
            if step.tied:
                summary.tied[display_name(step.target)] = [source.name(step.source)] + [source.name(d) for d in step.tied]
            out = transpose2d(arr) if step.transpose else arr
            del arr
            if out.shape != step.shape:
                raise ConversionError(f"internal: {display_name(step.target)} came out {out.shape}, expected {step.shape}")
            before = out.dtype
            out = cast(out, dtype)
            if out.dtype != before:
                summary.casts[f"{before.name}->{out.dtype.name}"] += 1
            nan, inf = count_nonfinite(out)
            if nan or inf:
                summary.nonfinite[display_name(step.target)] = {"nan": nan, "inf": inf}
            summary.rules[step.rule] += 1
            write(key, out)
            if any(steps[k].source == step.source for k in order[i + 1:i + 4]):
                cached = (step.source, out, key)
            if bar is not None:
                bar.update(source.infos[step.source].nbytes)
            del out
    finally:
        if bar is not None:
            bar.close()
    summary.seconds += time.perf_counter() - t0

