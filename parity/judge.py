"""Judging one head: compare the two frameworks' tensors and add them to the report in forward order.

Low-precision greedy ids are compared only while the float64 run's top-1/top-2 margin exceeds twice
the error bound the policy allows there: closer calls are near-ties that either framework may break
either way (`GREEDY_NOTE`, written into the report).
"""

from __future__ import annotations

import math

import numpy as np

from parity.collect import case_masks, forward_specs, pick
from parity.metrics import compare
from parity.runners import TorchRunner, greedy_settings
from parity.tolerance import LOW_PRECISION, Verdict, judge

GREEDY_NOTE = ("Greedy token ids in float16/bfloat16 are compared while the float64 gold run's top-1/top-2 logit "
               "margin exceeds 2 * (k * PyTorch's own logit error + floor); past a near-tie both frameworks may "
               "legitimately pick differently.")


def gold_margins(gold: TorchRunner, head: str, case: dict, gold_ids: np.ndarray) -> np.ndarray:
    """(B, L) top-1 minus top-2 logit of the float64 run at each position of its own greedy path;
    inf where nothing was chosen: the prompt or start token, forced tokens, padding after `</s>`."""
    fwd, _ = gold.forward(case, decoder_input_ids=gold_ids[:, :-1])
    logits = np.asarray(fwd["logits"], np.float64)
    top2 = np.sort(np.partition(logits, logits.shape[-1] - 2, axis=-1)[..., -2:], axis=-1)
    full = np.full(gold_ids.shape, np.inf)
    full[:, 1:] = top2[..., 1] - top2[..., 0]
    start = case["input_ids"].shape[1] if head == "causal" else 1
    full[:, :start] = np.inf
    s = greedy_settings(gold.config, head)
    if s["forced_bos_token_id"] is not None and start == 1:
        full[:, 1] = np.inf
    if s["forced_eos_token_id"] and gold_ids.shape[1] > start:
        full[:, -1] = np.inf
    if s["eos_token_id"]:
        ended = np.cumsum(np.isin(gold_ids[:, start:], s["eos_token_id"]), axis=1) > 0
        full[:, start + 1:][ended[:, :-1]] = np.inf
    return full


def _last_hidden(forward: dict, head: str) -> np.ndarray:
    if head == "causal":
        return forward["hidden_states"][-1]
    if head == "base":
        return forward["last_hidden_state"]
    return forward["decoder_hidden_states"][-1]


def _forward_metrics(head, cname, case, cfg, t, f, g) -> list:
    """(spec, metrics) of every compared tensor of one case's forward pass, in forward order."""
    return [(spec, compare(spec.name, pick(t, spec.key), pick(f, spec.key), mask=spec.mask, kind=spec.kind,
                           gold=None if g is None else pick(g, spec.key)))
            for spec in forward_specs(cfg, head, f"{head}/{cname}/", case)]


def pooled_torch_errors(per_case: list[list]) -> dict:
    """spec.key -> PyTorch's largest max |torch - gold| for that output over all cases (finite ones).
    Rule 5 compares two maxima: over a handful of elements (a length-1 case's 3 logits, a classifier's
    9) the max is one draw, and the ratio of two such draws is heavy-tailed (BART-base float16, 6 input
    seeds: Flax's error up to 2.1x PyTorch's on tensors under 16 elements, 1.75x at 1,000 and more).
    A small tensor is judged against PyTorch's error on the same output over every case of the head,
    the same computation measured on more elements (parity.tolerance.POOL_BELOW)."""
    pooled: dict = {}
    for rows in per_case:
        for spec, m in rows:
            err = m.gold_err_ref_max
            if m.has_gold and err is not None and math.isfinite(err):
                pooled[spec.key] = max(pooled.get(spec.key, 0.0), float(err))
    return pooled


def _add_forward(report, col, rows, pooled, policy):
    for spec, m in rows:   # judge uses the pooled error only in rule 5 (low precision, small tensors)
        report.add(m, group=spec.group, layer=spec.layer, verdict=judge(m, col["dtype"], policy, pooled.get(spec.key)),
                   **col)


def _stack(steps: list[dict], what: str):
    if not steps or steps[0][what] is None:
        return None
    return np.concatenate([np.asarray(st[what]) for st in steps], axis=1)


def _add_steps(report, col, head, cname, case, t, f, g):
    """Teacher-forced cached decoding: the N steps stacked along the sequence axis, (B, N, ...)."""
    n = len(t["steps"])
    if n == 0:
        return
    mask = case_masks(head, case).dec[:, :n]
    prefix = f"{head}/{cname}/cached_steps"
    logits = {"torch": _stack(t["steps"], "logits"), "flax": _stack(f["steps"], "logits")}
    hidden = {"torch": _stack(t["steps"], "hidden"), "flax": _stack(f["steps"], "hidden")}
    gold_logits = None if g is None or logits["torch"] is None else g["forward"]["logits"][:, :n]
    gold_hidden = None if g is None else _last_hidden(g["forward"], head)[:, :n]
    if logits["torch"] is not None:
        report.add(compare(f"{prefix}.logits", logits["torch"], logits["flax"], gold=gold_logits, mask=mask,
                           kind="logits"), group="cached_decoding", **col)
    report.add(compare(f"{prefix}.hidden", hidden["torch"], hidden["flax"], gold=gold_hidden, mask=mask),
               group="cached_decoding", **col)
    # cached vs uncached inside each framework: the uncached forward pass is the reference
    use_logits = logits["torch"] is not None
    for fw, run in (("flax", f), ("torch", t)):
        uncached = (run["forward"]["logits"] if use_logits else _last_hidden(run["forward"], head))[:, :n]
        cached = logits[fw] if use_logits else hidden[fw]
        report.add(compare(f"{prefix}.{fw}_cached_vs_uncached", uncached, cached,
                           gold=gold_logits if use_logits else gold_hidden, mask=mask,
                           kind="logits" if use_logits else "hidden"), group="cached_decoding", **col)


