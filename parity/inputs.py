"""Deterministic input batches for parity runs: numpy int32 arrays from a seed (numpy only).

Rows look like BART's tokenisation, with bos/eos/pad ids from the config: a row of length L >= 2 is
`<s> t ... t </s>`, a row of length 1 is `</s>` alone (so that every non-empty row holds exactly one
`<eos>`: sequence classification needs the same count in every row), a QA row and a `classification`
row are pairs `<s> a </s></s> b </s>` (three). The ordinary tokens t
never equal a special id (bos, eos, pad, decoder start, forced bos/eos). `attention_mask` is 1 on
tokens and 0 on padding. The same (config, seed) always gives the same arrays, case by case: each case
draws from its own stream, so adding a case does not change the others.
"""

from __future__ import annotations

import zlib

import numpy as np

HEADS = ("base", "lm", "cls", "qa", "causal")
DEFAULT_BATCH = 3
DEFAULT_SEQ_LEN = 12


def _ids(v) -> list[int]:
    return [] if v is None else [int(i) for i in v] if isinstance(v, (list, tuple)) else [int(v)]


def _required(config, name: str) -> int:
    v = _ids(getattr(config, name, None))
    if not v:
        raise ValueError(f"config.{name} is None; these inputs need it")
    return v[0]


def special_token_ids(config) -> tuple[int, ...]:
    """Ids the generators place only on purpose."""
    ids = set()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
                 "forced_bos_token_id", "forced_eos_token_id"):
        ids.update(_ids(getattr(config, name, None)))
    return tuple(sorted(i for i in ids if 0 <= i < config.vocab_size))


def ordinary_token_ids(config) -> np.ndarray:
    ordinary = np.setdiff1d(np.arange(config.vocab_size), special_token_ids(config))
    if ordinary.size == 0:
        raise ValueError(f"vocab_size={config.vocab_size} leaves no token that is not a special id")
    return ordinary.astype(np.int32)


def shift_tokens_right(ids, pad_token_id, decoder_start_token_id) -> np.ndarray:
    """Decoder inputs from labels: out[:, 0] = start, out[:, 1:] = ids[:, :-1], -100 -> pad."""
    if pad_token_id is None or decoder_start_token_id is None:
        raise ValueError(
            "shift_tokens_right needs pad_token_id and decoder_start_token_id, got "
            f"{pad_token_id!r} and {decoder_start_token_id!r}"
        )
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"shift_tokens_right: expected ids of shape (batch, length), got {ids.shape}")
    out = np.empty(ids.shape, dtype=np.int32)
    out[:, 1:] = ids[:, :-1]
    out[:, 0] = decoder_start_token_id
    out[out == -100] = pad_token_id
    return out


def decoder_inputs(input_ids, config) -> np.ndarray:
    return shift_tokens_right(input_ids, config.pad_token_id, config.decoder_start_token_id)


def _rng(seed: int, case: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(case.encode())])


def _seq_len(config, seq_len) -> int:
    n = min(DEFAULT_SEQ_LEN, config.max_position_embeddings) if seq_len is None else int(seq_len)
    if not 1 <= n <= config.max_position_embeddings:
        raise ValueError(f"seq_len={n} must lie in [1, max_position_embeddings={config.max_position_embeddings}]")
    return n


def _text_row(rng, config, length: int) -> list[int]:
    eos = _required(config, "eos_token_id")
    if length == 1:
        return [eos]
    body = rng.choice(ordinary_token_ids(config), size=length - 2).tolist()
    return [_required(config, "bos_token_id")] + body + [eos]


def _pack(rows, seq_len, pad, padding_side) -> dict[str, np.ndarray]:
    ids = np.full((len(rows), seq_len), pad, dtype=np.int32)
    mask = np.zeros((len(rows), seq_len), dtype=np.int32)
    for i, row in enumerate(rows):
        sl = slice(0, len(row)) if padding_side == "right" else slice(seq_len - len(row), seq_len)
        ids[i, sl], mask[i, sl] = row, 1
    return {"input_ids": ids, "attention_mask": mask}


