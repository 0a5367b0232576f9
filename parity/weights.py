"""The weights themselves, when the gate checks a Flax checkpoint against PyTorch weights.

Outputs on the gate's inputs do not see every weight: the embedding rows of tokens the inputs never
hold (with untied or separate input embeddings, and in the `cls`/`qa`/`base` heads, nothing else reads
them), a separate encoder/decoder input embedding the PyTorch config does not use, or a weight error
under a bfloat16/float16 run's tolerance. So a Flax checkpoint checked as it is also has its every
tensor compared with its PyTorch counterpart: both written out in PyTorch's layout with every tied copy
(`convert.convert_tree`, tied="all"), each pair rounded to the coarser of the two storage dtypes, and
then equal bit for bit, or the tensor fails. A conversion (this project's, 4.x's `from_pt`) casts with
round-to-nearest-even, so an honest checkpoint in another storage dtype passes; an exact rule needs no
tolerance to argue about. A weight that changes nothing (a key projection's bias, which the softmax
cancels) still fails: the checkpoints differ.
"""

from __future__ import annotations

from typing import Mapping

import ml_dtypes
import numpy as np

from convert.plan import has_separate_embeddings
from convert.tree import convert_tree, flatten
from flax_bart.config import BartConfig
from parity.metrics import TensorMetrics, compare
from parity.tolerance import Verdict

GROUP = "weights"
RULE = "weights: equal bit for bit after rounding both to the coarser storage dtype"


def coarser(a: np.dtype, b: np.dtype) -> np.dtype:
    """The dtype with fewer mantissa bits (then fewer exponent bits) of two float dtypes."""
    fa, fb = ml_dtypes.finfo(a), ml_dtypes.finfo(b)
    return a if (fa.nmant, fa.maxexp) <= (fb.nmant, fb.maxexp) else b


def _layout(config: BartConfig, tensors: Mapping, framework: str, head: str) -> BartConfig:
    separate = has_separate_embeddings(list(tensors), framework, tensors.__getitem__, config, head)
    return config.replace(separate_input_embeddings=separate)


def compare_weights(reference_sd: Mapping[str, np.ndarray], flax_params, config: BartConfig,
                    head: str) -> list[tuple[TensorMetrics, Verdict]]:
    """(metrics, verdict) per PyTorch-named tensor of `head`, in model order, named `{head}/weights/{key}`."""
    base = config.replace(separate_input_embeddings=False)
    flat = flatten(flax_params)
    ours, _ = convert_tree(flat, "flax", _layout(base, flat, "flax", head), head, "pt", tied="all", borrow=True,
                           describe="the Flax checkpoint")
    theirs, _ = convert_tree(reference_sd, "pt", _layout(base, reference_sd, "pt", head), head, "pt", tied="all",
                             borrow=True, describe="the PyTorch checkpoint")
    results = []
    for key in list(theirs) + [k for k in ours if k not in theirs]:
        ref, cand = theirs.get(key), ours.get(key)
        name = f"{head}/weights/{key}"
        if ref is None or cand is None:   # both layouts hold every copy, so this is not expected: fail
            one = cand if ref is None else ref
            side = "PyTorch" if ref is None else "Flax"
            metrics = TensorMetrics(name=name, kind="param", shape=tuple(one.shape), count=int(one.size),
                                    nonfinite_ref=0, nonfinite_cand=0, max_abs_err=float("nan"))
            results.append((metrics, Verdict(False, "max_abs_err", float("nan"), 0.0,
                                             f"{RULE} (no {key} in the {side} weights)")))
            continue
        dtype = coarser(np.dtype(ref.dtype), np.dtype(cand.dtype))
        r, c = np.asarray(ref).astype(dtype, copy=False), np.asarray(cand).astype(dtype, copy=False)
        if r.tobytes() == c.tobytes():   # the common case: no arithmetic over the whole model
            metrics = TensorMetrics(name=name, kind="param", shape=tuple(r.shape), count=int(r.size),
                                    nonfinite_ref=0, nonfinite_cand=0, max_abs_err=0.0, max_rel_err=0.0,
                                    mean_abs_err=0.0)
            results.append((metrics, Verdict(True, "max_abs_err", 0.0, 0.0, RULE)))
            continue
        r32, c32 = r.astype(np.float32), c.astype(np.float32)
        metrics = compare(name, r32, c32, kind="param")
        same = (r32 == c32) | (np.isnan(r32) & np.isnan(c32))
        differ = int(r32.size - np.count_nonzero(same))
        value = float(metrics.max_abs_err) if differ else 0.0
        results.append((metrics, Verdict(differ == 0, "max_abs_err", value, 0.0,
                                         RULE + (f" ({differ} of {r32.size} values differ)" if differ else ""))))
    return results
