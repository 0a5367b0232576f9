"""Extractive question answering: the best answer span from start/end logits, over overlapping windows.

Scoring, as in the question-answering pipelines people know: in each window the start and end logits
are turned into probabilities by a softmax over that window's *context* tokens only (question, special
and padding tokens get probability 0), and a span (s, e) scores

    score(s, e) = p_start[s] * p_end[e],   s <= e,  e - s + 1 <= max_answer_len,  s and e context tokens.

Each window is normalised on its own, and the spans of all windows compete on that score. The
arithmetic is float64 numpy on the host; the model runs once per batch of windows.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _logits(x: Any, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    return arr


def _mask(x: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(x)
    if arr.shape != shape:
        raise ValueError(f"{name} must have the logits' shape {shape}, got {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be boolean or 0/1, got values {np.unique(arr)[:8].tolist()}")
        arr = arr.astype(bool)
    return arr


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _masked_softmax(logits_T: np.ndarray, mask_T: np.ndarray) -> np.ndarray:
    shifted = np.where(mask_T, logits_T - logits_T[mask_T].max(), -np.inf)
    weights = np.exp(shifted)
    return weights / weights.sum()


def _logits_and_mask(start_logits, end_logits, context_mask, ndim: int):
    """Checked (start, end, mask) arrays of `ndim` dimensions, all of start_logits' shape."""
    start = _logits(start_logits, "start_logits", ndim)
    end = _logits(end_logits, "end_logits", ndim)
    if end.shape != start.shape:
        raise ValueError(f"end_logits must have start_logits' shape {start.shape}, got {end.shape}")
    return start, end, _mask(context_mask, "context_mask", start.shape)