def padded_batch(config, seed: int = 0, batch_size: int = DEFAULT_BATCH, seq_len: int | None = None,
                 lengths=None, padding_side: str = "right", case: str = "padded") -> dict[str, np.ndarray]:
    """Text rows of the given `lengths` (default: the first row full, the others random in
    [2, seq_len]), padded on `padding_side`; a length of 0 is a fully padded row."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side={padding_side!r}: expected 'right' or 'left'")
    n, pad = _seq_len(config, seq_len), _required(config, "pad_token_id")
    rng = _rng(seed, f"{case}/{padding_side}")
    if lengths is None:
        lengths = [n] + rng.integers(min(2, n), n + 1, size=batch_size - 1).tolist()
    if any(not 0 <= int(l) <= n for l in lengths):
        raise ValueError(f"lengths={list(lengths)} must lie in [0, seq_len={n}]")
    return _pack([_text_row(rng, config, int(l)) if l else [] for l in lengths], n, pad, padding_side)


def single_token_batch(config, seed: int = 0, batch_size: int = DEFAULT_BATCH, token: str = "random"):
    """Length-1 rows: a random ordinary token each (`token="random"`) or `</s>` (`token="eos"`)."""
    if token == "eos":
        ids = np.full((batch_size, 1), _required(config, "eos_token_id"), dtype=np.int32)
    elif token == "random":
        ids = _rng(seed, "single").choice(ordinary_token_ids(config), size=(batch_size, 1)).astype(np.int32)
    else:
        raise ValueError(f"token={token!r}: expected 'random' or 'eos'")
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def max_length_batch(config, seed: int = 0, batch_size: int = 1):
    """Full rows of length max_position_embeddings (one proves every position past the other cases)."""
    n = config.max_position_embeddings
    return padded_batch(config, seed, batch_size, n, lengths=[n] * batch_size, case="max_length")


def qa_batch(config, seed: int = 0, batch_size: int = DEFAULT_BATCH, seq_len: int | None = None):
    """Question/context pairs `<s> q </s></s> c </s>`, right padded; the first row fills seq_len."""
    return _pair_batch(config, seed, batch_size, seq_len, "qa")


def _pair_batch(config, seed: int, batch_size: int, seq_len: int | None, case: str) -> dict[str, np.ndarray]:
    """Text pairs `<s> a </s></s> b </s>` (three `</s>` a row), right padded; the first row fills seq_len."""
    n = _seq_len(config, seq_len)
    if n < 6:
        raise ValueError(f"seq_len={n}: a pair of texts needs at least 6 positions")
    bos, eos = _required(config, "bos_token_id"), _required(config, "eos_token_id")
    rng, ordinary, rows = _rng(seed, case), ordinary_token_ids(config), []
    for i in range(batch_size):
        total = n if i == 0 else int(rng.integers(6, n + 1))
        q_len = int(rng.integers(1, max(2, (total - 4) // 2 + 1)))
        c_len = total - 4 - q_len
        q, c = rng.choice(ordinary, size=q_len).tolist(), rng.choice(ordinary, size=c_len).tolist()
        rows.append([bos] + q + [eos, eos] + c + [eos])
    return _pack(rows, n, _required(config, "pad_token_id"), "right")


def classification_batch(config, seed: int = 0, batch_size: int = DEFAULT_BATCH, seq_len: int | None = None):
    """Sentence pairs as BART classifies them (MNLI): `<s> a </s></s> b </s>`, right padded. Every row holds
    three `</s>`, and the head must read the last (PyTorch needs the same count in every row); the other
    cases' rows hold one."""
    return _pair_batch(config, seed, batch_size, seq_len, "classification")


def _with_decoder_inputs(case: dict, config) -> dict:
    out = dict(case)
    out["decoder_input_ids"] = decoder_inputs(case["input_ids"], config)
    return out


def cases_for_head(config, head: str, seed: int = 0, batch_size: int = DEFAULT_BATCH,
                   seq_len: int | None = None, row_multiple: int = 1) -> dict[str, dict[str, np.ndarray]]:
    """Named input cases for `head`, each a dict of model inputs (int32 arrays).

    Every head: right_padding, left_padding, length_1, max_length, and a row without any attended
    token: `fully_padded_row` (all pad), or for "cls" `fully_masked_row` (a text row, mask all 0), since
    classification needs one `</s>` in every row. "qa" adds `qa_pairs`, "cls" `classification`.
    Seq2seq heads get `decoder_input_ids` = shift_tokens_right(input_ids); the left-padding case also
    gets `decoder_attention_mask` (the start token plus the shifted mask). "causal" gets input_ids and
    attention_mask only. `max_length` has one row (`row_multiple` rows, for a batch split over
    devices): the positions it must prove are the same in every row, and it is the costliest case.
    The other cases have `batch_size` rows.
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r} is not one of {HEADS}")
    n = _seq_len(config, seq_len)
    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size}: the cases need at least 2 rows")
    cases = {
        "right_padding": padded_batch(config, seed, batch_size, n, padding_side="right"),
        "left_padding": padded_batch(config, seed, batch_size, n, padding_side="left"),
    }
    middle = [max(2, n // 2)] * (batch_size - 2)
    if head == "cls":
        masked = padded_batch(config, seed, batch_size, n, lengths=[n, *middle, max(2, n - 1)], case="masked_row")
        masked["attention_mask"][-1] = 0
        cases["fully_masked_row"] = masked
    else:
        cases["fully_padded_row"] = padded_batch(config, seed, batch_size, n, lengths=[n, *middle, 0],
                                                 case="empty_row")
    cases["length_1"] = single_token_batch(config, seed, batch_size, token="eos" if head == "cls" else "random")
    cases["max_length"] = max_length_batch(config, seed, row_multiple)
    if head == "qa":
        cases["qa_pairs"] = qa_batch(config, seed, batch_size, max(n, 6))
    if head == "cls":
        cases["classification"] = (classification_batch(config, seed, batch_size, max(n, 6))
                                   if config.max_position_embeddings >= 6 else   # no room for a pair
                                   padded_batch(config, seed, batch_size, n, case="classification"))
    if head == "causal":
        return cases
    cases = {name: _with_decoder_inputs(c, config) for name, c in cases.items()}
    left = cases["left_padding"]
    left["decoder_attention_mask"] = np.concatenate(
        [np.ones((batch_size, 1), np.int32), left["attention_mask"][:, :-1]], axis=1)
    return cases