NO_SCORES_RULE = ("no greedy step left to compare (forced steps, steps after a finished row or after the ids "
                  "parted, or no clear float64 choice): the ids are judged")


def _add_greedy(report, col, head, cname, case, cfg, t, f, g, dtype, policy):
    rows = case_masks(head, case).rows
    mask = np.broadcast_to(rows[:, None], t["greedy"].shape).copy()
    if g is not None:  # low precision: compare while the gold run's choice is clear (module doc)
        fwd_logits = next(r for r in reversed(report.column(dtype, **_devices(col)).results)
                          if r.name == f"{head}/{cname}/logits").metrics
        err = fwd_logits.gold_err_ref_max
        bound = (policy.k * err + policy.floor(dtype, fwd_logits.gold_rms)) if err is not None and math.isfinite(err) \
            else math.inf
        clear = g["margins"] > 2 * bound
        same_prefix = np.cumprod(t["greedy"] == g["greedy"], axis=1).astype(bool)
        prefix_ok = np.concatenate([np.ones_like(same_prefix[:, :1]), same_prefix[:, :-1]], axis=1)
        mask &= np.cumprod(clear, axis=1).astype(bool) & prefix_ok
    m = compare(f"{head}/{cname}/greedy_ids", t["greedy"], f["greedy"], mask=mask, kind="ids")
    bad = 0
    for run in (t, f):
        for st in run.get("steps", ()):
            if st["logits"] is not None:
                bad += int((~np.isfinite(np.asarray(st["logits"], np.float64)[rows])).sum())
    verdict = None
    if bad:
        verdict = Verdict(False, "nonfinite", float(bad), 0.0,
                          "greedy ids are not judged when the decoding logits hold NaN/inf")
    report.add(m, group="generate", verdict=verdict, **col)
    _add_greedy_scores(report, col, head, cname, case, cfg, t, f, g, mask)


def _add_greedy_scores(report, col, head, cname, case, cfg, t, f, g, ids_mask):
    """Per-step processed scores of greedy decoding, (B, steps, V). Step i chooses the token at position
    `start + i`; it is compared where its ids are (`ids_mask`), while both frameworks (and the gold run)
    had fed the same tokens, for the steps both ran, and not at forced steps (one 0, the rest -inf:
    the forced token itself is judged by the ids)."""
    ts, fs = t["greedy_scores"], f["greedy_scores"]
    n = ts.shape[1]
    start = case["input_ids"].shape[1] if head == "causal" else 1
    same = np.cumprod(t["greedy"][:, :start + n] == f["greedy"][:, :start + n], axis=1).astype(bool)
    mask = ids_mask[:, start:start + n] & same[:, start - 1:start - 1 + n]
    ran = min(t["greedy_steps"], f["greedy_steps"], g["greedy_steps"] if g is not None else n)
    mask[:, ran:] = False
    settings = greedy_settings(cfg, head)
    if start == 1 and settings["forced_bos_token_id"] is not None:  # forced while the sequence has length 1
        mask[:, 0] = False
    if settings["forced_eos_token_id"]:
        mask[:, n - 1] = False  # max_length - 1 is always reached after `n` steps
    m = compare(f"{head}/{cname}/greedy_scores", ts, fs, mask=mask, kind="logits",
                gold=None if g is None else g["greedy_scores"])
    # Nothing left to compare is no failure here: every step was forced or came after the ids parted, or
    # (bf16/fp16) the float64 run's choice was never clear; the ids are judged on their own.
    verdict = None if mask.any() else Verdict(True, "count", 0.0, 0.0, NO_SCORES_RULE)
    report.add(m, group="generate", verdict=verdict, **col)


def _devices(col: dict) -> dict:
    return {"flax_device": col["flax_device"], "torch_device": col["torch_device"]}


def judge_head(report, col, head, cases, cfg, t_all, f_all, g_all, opts):
    dtype = col["dtype"]
    per_case = [_forward_metrics(head, cname, case, cfg, t_all[cname]["forward"], f_all[cname]["forward"],
                                 None if g_all is None else g_all[cname]["forward"])
                for cname, case in cases.items()]
    pooled = pooled_torch_errors(per_case)
    for rows in per_case:
        _add_forward(report, col, rows, pooled, opts.policy)
    for cname, case in cases.items():
        if "steps" in t_all[cname]:
            _add_steps(report, col, head, cname, case, t_all[cname], f_all[cname],
                       None if g_all is None else g_all[cname])
    for cname, case in cases.items():  # float32 greedy ids are compared exactly along the whole path
        if "greedy" in t_all[cname]:
            _add_greedy(report, col, head, cname, case, cfg, t_all[cname], f_all[cname],
                        None if g_all is None or dtype not in LOW_PRECISION else g_all[cname], dtype, opts.policy)

