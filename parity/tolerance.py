"""The tolerance policy: the one place where parity tolerances live, as data.

Rules, per tensor, checked in this order (the first that fails is the verdict):

1. Something was compared: ``count > 0``.
2. No NaN or infinity inside the mask in the reference, candidate or gold run.
3. Token ids (``kind="ids"``): exact equality, in every dtype.
4. ``float32`` / ``float64``: ``max |flax - torch| / RMS(torch) <= rtol``
   (``rtol`` = 1e-5 unless overridden with ``--rtol``). A float32 tensor outside it still passes when
   the float64 gold run shows Flax within a small multiple of PyTorch's own distance from exact
   arithmetic (``max |flax - gold| <= FP32_K_FACTOR * k * max |torch - gold| + FP32_FLOOR_ULPS *
   eps(float32) * RMS(gold)``). The ratio to the RMS grows with the tensor: BART-base's attention maps
   over 1024 positions (RMS ~3e-3, weights up to 1) differ by a few float32 ULPs of their largest
   weights (max 1.5-3.6e-7), 5e-5 to 1.3e-4 of the RMS, with cosine 1 - 1e-13. The multiple is not 1:
   XLA:CPU's float32 GEMM accumulates with 2.3-6.1x the error of PyTorch's (MKL/oneDNN) at K = 768-3072
   (64- and 1024-row products against float64, this 2-core AMD EPYC, AVX2), so Flax's hidden states sit ~2x and
   the BART-base 1024-position logits 4.3x further from the gold than PyTorch's. A layer off by 0.1%
   is ~100x outside the bound. The harness runs the gold for a float32-only matrix only when rule 4
   fails somewhere.
5. ``float16`` / ``bfloat16``: a PyTorch float64 run is the gold yardstick.
   ``err_torch = max |torch - gold|``, ``err_flax = max |flax - gold|``; pass when
   ``err_flax <= k * err_torch + floor`` with ``k`` = 2 (``--k``) and
   ``floor = FLOOR_ULPS[dtype] * MACHINE_EPS[dtype] * RMS(gold)``: one unit in the
   last place at the tensor's own scale, so that a tensor PyTorch happens to
   compute exactly (``err_torch == 0``) does not demand a bit-exact Flax result.
   The ratio ``err_flax / err_torch`` is always reported (``gold_ratio``). A tensor of fewer than
   ``POOL_BELOW`` elements (a length-1 case's logits, a classifier's) takes for ``err_torch`` the
   largest of PyTorch's errors on the same output over every input case of the head
   (``parity.judge.pooled_torch_errors``): the max of a handful of elements is one draw, and two such
   draws differ by 2x or more for a correct conversion (BART-base float16, 6 input seeds).
6. Gradients (``kind="grad"``) follow rules 4 and 5. A gradient that is zero in exact arithmetic
   (its float64 gold RMS <= ``ZERO_GRAD_RATIO`` x the RMS of all gradients of the same loss: a key
   projection's bias, which softmax ignores; the QA head's bias) is rounding noise in every
   framework, all error relative to its own RMS; it is judged by the same rules at the scale of all
   the gradients instead (:func:`judge_at_scale`). In fp16/bf16 a gradient gets
   ``GRAD_K_FACTOR x k`` and ``GRAD_FLOOR_ULPS`` instead of ``k`` and the floor: a gradient is a sum
   over every batch row and position, rounded in several places, and comparing the max error of two
   such independently rounded sums is heavy-tailed. Measured on the quick demo config, 4 heads, all
   cases (about 2,200 gradients per dtype, this machine): Flax's error is PyTorch's at the median
   (ratio 0.85-1.0) but the ratio's p99 is 2.5-2.7 and its maximum 4.6-5.2, so rule 5 as it stands
   fails 13-46 gradients of a correct conversion; with 2 x k and 8 ULPs the worst gradient sits at
   0.9 of its bound (0.58 with the scale floor below), while a gradient path off by 10% or more still fails (tests/parity/test_grads.py).
   Float32 gradients are judged the same way against the float64 gold (eps = 2^-23), with rule 4's
   fallback multiple ``FP32_K_FACTOR x k`` for the same reason (XLA:CPU's float32 GEMM, the one that
   sums every gradient, errs 2-6x PyTorch's): over the demo's 723 float32 gradient rows Flax's error
   is PyTorch's x 1.81 at the median and x 3.58 at most on an AVX2 AMD EPYC (x 1.10 and x 2.89 on an
   AVX-512 Xeon), which left the worst rows at 0.87 of a 2 x k bound. Not by rule 4:
   rule 4's max |flax - torch| / RMS(torch) grows with the model. The quick demo's qa gradients (309
   rows) measured it at up to 1.25e-5 with XLA and PyTorch capped to AVX (7.8e-6 uncapped), and
   BART-base's (783 rows) at up to 7.9e-4 for the word embedding (a mostly-zero gradient, whose RMS is
   small) with cosine 1 - 1e-9 and mean error 1e-8 of the RMS: rounding order, not a defect. A gradient
   off by 0.1% still fails. Without a gold run, rule 4 applies with ``GRAD_RTOL_FACTOR x rtol``.
   In every dtype the floor's RMS is at least ``GRAD_SCALE_FRACTION`` x the RMS of all gradients of
   the loss (:func:`judge_grad`): a small gradient summed from large terms carries their rounding.
   A zero gradient of a linear layer's bias (the QA bias: sum_t softmax_t - onehot_t) is the float sum
   of terms that cancel, so its error is a few ULPs of the terms' absolute sum (about 1 for the QA
   bias), and PyTorch's error is one draw of it: ``ZERO_GRAD_TERM_ULPS`` x eps x that sum (measured in
   the float64 gold run, ``parity.grads.bias_masses``) is added to its bound. Without it the demo's
   float32 QA bias failed at 7.85x on an AVX-512 AMD EPYC (Flax 8 ULPs of the sum, PyTorch 1/4)
   and passed on Intel and AVX2 machines; with it the demo's worst such row is at 6% of its bound.
7. Parameters after optimiser steps (``kind="param"``): ``mean |flax - torch| / RMS(torch) <=
   PARAM_RTOL_FACTOR x rtol``. Adam divides each gradient element by its own running RMS, which turns
   the fp32 rounding of a near-zero gradient element into a step of either sign: the max error is
   bounded only by ``2 x steps x lr`` (BART-base after 3 steps: max 3e-2 of the parameter's RMS, mean
   3e-6), so the mean, which a systematic error moves, is the judged metric; the max is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from parity.metrics import TensorMetrics

# Spacing of floating-point numbers at 1.0 (numpy/ml_dtypes ``finfo(dtype).eps``).
MACHINE_EPS: Mapping[str, float] = {
    "float64": 2.0**-52,
    "float32": 2.0**-23,
    "float16": 2.0**-10,
    "bfloat16": 2.0**-7,
}

FULL_PRECISION = ("float32", "float64")
LOW_PRECISION = ("float16", "bfloat16")

DEFAULT_RTOL = 1e-5
DEFAULT_K = 2.0
# Low-precision floor in units of MACHINE_EPS[dtype] * RMS(gold).
DEFAULT_FLOOR_ULPS: Mapping[str, float] = {"float16": 1.0, "bfloat16": 1.0}
POOL_BELOW = 64          # rule 5: a tensor of fewer elements takes PyTorch's error over every case of the head
FP32_K_FACTOR = 4.0      # rule 4's gold fallback: FP32_K_FACTOR x k x PyTorch's error ...
FP32_FLOOR_ULPS = 4.0    # ... plus this floor in units of eps(float32) * RMS(gold)
ZERO_GRAD_RATIO = 1e-8
ZERO_GRAD_TERM_ULPS = 32.0  # a zero gradient (a bias's): also this many ULPs of the absolute sum of its terms
GRAD_K_FACTOR = 2.0      # low-precision gradients: GRAD_K_FACTOR x k ...
GRAD_FLOOR_ULPS = 8.0    # ... and this floor in ULPs at the gradient's RMS (rule 6) ...
GRAD_SCALE_FRACTION = 1e-3   # ... but at least at this fraction of the RMS of all gradients of the loss
PARAM_RTOL_FACTOR = 10.0
GRAD_RTOL_FACTOR = 4.0   # float32 gradients: max |flax - torch| / RMS(torch) <= GRAD_RTOL_FACTOR x rtol (rule 6)

_ALIASES = {
    "fp64": "float64", "f64": "float64", "float64": "float64",
    "fp32": "float32", "f32": "float32", "float32": "float32",
    "fp16": "float16", "f16": "float16", "half": "float16", "float16": "float16",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
}

# Words for the metric a verdict names, used by the Markdown and JUnit reports.
METRIC_WORDS: Mapping[str, str] = {
    "count": "number of compared elements",
    "nonfinite": "non-finite values (NaN/inf)",
    "mismatches": "mismatched token ids",
    "max_rel_err": "max error relative to the reference RMS",
    "gold_err_cand_max": "max |flax - gold|",
    "err_at_grad_scale": "max error relative to the RMS of all gradients (a gradient zero in exact arithmetic)",
}


def normalize_dtype(dtype: Any) -> str:
    """Canonical dtype name ('float32', 'bfloat16', ...) from a name, alias or numpy dtype."""
    if isinstance(dtype, str):
        key = dtype
    else:
        try:
            key = np.dtype(dtype).name
        except TypeError:  # e.g. torch.float16
            key = str(dtype)
    key = key.lower().replace("torch.", "")
    if key not in _ALIASES:
        raise ValueError(
            f"unknown dtype {dtype!r}: expected one of {sorted(set(_ALIASES.values()))} "
            f"(aliases {sorted(k for k in _ALIASES if k not in _ALIASES.values())})"
        )
    return _ALIASES[key]


def _within(value: float, bound: float) -> bool:
    return (not math.isnan(value)) and value <= bound


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


@dataclass(frozen=True)
class Policy:
    """Tolerance settings; build variants with :meth:`with_overrides`, never mutate."""

    rtol: float = DEFAULT_RTOL
    k: float = DEFAULT_K
    floor_ulps: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FLOOR_ULPS))

    def __post_init__(self) -> None:
        _check_positive("rtol", self.rtol)
        _check_positive("k", self.k)
        for dtype in LOW_PRECISION:
            if dtype not in self.floor_ulps:
                raise ValueError(f"floor_ulps: missing entry for {dtype}")
        for dtype, ulps in self.floor_ulps.items():
            if dtype not in LOW_PRECISION:
                raise ValueError(f"floor_ulps: {dtype!r} is not a low-precision dtype {LOW_PRECISION}")
            if not (isinstance(ulps, (int, float)) and math.isfinite(ulps) and ulps >= 0):
                raise ValueError(f"floor_ulps[{dtype}] must be a finite number >= 0, got {ulps!r}")

    def with_overrides(self, *, rtol: float | None = None, k: float | None = None) -> "Policy":
        """A copy with the CLI overrides applied (``None`` keeps the current value)."""
        changes = {name: value for name, value in (("rtol", rtol), ("k", k)) if value is not None}
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "Policy":
        """Policy from the arguments added by :func:`add_cli_arguments`."""
        return cls().with_overrides(rtol=getattr(args, "rtol", None), k=getattr(args, "k", None))

    def floor(self, dtype: str, gold_rms: float) -> float:
        """Absolute error floor for a low-precision tensor whose gold RMS is ``gold_rms``."""
        dtype = normalize_dtype(dtype)
        if dtype not in LOW_PRECISION:
            raise ValueError(f"floor: only defined for {LOW_PRECISION}, got {dtype}")
        return self.floor_ulps[dtype] * MACHINE_EPS[dtype] * gold_rms

    def grad_bound(self, dtype: str, err_torch: float, gold_rms: float, scale: float = 0.0) -> float:
        """Rule 6's bound on max |flax - gold| for a gradient of RMS `gold_rms` among gradients of RMS
        `scale` (the floor's RMS is at least GRAD_SCALE_FRACTION x scale)."""
        dtype = normalize_dtype(dtype)
        if dtype not in MACHINE_EPS or dtype == "float64":
            raise ValueError(f"grad_bound: defined for float32, float16 and bfloat16, got {dtype}")
        rms = max(gold_rms, GRAD_SCALE_FRACTION * scale)
        return grad_k_factor(dtype) * self.k * err_torch + GRAD_FLOOR_ULPS * MACHINE_EPS[dtype] * rms

    def to_dict(self) -> dict[str, Any]:
        return {"rtol": self.rtol, "k": self.k, "floor_ulps": dict(self.floor_ulps)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Policy":
        return cls(rtol=float(data["rtol"]), k=float(data["k"]),
                   floor_ulps={str(d): float(u) for d, u in data["floor_ulps"].items()})

    def describe(self) -> list[str]:
        """One line per rule, for reports and the README."""
        lines = [
            f"float32/float64: max |flax - torch| / RMS(torch) <= rtol = {self.rtol:g}; a float32 tensor "
            f"outside it passes when max |flax - gold| <= {FP32_K_FACTOR:g} x k x max |torch - gold| + "
            f"{FP32_FLOOR_ULPS:g} * eps(float32) * RMS(gold) (float64 gold run)",
        ]
        for dtype in LOW_PRECISION:
            lines.append(
                f"{dtype}: max |flax - gold| <= k * max |torch - gold| + floor, k = {self.k:g}, "
                f"floor = {self.floor_ulps[dtype]:g} * eps({dtype}) = "
                f"{self.floor_ulps[dtype] * MACHINE_EPS[dtype]:.3g} * RMS(gold); under {POOL_BELOW} elements, "
                f"max |torch - gold| over the same output in every case of the head"
            )
        lines.append("token ids: exact equality; any NaN/inf inside the mask fails")
        lines.append("weights of a Flax checkpoint checked as it is: equal bit for bit to the PyTorch ones after "
                     "rounding both to the coarser storage dtype")
        lines.append(f"gradients: max |flax - gold| <= F x k x max |torch - gold| (F = {FP32_K_FACTOR:g} in float32, "
                     f"{GRAD_K_FACTOR:g} in float16/bfloat16) + "
                     f"{GRAD_FLOOR_ULPS:g} * eps * RMS(gold); one zero in exact arithmetic (float64 RMS <= "
                     f"{ZERO_GRAD_RATIO:g} x all gradients') at the scale of all gradients, a bias's plus "
                     f"{ZERO_GRAD_TERM_ULPS:g} * eps * the absolute sum of its terms; parameters after optimiser steps: "
                     f"mean |flax - torch| / RMS(torch) <= {PARAM_RTOL_FACTOR:g} x rtol")
        return lines


DEFAULT_POLICY = Policy()


def grad_k_factor(dtype: str) -> float:
    """Rule 6's multiple of k: FP32_K_FACTOR in float32 (XLA:CPU's float32 GEMM, the gradients' sums
    included, is less exact than PyTorch's, as in rule 4's fallback), GRAD_K_FACTOR otherwise."""
    return FP32_K_FACTOR if normalize_dtype(dtype) == "float32" else GRAD_K_FACTOR


@dataclass(frozen=True)
class Verdict:
    """Outcome for one tensor: the metric that decided it, its value and the bound."""

    passed: bool
    metric: str
    value: float
    tolerance: float
    rule: str

    @property
    def headroom(self) -> float:
        """value / tolerance (0/0 = 0, x/0 = inf); NaN or any other failure is >= inf-like."""
        if math.isnan(self.value):
            return math.inf
        if self.tolerance == 0:
            ratio = 0.0 if self.value == 0 else math.inf
        else:
            ratio = self.value / self.tolerance
        return ratio if self.passed or ratio > 1 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Verdict":
        return cls(passed=bool(data["passed"]), metric=str(data["metric"]),
                   value=float(data["value"]), tolerance=float(data["tolerance"]),
                   rule=str(data["rule"]))


def judge(metrics: TensorMetrics, dtype: Any, policy: Policy = DEFAULT_POLICY,
          pooled_err_ref: float | None = None) -> Verdict:
    """Apply the policy to one tensor's metrics computed at ``dtype``. ``pooled_err_ref``: PyTorch's
    max |torch - gold| for the same output over every input case of the head (rule 5, small tensors)."""
    dtype = normalize_dtype(dtype)
    if metrics.count == 0:
        return Verdict(False, "count", 0.0, 1.0, "at least one element must be compared")
    if metrics.nonfinite:
        return Verdict(False, "nonfinite", float(metrics.nonfinite), 0.0,
                       "no NaN/inf inside the mask (reference, candidate or gold)")
    if metrics.kind == "ids":
        value = float(metrics.mismatches)
        return Verdict(value == 0, "mismatches", value, 0.0, "token ids equal exactly")
    if dtype in FULL_PRECISION and metrics.kind == "param":
        rms = float(metrics.ref_rms)
        value = float(metrics.mean_abs_err) / rms if rms > 0 else (0.0 if metrics.mean_abs_err == 0 else math.inf)
        bound = PARAM_RTOL_FACTOR * policy.rtol
        return Verdict(_within(value, bound), "mean_rel_err", value, bound,
                       f"parameters after optimiser steps: mean |flax - torch| / RMS(torch) <= {PARAM_RTOL_FACTOR:g} x rtol")
    if metrics.kind == "grad" and dtype != "float64" and metrics.has_gold:
        return _gold_grad_verdict(metrics, dtype, policy)
    if dtype == "float32" and metrics.kind == "grad":
        value, bound = float(metrics.max_rel_err), GRAD_RTOL_FACTOR * policy.rtol
        return Verdict(_within(value, bound), "max_rel_err", value, bound,
                       f"gradient: max |flax - torch| / RMS(torch) <= {GRAD_RTOL_FACTOR:g} x rtol")
    if dtype in FULL_PRECISION:
        value = float(metrics.max_rel_err)
        verdict = Verdict(_within(value, policy.rtol), "max_rel_err", value, policy.rtol,
                          "max |flax - torch| / RMS(torch) <= rtol")
        if verdict.passed or dtype != "float32" or not metrics.has_gold:
            return verdict
        return _fp32_gold_fallback(metrics, verdict, policy)
    if not metrics.has_gold:
        raise ValueError(
            f"{metrics.name}: judging {dtype} needs a float64 gold run "
            "(compare(..., gold=...)); none was given"
        )
    value = float(metrics.gold_err_cand_max)
    err_ref, rule = float(metrics.gold_err_ref_max), "max |flax - gold| <= k * max |torch - gold| + floor"
    if pooled_err_ref is not None and metrics.count < POOL_BELOW and math.isfinite(pooled_err_ref):
        err_ref = max(err_ref, float(pooled_err_ref))
        rule = (f"max |flax - gold| <= k * max |torch - gold| + floor, PyTorch's error taken over this output "
                f"in every case of the head (fewer than {POOL_BELOW} elements)")
    bound = policy.k * err_ref + policy.floor(dtype, float(metrics.gold_rms))
    return Verdict(_within(value, bound), "gold_err_cand_max", value, bound, rule)


def _fp32_gold_fallback(metrics: TensorMetrics, rule4: Verdict, policy: Policy) -> Verdict:
    """Rule 4's second chance for a float32 tensor outside rtol: as close to the float64 gold as PyTorch."""
    value = float(metrics.gold_err_cand_max)
    bound = FP32_K_FACTOR * policy.k * float(metrics.gold_err_ref_max) + \
        FP32_FLOOR_ULPS * MACHINE_EPS["float32"] * float(metrics.gold_rms)
    rule = f"{FP32_K_FACTOR:g} * k * max |torch - gold| + floor"
    if _within(value, bound):
        return Verdict(True, "gold_err_cand_max", value, bound,
                       f"outside rtol of PyTorch, but max |flax - gold| <= {rule}")
    return dataclasses.replace(rule4, rule=rule4.rule + f" (nor max |flax - gold| = {value:.3g} <= {rule} = "
                                                     f"{bound:.3g})")


def judge_grad(metrics: TensorMetrics, dtype: Any, scale: float, policy: Policy = DEFAULT_POLICY) -> Verdict:
    """Rule 6 for a gradient that is not zero in exact arithmetic, among gradients of RMS `scale`: the
    floor's RMS is at least GRAD_SCALE_FRACTION x scale, since a small gradient summed from large terms
    carries their rounding (measured: a cross-attention q_proj bias gradient of RMS 1.4e-7 failed at 1.2x
    its own-RMS bound in float32 with cosine 1 - 4e-11; with the scale, the worst of 7,973 rows sat at
    0.53, 0.58 and 0.67 of their bounds in float32, bf16 and fp16)."""
    dtype = normalize_dtype(dtype)
    if (metrics.count == 0 or metrics.nonfinite or dtype == "float64" or not metrics.has_gold
            or metrics.kind != "grad"):
        return judge(metrics, dtype, policy)
    return _gold_grad_verdict(metrics, dtype, policy, scale)


def _gold_grad_verdict(metrics: TensorMetrics, dtype: str, policy: Policy, scale: float = 0.0) -> Verdict:
    """Rule 6 against the float64 gold; `scale` > 0 raises the floor's RMS to GRAD_SCALE_FRACTION x scale."""
    value = float(metrics.gold_err_cand_max)
    bound = policy.grad_bound(dtype, float(metrics.gold_err_ref_max), float(metrics.gold_rms), scale)
    at = f" at max(RMS, {GRAD_SCALE_FRACTION:g} x RMS of all gradients)" if scale > 0 else ""
    return Verdict(_within(value, bound), "gold_err_cand_max", value, bound,
                   f"gradient: max |flax - gold| <= {grad_k_factor(dtype):g} * k * max |torch - gold| + "
                   f"{GRAD_FLOOR_ULPS:g} ulps{at}")


def judge_at_scale(metrics: TensorMetrics, dtype: Any, scale: float, policy: Policy = DEFAULT_POLICY,
                   mass: float = 0.0) -> Verdict:
    """Rules 4 and 5 for a gradient zero in exact arithmetic, at `scale` (the RMS of all gradients of the
    loss, float64 gold) instead of the tensor's own RMS. `mass` > 0 (a bias: the largest over its elements
    of the absolute sum of the terms summed into it, float64 gold) adds ZERO_GRAD_TERM_ULPS x eps x mass
    to the gold bound: such a gradient is the float sum of terms that cancel, so its rounding is a
    multiple of the terms' size, and PyTorch's own error is a single draw of a few ULPs of it."""
    dtype = normalize_dtype(dtype)
    if metrics.count == 0 or metrics.nonfinite:
        return judge(metrics, dtype, policy)
    if dtype in FULL_PRECISION and not (dtype == "float32" and metrics.has_gold):
        value = float(metrics.max_abs_err) / scale if scale > 0 else math.inf
        bound = GRAD_RTOL_FACTOR * policy.rtol
        return Verdict(_within(value, bound), "err_at_grad_scale", value, bound,
                       f"zero gradient: max |flax - torch| / RMS(all gradients) <= {GRAD_RTOL_FACTOR:g} x rtol")
    if not metrics.has_gold:
        raise ValueError(f"{metrics.name}: judging {dtype} needs a float64 gold run; none was given")
    bound = policy.grad_bound(dtype, float(metrics.gold_err_ref_max), scale)
    terms = ""
    if mass > 0:
        bound += ZERO_GRAD_TERM_ULPS * MACHINE_EPS[dtype] * mass
        terms = f" + {ZERO_GRAD_TERM_ULPS:g} ulps of its terms' absolute sum ({mass:.3g})"
    value = float(metrics.gold_err_cand_max)
    return Verdict(_within(value, bound), "gold_err_cand_max", value, bound,
                   f"zero gradient: max |flax - gold| <= {grad_k_factor(dtype):g} * k * max |torch - gold| + "
                   f"{GRAD_FLOOR_ULPS:g} ulps at the RMS of all gradients{terms}")


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--rtol`` and ``--k`` so every command spells the overrides the same way."""
    parser.add_argument("--rtol", type=_positive_float, default=None,
                        help=f"fp32 max relative error (default {DEFAULT_RTOL:g})")
    parser.add_argument("--k", type=_positive_float, default=None,
                        help=f"fp16/bf16: allowed multiple of PyTorch's own error (default {DEFAULT_K:g})")
