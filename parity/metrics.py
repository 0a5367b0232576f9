"""Per-tensor comparison metrics between a reference run and a candidate run.

Everything is framework independent: inputs are anything ``numpy.asarray``
accepts (numpy, ml_dtypes bfloat16/float16, JAX arrays, CPU torch tensors of
numpy-compatible dtypes) and are converted to float64 before any arithmetic.

Conventions
-----------
* ``mask`` restricts every metric to the positions where it is on. It is a
  boolean array aligned with the *leading* axes of the tensor: a (B, T) mask
  applies to (B, T, D) hidden states and (B, T, V) logits, and is padded with
  trailing singleton axes before numpy broadcasting. For attention
  probabilities (B, H, Tq, Tk) pass e.g. ``mask[:, None, :, None]``. A mask as
  large as the tensor also works; for ``kind="logits"`` it then also excludes
  classes from softmax, argmax and top-5 (QA start/end logits over positions).
* Any NaN or infinity inside the mask, in the reference, the candidate or the
  gold run, turns every float metric into NaN and is counted in
  ``nonfinite_*``; :func:`parity.tolerance.judge` fails such a tensor. To
  compare tensors that legitimately hold matching ``-inf`` (generation scores),
  leave those entries out through the mask.
* An empty selection (mask all off) yields NaN metrics and ``count == 0``,
  which also fails: a gate that compares nothing cannot pass.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

KINDS = ("hidden", "logits", "attention", "ids", "grad", "param")
TOP_K = 5

_NAN = float("nan")


@dataclass(frozen=True)
class TensorMetrics:
    """Metrics of one named tensor. Fields that do not apply are ``None``.

    ``max_rel_err`` is ``max |ref - cand| / RMS(ref)``. The ``gold_*`` fields
    exist when a float64 gold run was given: ``err_ref = |ref - gold|`` and
    ``err_cand = |cand - gold|`` summarised by max and mean, ``gold_ratio`` =
    ``gold_err_cand_max / gold_err_ref_max`` (0/0 counts as 1, x/0 as inf).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    count: int
    nonfinite_ref: int
    nonfinite_cand: int
    nonfinite_gold: int | None = None
    ref_rms: float | None = None
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    mean_abs_err: float | None = None
    cosine: float | None = None
    positions: int | None = None
    argmax_agreement: float | None = None
    top5_overlap: float | None = None
    mean_kl: float | None = None
    gold_rms: float | None = None
    gold_err_ref_max: float | None = None
    gold_err_ref_mean: float | None = None
    gold_err_cand_max: float | None = None
    gold_err_cand_mean: float | None = None
    gold_ratio: float | None = None
    mismatches: int | None = None
    match_fraction: float | None = None

    @property
    def nonfinite(self) -> int:
        """Non-finite values inside the mask, over reference, candidate and gold."""
        return self.nonfinite_ref + self.nonfinite_cand + (self.nonfinite_gold or 0)

    @property
    def has_gold(self) -> bool:
        return self.nonfinite_gold is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (floats may be NaN/inf; the report writer encodes them)."""
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorMetrics":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"TensorMetrics.from_dict: unknown field(s) {unknown}")
        values = dict(data)
        values["shape"] = tuple(int(d) for d in values["shape"])
        return cls(**values)


def field_names() -> tuple[str, ...]:
    """Names of every TensorMetrics field (the report schema lists the same)."""
    return tuple(f.name for f in dataclasses.fields(TensorMetrics))


def compare(
    name: str,
    reference: Any,
    candidate: Any,
    *,
    gold: Any = None,
    mask: Any = None,
    kind: str = "hidden",
) -> TensorMetrics:
    """Compare ``candidate`` (Flax) with ``reference`` (PyTorch) for tensor ``name``."""
    if kind not in KINDS:
        raise ValueError(f"{name}: kind must be one of {KINDS}, got {kind!r}")
    ref = _as_array(reference, name, "reference")
    cand = _as_array(candidate, name, "candidate")
    if ref.shape != cand.shape:
        raise ValueError(
            f"{name}: candidate shape {cand.shape} differs from reference shape {ref.shape}"
        )
    m = _check_mask(mask, ref.shape, name)
    if kind == "ids":
        if gold is not None:
            raise ValueError(f"{name}: kind='ids' is compared exactly; gold must be None")
        return _compare_ids(name, ref, cand, m)
    for label, arr in (("reference", ref), ("candidate", cand)):
        if arr.dtype.kind not in "fiub" and not _is_ml_float(arr.dtype):
            raise ValueError(f"{name}: {label} must be numeric, got dtype {arr.dtype}")
    if kind == "logits" and ref.ndim == 0:
        raise ValueError(f"{name}: logits need at least one (class) axis, got a scalar")
    g_arr = None
    if gold is not None:
        g_arr = _as_array(gold, name, "gold")
        if g_arr.shape != ref.shape:
            raise ValueError(f"{name}: gold shape {g_arr.shape} differs from reference shape {ref.shape}")

    # Select first, convert after: only the compared elements are copied to float64, chunk by chunk.
    if kind == "logits":
        keep_rows, classes = _row_selection(m, ref.shape)
        rows_r = _rows(ref, keep_rows)
        rows_c = _rows(cand, keep_rows)
        positions = int(rows_r.shape[0])
        flat = (lambda x: x.reshape(-1)) if classes is None else (lambda x: x[classes])
        readers = [_reader(flat(rows_r), None), _reader(flat(rows_c), None)]
        if g_arr is not None:
            readers.append(_reader(flat(_rows(g_arr, keep_rows)), None))
    else:
        readers = [_reader(x, m) for x in (ref, cand) + (() if g_arr is None else (g_arr,))]
    count = readers[0][0]
    bad, values = _stream_metrics(readers)
    bad_ref, bad_cand = bad[0], bad[1]
    bad_gold = bad[2] if g_arr is not None else None
    if count == 0 or bad_ref or bad_cand or bad_gold:
        values = dict.fromkeys(("ref_rms", "max_abs_err", "max_rel_err", "mean_abs_err", "cosine"), _NAN)
        if kind == "logits":
            values.update(argmax_agreement=_NAN, top5_overlap=_NAN, mean_kl=_NAN, positions=positions)
        if g_arr is not None:
            values.update(dict.fromkeys(
                ("gold_rms", "gold_err_ref_max", "gold_err_ref_mean",
                 "gold_err_cand_max", "gold_err_cand_mean", "gold_ratio"), _NAN))
    elif kind == "logits":
        values.update(_logit_metrics(rows_r, rows_c, classes))

    return TensorMetrics(
        name=name, kind=kind, shape=tuple(ref.shape), count=count,
        nonfinite_ref=bad_ref, nonfinite_cand=bad_cand, nonfinite_gold=bad_gold,
        **values,
    )


# Elements per chunk of the float64 reductions below: small enough to stay in cache. An attention map of
# 12 x 1024 x 1024 selected and reduced whole made float64 temporaries of 100 MB each (page faults on
# every fresh allocation) and took 5-10x longer. 1 << 16 (512 KB per float64 chunk, about a core's L2)
# against the earlier 1 << 18, AMD EPYC (AVX2), 2026-12-04, `python -m benchmarks.metrics_bench`: a
# gradient's reference/candidate/gold over 20M elements 133 vs 231 ms; logit rows (256 x 50265) 360 vs
# 1018 ms; 1 << 14: 170 and 375 ms.
CHUNK = 1 << 16


def _rows_per_chunk(width: int) -> int:
    """How many rows of `width` elements make about CHUNK elements (at least one)."""
    return max(1, CHUNK // max(width, 1))


def _reader(arr: np.ndarray, m: np.ndarray | None):
    """(number of elements of `arr` under the mask `m`, a function that yields them chunk by chunk)."""
    if m is not None and m.ndim < arr.ndim:  # whole trailing blocks: take rows, no full-size index
        lead = np.broadcast_to(m, arr.shape[:m.ndim]).reshape(-1)
        rows = arr.reshape(lead.size, -1)
        idx = np.flatnonzero(lead)
        step = _rows_per_chunk(rows.shape[1])
        return idx.size * rows.shape[1], lambda: (rows.take(idx[j:j + step], axis=0).reshape(-1)
                                                   for j in range(0, idx.size, step))
    flat = arr.reshape(-1) if m is None else arr[np.broadcast_to(m, arr.shape)]
    return flat.size, lambda: (flat[i:i + CHUNK] for i in range(0, flat.size, CHUNK))


def _stream_metrics(readers) -> tuple[list[int], dict[str, float]]:
    """One pass over (reference, candidate[, gold]) chunks in float64: the non-finite count of each, and
    max/mean |r - c|, RMS(r), cosine(r, c) and, with a gold run, max/mean |r - g|, |c - g| and RMS(g).
    The metrics are meaningless when a count is non-zero (the caller replaces them with NaN)."""
    has_gold = len(readers) == 3
    bad = [0] * len(readers)
    acc = dict.fromkeys(("max", "sum", "rr", "cc", "rc", "ref_max", "ref_sum", "cand_max", "cand_sum", "gg"), 0.0)
    for chunk in zip(*(read() for _, read in readers)):
        arrays = [x.astype(np.float64, copy=False) for x in chunk]
        for i, x in enumerate(arrays):
            bad[i] += int(x.size - np.count_nonzero(np.isfinite(x)))
        if any(bad):
            continue
        a, b = arrays[0], arrays[1]
        d = np.abs(a - b)
        acc["max"] = max(acc["max"], float(d.max()))
        acc["sum"] += float(d.sum())
        acc["rr"] += float(a @ a)
        acc["cc"] += float(b @ b)
        acc["rc"] += float(a @ b)
        if has_gold:
            q = arrays[2]
            e_ref, e_cand = np.abs(a - q), np.abs(b - q)
            acc["ref_max"] = max(acc["ref_max"], float(e_ref.max()))
            acc["ref_sum"] += float(e_ref.sum())
            acc["cand_max"] = max(acc["cand_max"], float(e_cand.max()))
            acc["cand_sum"] += float(e_cand.sum())
            acc["gg"] += float(q @ q)
    n = readers[0][0]
    if n == 0 or any(bad):
        return bad, {}
    rms = math.sqrt(acc["rr"] / n)
    norm_r, norm_c = math.sqrt(acc["rr"]), math.sqrt(acc["cc"])
    if norm_r == 0.0 and norm_c == 0.0:
        cosine = 1.0
    elif norm_r == 0.0 or norm_c == 0.0:
        cosine = 0.0
    else:
        cosine = acc["rc"] / (norm_r * norm_c)
    values = {"ref_rms": rms, "max_abs_err": acc["max"], "max_rel_err": _safe_ratio(acc["max"], rms),
              "mean_abs_err": acc["sum"] / n, "cosine": cosine}
    if has_gold:
        values.update(gold_rms=math.sqrt(acc["gg"] / n), gold_err_ref_max=acc["ref_max"],
                      gold_err_ref_mean=acc["ref_sum"] / n, gold_err_cand_max=acc["cand_max"],
                      gold_err_cand_mean=acc["cand_sum"] / n,
                      gold_ratio=_safe_ratio(acc["cand_max"], acc["ref_max"], zero_over_zero=1.0))
    return bad, values


def _logit_metrics(r: np.ndarray, c: np.ndarray, classes: np.ndarray | None) -> dict[str, Any]:
    """Argmax agreement, top-5 overlap and mean KL(softmax(r) || softmax(c)) over rows (N, V).

    ``classes`` (N, V) marks the classes that take part, or None for all of them. The rows are taken in
    float64 blocks of about CHUNK elements: a BART-base max_length row set (1024 x 50265) in one piece
    made float64 temporaries of 400 MB each. Per-row values are gathered, then averaged as one array.
    """
    step = _rows_per_chunk(r.shape[-1])
    parts = [_logit_rows(r[i:i + step].astype(np.float64), c[i:i + step].astype(np.float64),
                         None if classes is None else classes[i:i + step])
             for i in range(0, r.shape[0], step)]
    kl, agree, overlap = (np.concatenate([p[j] for p in parts]) for j in range(3))
    return {
        "positions": int(r.shape[0]),
        "argmax_agreement": float(agree.mean()),
        "top5_overlap": float(overlap.mean()),
        "mean_kl": float(max(kl.mean(), 0.0)),
    }


def _logit_rows(r: np.ndarray, c: np.ndarray, classes: np.ndarray | None):
    """Per row: KL(softmax(r) || softmax(c)), argmax agreement, top-5 overlap (float64 rows)."""
    n_classes = r.shape[-1]
    if classes is not None:
        r = np.where(classes, r, -np.inf)
        c = np.where(classes, c, -np.inf)

    p_r, logp_r = _softmax(r)
    _, logp_c = _softmax(c)
    if classes is not None:  # excluded classes: p_r == 0; keep -inf - -inf out of the sum
        logp_r = np.where(classes, logp_r, 0.0)
        logp_c = np.where(classes, logp_c, 0.0)
    log_ratio = logp_r - logp_c
    kl = np.einsum("nv,nv->n", p_r, log_ratio)

    agree = np.argmax(r, axis=1) == np.argmax(c, axis=1)

    k = min(TOP_K, n_classes)
    top_r = np.argpartition(r, n_classes - k, axis=1)[:, n_classes - k:]
    top_c = np.argpartition(c, n_classes - k, axis=1)[:, n_classes - k:]
    same = top_r[:, :, None] == top_c[:, None, :]
    if classes is None:
        overlap = same.sum(axis=(1, 2)) / k
    else:
        k_row = np.minimum(k, classes.sum(axis=1))
        valid_r = np.take_along_axis(classes, top_r, axis=1)
        valid_c = np.take_along_axis(classes, top_c, axis=1)
        same &= valid_r[:, :, None] & valid_c[:, None, :]
        overlap = same.sum(axis=(1, 2)) / k_row
    return kl, agree, overlap


def _softmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(softmax, log_softmax) over the last axis, in float64."""
    shifted = x - np.max(x, axis=1, keepdims=True)
    e = np.exp(shifted)
    total = np.sum(e, axis=1, keepdims=True)
    return e / total, shifted - np.log(total)


