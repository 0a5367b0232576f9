"""Run the Flax side of one head and dtype as few compiled programs as the cases allow.

Every distinct input shape costs XLA a compilation (seconds on a CPU, even for a tiny model), while
running is cheap, so the Flax side merges the input cases of a head into *buckets*: the rows of all
cases of a bucket are stacked into one batch, padded on the right to the bucket's length with
`pad_token_id` and attention mask 0. One forward program, one cached-decoding step and one greedy
program then serve the whole bucket; each case's outputs are cut back out (its rows, its positions).

A padded position is absent (attention mask `flax_bart.modules.ABSENT`): no query ever attends to it,
not even in a row that attends to nothing else (the `fully_padded_row` and `fully_masked_row` cases,
which attend uniformly over their own positions, as in PyTorch BART); the decoder is causal, and
BART's positions count from the left edge whatever the mask. So padding changes no output at a case's
own positions, and any case may pad into a longer bucket. A case is padded only up to
`max(4 x its length, 64)` positions, so the short cases never pay for a long `max_length` case. The
causal head's greedy decoding continues after the last prompt position, so its greedy buckets merge
only prompts of equal length, without padding. PyTorch runs every case at its own shape: the
comparison checks the padded Flax run against the unpadded reference, within the same tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flax_bart.modules import ABSENT
from parity.runners import DECODING_HEADS, GREEDY_HEADS, decode_steps, greedy_settings, new_tokens

PAD_FACTOR = 4     # a case is padded to at most PAD_FACTOR x its length ...
PAD_FLOOR = 64     # ... or PAD_FLOOR positions, whichever is more


@dataclass
class Bucket:
    enc_len: int                       # encoder (or causal input) length of the merged batch
    dec_len: int                       # decoder length (= enc_len for the causal head)
    members: list = field(default_factory=list)   # (case name, first row, end row)
    eos_count: int | None = None       # "cls": the `</s>` count of every row (the head needs one count)


def _lengths(head: str, case: dict) -> tuple[int, int]:
    s = case["input_ids"].shape[1]
    return (s, s) if head == "causal" else (s, case["decoder_input_ids"].shape[1])


def _fits(own: tuple[int, int], bucket: Bucket) -> bool:
    if own == (bucket.enc_len, bucket.dec_len):
        return True
    room = [max(PAD_FACTOR * n, PAD_FLOOR) for n in own]
    return (bucket.enc_len >= own[0] and bucket.dec_len >= own[1]
            and bucket.enc_len <= room[0] and bucket.dec_len <= room[1])


def _eos_count(head: str, case: dict, eos_token_id) -> int | None:
    """The classification head reads the last `</s>` of rows that all hold the same count: cases of
    different counts (one `</s>`, sentence pairs' three) never share a batch."""
    if head != "cls" or eos_token_id is None:
        return None
    counts = np.unique(np.isin(np.asarray(case["input_ids"]), np.atleast_1d(eos_token_id)).sum(axis=1))
    return int(counts[0]) if len(counts) == 1 else -1


def plan(head: str, cases: dict, pad: bool = True, eos_token_id=None) -> list[Bucket]:
    """Buckets of `cases`, longest first; `pad=False` merges only cases of equal length; for "cls" only
    cases of one `</s>` count per row (`eos_token_id`) share a bucket."""
    buckets: list[Bucket] = []
    # The longest first: they fix the lengths the shorter ones may pad to.
    order = sorted(cases, key=lambda n: [-x for x in _lengths(head, cases[n])])
    for name in order:
        case, own = cases[name], _lengths(head, cases[name])
        eos = _eos_count(head, case, eos_token_id)
        fit = [b for b in buckets if b.eos_count == eos and (own == (b.enc_len, b.dec_len) or (pad and _fits(own, b)))]
        bucket = min(fit, key=lambda b: (b.enc_len, b.dec_len), default=None)
        if bucket is None:
            bucket = Bucket(own[0], own[1], eos_count=eos)
            buckets.append(bucket)
        rows = case["input_ids"].shape[0]
        start = bucket.members[-1][2] if bucket.members else 0
        bucket.members.append((name, start, start + rows))
    return sorted(buckets, key=lambda b: (-b.enc_len, -b.dec_len))


def _pad_right(a: np.ndarray, length: int, value: int) -> np.ndarray:
    extra = length - a.shape[1]
    return a if extra == 0 else np.concatenate([a, np.full((a.shape[0], extra), value, a.dtype)], axis=1)


def merge(head: str, cases: dict, bucket: Bucket, pad_token_id: int) -> dict:
    """The bucket's inputs: its cases' rows stacked and padded on the right to the bucket's lengths."""
    names = [m[0] for m in bucket.members]
    enc = bucket.enc_len
    merged = {
        "input_ids": np.concatenate([_pad_right(cases[n]["input_ids"], enc, pad_token_id) for n in names]),
        "attention_mask": np.concatenate([_pad_right(cases[n]["attention_mask"], enc, ABSENT) for n in names]),
    }
    if head == "causal":
        return merged
    dec = bucket.dec_len
    merged["decoder_input_ids"] = np.concatenate(
        [_pad_right(cases[n]["decoder_input_ids"], dec, pad_token_id) for n in names])
    own_masks = [cases[n].get("decoder_attention_mask") for n in names]
    if any(m is not None for m in own_masks) or len(set(_lengths(head, cases[n]) for n in names)) > 1:
        # The model reads no mask as all ones: the same numbers, spelled out, then padded as absent.
        merged["decoder_attention_mask"] = np.concatenate([
            _pad_right(np.ones_like(cases[n]["decoder_input_ids"]) if m is None else m, dec, ABSENT)
            for n, m in zip(names, own_masks)]).astype(np.int32)
    return merged


# ---- cutting each case's outputs back out ----------------------------------------------------------
def _seq_axes(head: str, name: str) -> tuple[str, ...]:
    """Per axis after the batch: 'S' (encoder positions), 'T' (decoder positions) or '' (keep)."""
    if head == "cls" and name == "logits":
        return ("",)
    if name.startswith("encoder_"):
        return ("", "S", "S") if name == "encoder_attentions" else ("S", "")
    if name == "cross_attentions":
        return ("", "T", "S")
    if name in ("decoder_attentions", "attentions"):
        return ("", "T", "T")
    if name in ("start_logits", "end_logits"):
        return ("T",)
    return ("T", "")   # hidden states, last_hidden_state, logits over the vocabulary


def _cut(value, axes, rows: slice, s: int, t: int):
    if isinstance(value, tuple):
        return tuple(_cut(v, axes, rows, s, t) for v in value)
    index = (rows,) + tuple(slice(0, s) if a == "S" else slice(0, t) if a == "T" else slice(None) for a in axes)
    return np.ascontiguousarray(value[index])


def cut_forward(head: str, outputs: dict, case: dict, rows: slice) -> dict:
    s, t = _lengths(head, case)
    return {name: _cut(v, _seq_axes(head, name), rows, s, t) for name, v in outputs.items()}


def greedy_steps_run(head: str, ids: np.ndarray, start: int, n: int, config) -> int:
    """Steps greedy decoding of these rows alone would have run: until every row emitted eos, at most n."""
    eos = greedy_settings(config, head)["eos_token_id"]
    eos = [] if eos is None else list(np.atleast_1d(eos))
    if not eos or n == 0:
        return n
    new = ids[:, start:start + n]
    hit = np.isin(new, eos)
    if not hit.any(axis=1).all():
        return n
    return int(hit.argmax(axis=1).max()) + 1


def _cut_greedy(head: str, greedy: dict, case: dict, rows: slice, steps: int, config) -> dict:
    start = case["input_ids"].shape[1] if head == "causal" else 1
    n = new_tokens(head, case, steps, config)
    ids = greedy["ids"][rows]
    ran = min(greedy["steps"], greedy_steps_run(head, ids, start, n, config))
    scores = greedy["scores"][rows].copy()
    scores[:, ran:] = 0.0
    return {"greedy": ids, "greedy_scores": scores, "greedy_steps": ran}


# ---- the run ---------------------------------------------------------------------------------------
def _for_bucket(runner, merged: dict):
    """The runner whose compilation suits this bucket (FlaxRunner.for_bucket), and its label."""
    pick = getattr(runner, "for_bucket", None)
    return pick(merged) if pick is not None else (runner, "optimized")


def run_buckets(top_runner, head: str, cases: dict, steps: int) -> tuple[dict, dict]:
    """Outputs per case as the per-case runs give them, from one run per bucket; and the plan
    ({"forward": [[case, ...], ...], "compile": ["fast" | "optimized", ...], "greedy": ...}) for the report."""
    cfg = top_runner.config
    pad_id = greedy_settings(cfg, head)["pad_token_id"]
    out = {name: {} for name in cases}
    layout = {"forward": [], "compile": []}
    for bucket in plan(head, cases, eos_token_id=cfg.eos_token_id):
        merged = merge(head, cases, bucket, pad_id)
        layout["forward"].append([m[0] for m in bucket.members])
        runner, mode = _for_bucket(top_runner, merged)
        layout["compile"].append(mode)
        fwd, enc = runner.forward(merged)
        run_steps = steps and head in DECODING_HEADS
        cached = runner.cached_steps(merged, enc, steps) if run_steps else None
        for name, first, end in bucket.members:
            rows = slice(first, end)
            out[name]["forward"] = cut_forward(head, fwd, cases[name], rows)
            if cached is not None:
                n = decode_steps(head, cases[name], steps)
                out[name]["steps"] = [{k: None if v is None else v[rows] for k, v in st.items()}
                                      for st in cached[:n]]
        if head == "lm" and steps:   # greedy from the same padded encoder inputs
            _greedy_bucket(runner, head, cases, bucket, merged, enc, steps, out)
    if head == "causal" and steps:   # prompts of equal length only: decoding continues after them
        layout["greedy"] = []
        buckets = plan(head, cases, pad=False)
        # generate() pads a prompt to its length bucket, so prompts of different lengths (1 and 12 tokens,
        # say) share one program when their batches have as many rows: the smaller batches are filled up.
        rows = max(b.members[-1][2] for b in buckets)
        for bucket in buckets:
            layout["greedy"].append([m[0] for m in bucket.members])
            merged = _fill_rows(merge(head, cases, bucket, pad_id), rows)
            _greedy_bucket(_for_bucket(top_runner, merged)[0], head, cases, bucket, merged, None, steps, out)
    return out, layout


def _fill_rows(merged: dict, rows: int) -> dict:
    """The batch with copies of its first row appended up to `rows` rows (their outputs are dropped; a
    copy finishes decoding when its original does, so it adds no step)."""
    have = merged["input_ids"].shape[0]
    if have >= rows:
        return merged
    return {k: np.concatenate([v, np.repeat(v[:1], rows - have, axis=0)]) for k, v in merged.items()}


def _greedy_bucket(runner, head, cases, bucket, merged, enc, steps, out) -> None:
    names = [m[0] for m in bucket.members if new_tokens(head, cases[m[0]], steps, runner.config)]
    if head not in GREEDY_HEADS or not names:
        return
    greedy = runner.greedy(merged, enc, steps)
    for name, first, end in bucket.members:
        if name in names:
            out[name].update(_cut_greedy(head, greedy, cases[name], slice(first, end), steps, runner.config))

