"""The deterministic input generators: same seed same arrays, and the structure each case promises."""

from __future__ import annotations

import numpy as np
import pytest

from flax_bart.config import BartConfig
from parity import inputs

HEADS = ("base", "lm", "cls", "qa", "causal")
CONFIG = BartConfig(vocab_size=40, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=20,
                    forced_bos_token_id=5)
BOS, EOS, PAD, START = 0, 2, 1, 2


def ordinary(ids) -> bool:
    return not np.isin(ids, inputs.special_token_ids(CONFIG)).any()


def check_text_rows(ids, mask, side):
    """Each row: padding on `side`, tokens `<s> t.. </s>` (or `</s>` alone), pad exactly where mask is 0."""
    for row, m in zip(ids, mask):
        n = int(m.sum())
        expect = np.r_[np.ones(n), np.zeros(len(m) - n)] if side == "right" else np.r_[np.zeros(len(m) - n), np.ones(n)]
        assert np.array_equal(m, expect)
        assert (row[m == 0] == PAD).all()
        tokens = row[m == 1]
        if n >= 2:
            assert tokens[0] == BOS and tokens[-1] == EOS and ordinary(tokens[1:-1])
        elif n == 1:
            assert tokens[0] == EOS


@pytest.mark.parametrize("head", HEADS)
def test_cases_are_deterministic_int32_and_seed_dependent(head):
    a = inputs.cases_for_head(CONFIG, head, seed=3)
    b = inputs.cases_for_head(CONFIG, head, seed=3)
    c = inputs.cases_for_head(CONFIG, head, seed=4)
    assert list(a) == list(b)
    for name in a:
        assert list(a[name]) == list(b[name])
        for key, arr in a[name].items():
            assert arr.dtype == np.int32 and np.array_equal(arr, b[name][key]), (name, key)
    assert not np.array_equal(a["right_padding"]["input_ids"], c["right_padding"]["input_ids"])


@pytest.mark.parametrize("head", HEADS)
def test_case_structure(head):
    cases = inputs.cases_for_head(CONFIG, head, seed=0, batch_size=4, seq_len=10)
    expected = {"right_padding", "left_padding", "length_1", "max_length",
                "fully_masked_row" if head == "cls" else "fully_padded_row"}
    expected |= {"qa": {"qa_pairs"}, "cls": {"classification"}}.get(head, set())
    assert set(cases) == expected
    right, left = cases["right_padding"], cases["left_padding"]
    assert right["input_ids"].shape == left["input_ids"].shape == (4, 10)
    check_text_rows(right["input_ids"], right["attention_mask"], "right")
    check_text_rows(left["input_ids"], left["attention_mask"], "left")
    assert right["attention_mask"][0].all() and not right["attention_mask"].all()
    assert left["attention_mask"][0].all() and not left["attention_mask"].all()
    assert cases["length_1"]["input_ids"].shape == (4, 1)
    assert cases["max_length"]["input_ids"].shape == (1, CONFIG.max_position_embeddings)  # one row proves it
    assert cases["max_length"]["attention_mask"].all()
    if head == "cls":
        masked = cases["fully_masked_row"]
        assert not masked["attention_mask"][-1].any() and masked["attention_mask"][:-1].any(axis=1).all()
        assert (cases["length_1"]["input_ids"] == EOS).all()
        for name, case in cases.items():  # the same <eos> count in every row (one; three for sentence pairs),
            ids = case["input_ids"]         # the last at the last non-pad position
            assert ((ids == EOS).sum(axis=1) == (3 if name == "classification" else 1)).all()
            last = np.array([np.nonzero(r != PAD)[0].max() for r in ids])
            assert (ids[np.arange(len(ids)), last] == EOS).all()
        pairs = cases["classification"]["input_ids"]   # <s> a </s></s> b </s>: the last </s> is the one read
        first = (pairs == EOS).argmax(axis=1)
        assert (pairs[np.arange(len(pairs)), first + 1] == EOS).all() and (first >= 2).all()
    else:
        empty = cases["fully_padded_row"]
        assert (empty["input_ids"][-1] == PAD).all() and not empty["attention_mask"][-1].any()
        assert empty["attention_mask"][:-1].any(axis=1).all()
        assert ordinary(cases["length_1"]["input_ids"])
    for name, case in cases.items():
        if head == "causal":
            assert set(case) == {"input_ids", "attention_mask"}
            continue
        assert np.array_equal(case["decoder_input_ids"],
                              inputs.shift_tokens_right(case["input_ids"], PAD, START)), name
        if name == "left_padding":
            dam = case["decoder_attention_mask"]
            assert (dam[:, 0] == 1).all() and np.array_equal(dam[:, 1:], case["attention_mask"][:, :-1])
        else:
            assert "decoder_attention_mask" not in case