def _compare_ids(name: str, ref: np.ndarray, cand: np.ndarray, m: np.ndarray | None) -> TensorMetrics:
    for label, arr in (("reference", ref), ("candidate", cand)):
        if arr.dtype.kind not in "iub":
            raise ValueError(f"{name}: kind='ids' needs integer arrays, {label} has dtype {arr.dtype}")
    sel_r = _select(ref, m, np.int64)
    sel_c = _select(cand, m, np.int64)
    count = int(sel_r.size)
    mismatches = int(np.count_nonzero(sel_r != sel_c))
    return TensorMetrics(
        name=name, kind="ids", shape=tuple(ref.shape), count=count,
        nonfinite_ref=0, nonfinite_cand=0, mismatches=mismatches,
        match_fraction=(1.0 - mismatches / count) if count else _NAN,
    )


def _select(arr: np.ndarray, m: np.ndarray | None, dtype: Any = np.float64) -> np.ndarray:
    """The elements under the mask, flattened and converted to ``dtype``."""
    if m is None:
        return arr.reshape(-1).astype(dtype, copy=False)
    if m.ndim < arr.ndim:  # a leading-axes mask selects whole trailing blocks (fast path)
        lead = np.broadcast_to(m, arr.shape[:m.ndim]).reshape(-1)
        rows = arr.reshape(lead.size, -1).take(np.flatnonzero(lead), axis=0)  # faster than a bool index
        return rows.reshape(-1).astype(dtype, copy=False)
    return arr[np.broadcast_to(m, arr.shape)].astype(dtype, copy=False)