def best_spans(start_logits, end_logits, context_mask, *, max_answer_len: int = 15,
               top_k: int = 1) -> list[tuple[int, int, float]]:
    """The `top_k` best (start, end, score) token spans of one window, best first.

    `start_logits`, `end_logits`, `context_mask`: shape (T,); `context_mask` marks the tokens an answer may
    use (the context: not the question, special tokens or padding). `end` is inclusive. Score: see the
    module docstring. Ties are broken by smaller start, then smaller end. Fewer than `top_k` spans come
    back when fewer are valid; none when the mask is empty.
    """
    start_T, end_T, mask_T = _logits_and_mask(start_logits, end_logits, context_mask, 1)
    max_answer_len = _check_positive_int(max_answer_len, "max_answer_len")
    top_k = _check_positive_int(top_k, "top_k")
    if not mask_T.any():
        return []
    for name, arr in (("start_logits", start_T), ("end_logits", end_T)):
        bad = np.flatnonzero(mask_T & ~np.isfinite(arr))
        if bad.size:
            raise ValueError(f"{name} is not finite at context positions {bad[:8].tolist()}")
    p_start, p_end = _masked_softmax(start_T, mask_T), _masked_softmax(end_T, mask_T)
    pos = np.arange(start_T.shape[0])
    length_TxT = pos[None, :] - pos[:, None] + 1  # [s, e] -> e - s + 1
    valid_TxT = (length_TxT >= 1) & (length_TxT <= max_answer_len) & mask_T[:, None] & mask_T[None, :]
    flat = np.flatnonzero(valid_TxT)  # s * T + e, ascending: start, then end
    scores = (p_start[:, None] * p_end[None, :]).ravel()[flat]
    order = np.lexsort((flat, -scores))[:top_k]
    T = start_T.shape[0]
    return [(int(flat[i] // T), int(flat[i] % T), float(scores[i])) for i in order]


def best_window_spans(start_logits, end_logits, context_mask, *, max_answer_len: int = 15,
                      top_k: int = 1) -> list[tuple[int, int, int, float]]:
    """The `top_k` best (window, start, end, score) spans over windows, best first.

    Inputs have shape (W, T), one row per window; each window is scored with `best_spans`. Ties are broken
    by the earlier window.
    """
    start_WxT, end_WxT, mask_WxT = _logits_and_mask(start_logits, end_logits, context_mask, 2)
    top_k = _check_positive_int(top_k, "top_k")
    found = []
    for w in range(start_WxT.shape[0]):
        try:
            spans = best_spans(start_WxT[w], end_WxT[w], mask_WxT[w], max_answer_len=max_answer_len, top_k=top_k)
        except ValueError as e:
            raise ValueError(f"window {w}: {e}") from None
        found += [(w, s, e, score) for s, e, score in spans]
    found.sort(key=lambda c: (-c[3], c[0], c[1], c[2]))
    return found[:top_k]


def _check_text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} is empty; a question and a context with some text are needed")
    return value


def answer_question(model, tokenizer, question: str, context: str, *, max_answer_len: int = 15,
                    max_length: int = 384, stride: int = 128, top_k: int = 1, batch_size: int | None = None):
    """Answer `question` with a span of `context`: a dict(answer, score, start, end), or a list of `top_k` dicts.

    `start`/`end` are character offsets into `context` (`context[start:end] == answer`). The pair is
    tokenized question first; a context longer than one window of `max_length` tokens is split into
    windows that overlap by `stride` tokens, each repeating the question. `model(input_ids=...,
    attention_mask=...)` must return `.start_logits` and `.end_logits` of shape (windows, tokens); windows
    go through it `batch_size` at a time (all at once by default). The best span over all windows wins;
    with `top_k > 1` the same character span found in two overlapping windows is listed once.
    """
    _check_text(question, "question")
    _check_text(context, "context")
    max_answer_len = _check_positive_int(max_answer_len, "max_answer_len")
    max_length = _check_positive_int(max_length, "max_length")
    top_k = _check_positive_int(top_k, "top_k")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 0:
        raise ValueError(f"stride must be a non-negative int, got {stride!r}")
    n_question = len(tokenizer.encode(question, add_special_tokens=False))
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    room = max_length - n_question - n_special
    if room <= 0:
        raise ValueError(f"question is {n_question} tokens; with {n_special} special tokens that leaves no room "
                         f"for the context within max_length={max_length}")
    if stride >= room:
        raise ValueError(f"stride={stride} must be smaller than the context tokens per window, {room} "
                         f"(max_length {max_length} - {n_question} question tokens - {n_special} special tokens)")
    enc = tokenizer(question, context, truncation="only_second", max_length=max_length, stride=int(stride),
                    return_overflowing_tokens=True, return_offsets_mapping=True, padding=True, return_tensors="np")
    ids_WxT = np.asarray(enc["input_ids"], dtype=np.int32)
    attn_WxT = np.asarray(enc["attention_mask"], dtype=np.int32)
    offsets_WxTx2 = np.asarray(enc["offset_mapping"])
    n_windows, width = ids_WxT.shape
    context_WxT = np.array([[sid == 1 for sid in enc.sequence_ids(w)] for w in range(n_windows)]) & (attn_WxT == 1)

    step = n_windows if batch_size is None else _check_positive_int(batch_size, "batch_size")
    starts, ends = [], []
    for lo in range(0, n_windows, step):
        out = model(input_ids=ids_WxT[lo:lo + step], attention_mask=attn_WxT[lo:lo + step])
        for name, acc in (("start_logits", starts), ("end_logits", ends)):
            logits = np.asarray(getattr(out, name), dtype=np.float64)
            expected = (min(step, n_windows - lo), width)
            if logits.shape != expected:
                raise ValueError(f"model output {name} has shape {logits.shape}, expected {expected} (windows, tokens)")
            acc.append(logits)
    spans = best_window_spans(np.concatenate(starts), np.concatenate(ends), context_WxT,
                              max_answer_len=max_answer_len, top_k=top_k * n_windows)
    answers, seen = [], set()
    for w, s, e, score in spans:
        char_start, char_end = int(offsets_WxTx2[w, s, 0]), int(offsets_WxTx2[w, e, 1])
        if (char_start, char_end) in seen:
            continue
        seen.add((char_start, char_end))
        answers.append({"answer": context[char_start:char_end], "score": score, "start": char_start, "end": char_end})
        if len(answers) == top_k:
            break
    if not answers:
        raise ValueError("context produced no tokens to answer from")
    return answers[0] if top_k == 1 else answers