def test_qa_pairs_follow_bart_pair_format():
    case = inputs.qa_batch(CONFIG, seed=7, batch_size=5, seq_len=14)
    ids, mask = case["input_ids"], case["attention_mask"]
    assert mask[0].all()
    for row, m in zip(ids, mask):
        n = int(m.sum())
        assert (row[n:] == PAD).all() and m[:n].all() and n >= 6
        tokens = row[:n]
        eos_at = np.nonzero(tokens == EOS)[0]
        assert tokens[0] == BOS and len(eos_at) == 3 and eos_at[2] == n - 1 and eos_at[1] == eos_at[0] + 1
        question, context = tokens[1:eos_at[0]], tokens[eos_at[1] + 1:n - 1]
        assert len(question) >= 1 and len(context) >= 1
        assert ordinary(question) and ordinary(context)


def test_shift_tokens_right_matches_transformers():
    torch = pytest.importorskip("torch")
    bart = pytest.importorskip("transformers.models.bart.modeling_bart")
    labels = np.array([[0, 7, 8, 2, -100], [0, 9, -100, -100, -100]], np.int32)
    ours = inputs.shift_tokens_right(labels, PAD, START)
    theirs = bart.shift_tokens_right(torch.as_tensor(labels).long(), PAD, START).numpy()
    assert ours.dtype == np.int32 and np.array_equal(ours, theirs)
    assert np.array_equal(ours, [[2, 0, 7, 8, 2], [2, 0, 9, 1, 1]])


def test_explicit_lengths_and_errors():
    batch = inputs.padded_batch(CONFIG, seed=1, lengths=[5, 1, 0, 2], seq_len=6)
    assert batch["attention_mask"].sum(axis=1).tolist() == [5, 1, 0, 2]
    assert batch["input_ids"][1, 0] == EOS and batch["input_ids"][3, :2].tolist() == [BOS, EOS]
    assert inputs.special_token_ids(CONFIG) == (0, 1, 2, 5)
    with pytest.raises(ValueError, match="seq_len=21 must lie in"):
        inputs.cases_for_head(CONFIG, "qa", seq_len=21)
    with pytest.raises(ValueError, match="lengths=.* must lie in"):
        inputs.padded_batch(CONFIG, lengths=[7], seq_len=6)
    with pytest.raises(ValueError, match="pad_token_id"):
        inputs.shift_tokens_right(np.zeros((1, 2)), None, 2)
    with pytest.raises(ValueError, match="config.pad_token_id is None"):
        inputs.padded_batch(CONFIG.replace(pad_token_id=None))
    with pytest.raises(ValueError, match="at least 6 positions"):
        inputs.qa_batch(CONFIG, seq_len=5)
    with pytest.raises(ValueError, match="head='x'"):
        inputs.cases_for_head(CONFIG, "x")


@pytest.mark.parametrize("head", HEADS)
def test_every_case_runs_through_the_reference(head):
    torch = pytest.importorskip("torch")
    from parity.reference import build_reference

    ref = build_reference(CONFIG, head, seed=0)
    for name, case in inputs.cases_for_head(CONFIG, head, seed=0).items():
        out = ref.forward(**case)
        main = out["start_logits"] if head == "qa" else out.get("logits", out.get("last_hidden_state"))
        assert main.shape[0] == case["input_ids"].shape[0] and torch.isfinite(main).all(), name


def test_a_config_too_short_for_a_pair_keeps_single_eos_classification_rows():
    import dataclasses

    short = dataclasses.replace(CONFIG, max_position_embeddings=5)
    cases = inputs.cases_for_head(short, "cls", seed=0, batch_size=3, seq_len=5)
    assert ((cases["classification"]["input_ids"] == EOS).sum(axis=1) == 1).all()
    assert cases["classification"]["input_ids"].shape == (3, 5)