def _row_selection(m: np.ndarray | None, shape: tuple[int, ...]):
    """(row mask over the flattened (N, V) rows or None for all, class mask of the kept rows or None)."""
    if m is None:
        return None, None
    if m.ndim < len(shape):
        lead = np.broadcast_to(m, shape[:m.ndim]).reshape(-1)
        return np.repeat(lead, math.prod(shape[m.ndim:-1])), None
    full = np.broadcast_to(m, shape).reshape(-1, shape[-1])
    keep = full.any(axis=1)
    classes = full[keep]
    return keep, (None if classes.all() else classes)


def _rows(arr: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
    """(N, V) rows of a logits tensor, in its own dtype: all of them, or those ``keep`` selects."""
    rows = arr.reshape(-1, arr.shape[-1])
    return rows if keep is None else rows[keep]


def _safe_ratio(num: float, den: float, *, zero_over_zero: float = 0.0) -> float:
    if den == 0.0:
        return zero_over_zero if num == 0.0 else math.inf
    return num / den


def _is_ml_float(dtype: np.dtype) -> bool:
    # ml_dtypes' bfloat16 / float8 types report kind 'V'; they convert to float64.
    try:
        np.zeros((), dtype).astype(np.float64)
    except (TypeError, ValueError):
        return False
    return dtype.kind == "V"


def _as_array(value: Any, name: str, label: str) -> np.ndarray:
    if value is None:
        raise ValueError(f"{name}: {label} is None")
    try:
        arr = np.asarray(value)
    except Exception as exc:  # e.g. a bfloat16 torch tensor
        raise TypeError(
            f"{name}: cannot convert {label} of type {type(value).__name__} to numpy ({exc}); "
            "convert it to float32 or float64 first"
        ) from exc
    if arr.dtype == object:
        raise TypeError(f"{name}: {label} is not a numeric array (dtype object)")
    return arr


def _check_mask(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    """The mask as a bool array aligned with the leading axes of ``shape`` (None: everything)."""
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.dtype != bool:
        if m.dtype.kind in "iu" and np.isin(m, (0, 1)).all():
            m = m.astype(bool)
        else:
            raise ValueError(f"{name}: mask must be boolean (or 0/1 integers), got dtype {m.dtype}")
    if m.ndim > len(shape):
        raise ValueError(f"{name}: mask has {m.ndim} axes, tensor only {len(shape)} (shape {shape})")
    try:
        np.broadcast_to(m, shape[:m.ndim])
    except ValueError:
        raise ValueError(
            f"{name}: mask shape {m.shape} does not align with the leading axes of tensor shape {shape}"
        ) from None
    while m.ndim and m.shape[-1] == 1:  # a trailing singleton broadcasts: the same mask over fewer axes
        m = m[..., 0]
    return None if m.all() else m
