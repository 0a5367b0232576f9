"""Answer-span extraction on hand-made logits, and answer_question end to end with fake models."""

import itertools
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from flax_bart.qa import answer_question, best_spans, best_window_spans
from flax_bart.tokenizer import BartTokenizer
from tests.tokenizer_utils import write_bart_tokenizer

# window layout used by the hand-made logits: <s> q q </s> </s> c c c c c c </s> <pad> <pad>
CONTEXT = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0], dtype=bool)


def brute_force(start, end, mask, max_answer_len):
    """All valid spans scored straight from the definition, best first."""
    ps = np.where(mask, np.exp(start - start[mask].max()), 0.0)
    pe = np.where(mask, np.exp(end - end[mask].max()), 0.0)
    ps, pe = ps / ps.sum(), pe / pe.sum()
    spans = [(s, e, ps[s] * pe[e]) for s, e in itertools.product(np.flatnonzero(mask), repeat=2)
             if s <= e < s + max_answer_len]
    return sorted(spans, key=lambda c: (-c[2], c[0], c[1]))


def logits(peaks, size=14):
    out = np.zeros(size)
    for pos, value in peaks.items():
        out[pos] = value
    return out


def test_known_span_and_exact_score():
    start, end = logits({6: 8.0}), logits({8: 9.0})
    [(s, e, score)] = best_spans(start, end, CONTEXT)
    assert (s, e) == (6, 8)
    p_start = np.exp(8.0) / (np.exp(8.0) + 5)  # six context tokens, five with logit 0
    p_end = np.exp(9.0) / (np.exp(9.0) + 5)
    assert score == pytest.approx(p_start * p_end, rel=1e-12)


def test_question_special_and_padding_positions_are_never_chosen():
    # the largest logits sit on the question, a separator and padding; the answer must stay in the context
    start = logits({1: 50.0, 4: 40.0, 7: 3.0})
    end = logits({12: 60.0, 11: 45.0, 2: 30.0, 9: 2.0})
    spans = best_spans(start, end, CONTEXT, top_k=50)
    assert spans[0][:2] == (7, 9)
    assert all(CONTEXT[s] and CONTEXT[e] for s, e, _ in spans)
    assert len(spans) == 21  # every span inside the 6 context tokens: 6 * 7 / 2


def test_end_before_start_is_invalid():
    start, end = logits({9: 10.0}), logits({6: 10.0})
    (s, e, score), = best_spans(start, end, CONTEXT)
    assert s <= e
    assert (s, e, score) == pytest.approx(brute_force(start, end, CONTEXT, 15)[0])


def test_max_answer_len():
    start, end = logits({5: 10.0, 8: 1.0}), logits({10: 10.0, 7: 1.0})
    assert best_spans(start, end, CONTEXT)[0][:2] == (5, 10)
    for limit in (1, 3, 4):
        spans = best_spans(start, end, CONTEXT, max_answer_len=limit, top_k=100)
        assert all(e - s + 1 <= limit for s, e, _ in spans)
        assert [(s, e) for s, e, _ in spans] == [(s, e) for s, e, _ in brute_force(start, end, CONTEXT, limit)]


@pytest.mark.parametrize("seed", range(5))
def test_top_k_matches_brute_force_on_random_logits(seed):
    rng = np.random.default_rng(seed)
    mask = rng.random(20) < 0.6
    mask[3] = True
    start, end = rng.normal(size=20) * 3, rng.normal(size=20) * 3
    got = best_spans(start, end, mask, max_answer_len=4, top_k=7)
    want = brute_force(start, end, mask, 4)[:7]
    assert [(s, e) for s, e, _ in got] == [(s, e) for s, e, _ in want]
    np.testing.assert_allclose([c[2] for c in got], [c[2] for c in want], rtol=1e-12)
    assert all(a[2] >= b[2] for a, b in zip(got, got[1:]))


def test_best_answer_in_second_window():
    starts, ends = np.zeros((3, 14)), np.zeros((3, 14))
    starts[0, 6], ends[0, 7] = 3.0, 3.0  # a weak candidate in window 0
    starts[1, 8], ends[1, 9] = 9.0, 9.0  # the strong one in window 1
    starts[2, 2], ends[2, 3] = 99.0, 99.0  # huge, but on the question of window 2
    mask = np.stack([CONTEXT] * 3)
    (w, s, e, score), second = best_window_spans(starts, ends, mask, top_k=2)
    assert (w, s, e) == (1, 8, 9) and second[0] in (0, 2) and second[3] < score
    assert score == pytest.approx(best_spans(starts[1], ends[1], CONTEXT)[0][2])


def test_bad_span_arguments():
    start = logits({})
    with pytest.raises(ValueError, match="end_logits"):
        best_spans(start, start[:5], CONTEXT)
    with pytest.raises(ValueError, match="context_mask"):
        best_spans(start, start, CONTEXT[:5])
    with pytest.raises(ValueError, match="max_answer_len"):
        best_spans(start, start, CONTEXT, max_answer_len=0)
    with pytest.raises(ValueError, match="top_k"):
        best_spans(start, start, CONTEXT, top_k=0)
    with pytest.raises(ValueError, match=r"start_logits is not finite at context positions \[6\]"):
        best_spans(logits({6: np.nan}), start, CONTEXT)
    with pytest.raises(ValueError, match="window 1: end_logits"):
        best_window_spans(np.zeros((2, 14)), np.stack([start, logits({7: np.inf})]), np.stack([CONTEXT] * 2))
    assert best_spans(logits({1: np.nan}), start, CONTEXT)  # non-finite outside the context is ignored
    assert best_spans(start, start, np.zeros(14, bool)) == []


# ------------------------------------------------------------------ answer_question end to end

@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return BartTokenizer.from_pretrained(write_bart_tokenizer(tmp_path_factory.mktemp("qa_tok")))


class PointingModel:
    """Fake QA model: logits peak on the first and last tokens of `target` wherever it occurs in a row."""

    def __init__(self, tok, target, peak=10.0, decoy=None, decoy_peak=5.0, as_jax=False):
        self.patterns = [(tok.encode(" " + target, add_special_tokens=False), peak)]
        if decoy:
            self.patterns.append((tok.encode(" " + decoy, add_special_tokens=False), decoy_peak))
        self.as_jax, self.calls = as_jax, []

    def __call__(self, input_ids, attention_mask):
        ids = np.asarray(input_ids)
        self.calls.append((ids.copy(), np.asarray(attention_mask).copy()))
        start, end = np.zeros(ids.shape, np.float32), np.zeros(ids.shape, np.float32)
        for row, seq in enumerate(ids.tolist()):
            for pattern, peak in self.patterns:
                for i in range(len(seq) - len(pattern) + 1):
                    if seq[i:i + len(pattern)] == pattern:
                        start[row, i], end[row, i + len(pattern) - 1] = peak, peak
        wrap = jnp.asarray if self.as_jax else np.asarray
        return SimpleNamespace(start_logits=wrap(start), end_logits=wrap(end))


FILLER = "The quick brown fox jumps over the lazy dog. "


def test_short_context_answer_is_exact_substring(tok):
    context = "Paris is the capital and most populous city of France, on the Seine."
    model = PointingModel(tok, "most populous city", as_jax=True)
    out = answer_question(model, tok, "What is Paris?", context)
    assert out["answer"] == "most populous city" == context[out["start"]:out["end"]]
    assert out["start"] == context.index("most populous city")
    assert 0.0 < out["score"] <= 1.0 and len(model.calls) == 1 and model.calls[0][0].shape[0] == 1


def test_long_context_windows_best_span_in_later_window(tok):
    question = "Where did the Zanzibar fleet go?"
    context = FILLER * 3 + "A decoy sentence mentions Mombasa once. " + FILLER * 6 + \
        "The fleet sailed to Zanzibar in 1890. " + FILLER * 2
    model = PointingModel(tok, "Zanzibar", decoy="Mombasa")
    out = answer_question(model, tok, question, context, max_length=64, stride=16)
    assert out["answer"] == "Zanzibar" and context[out["start"]:out["end"]] == "Zanzibar"
    assert out["start"] == context.rindex("Zanzibar")  # the context's, not the question's occurrence
    ids_WxT, mask_WxT = model.calls[0]
    assert ids_WxT.shape[0] >= 4 and ids_WxT.shape[1] == 64
    q = [tok.bos_token_id, *tok.encode(question, add_special_tokens=False), tok.eos_token_id, tok.eos_token_id]
    assert all(row[:len(q)].tolist() == q for row in ids_WxT)  # the question is repeated in every window
    # the windows overlap: the last `stride` context tokens of a window open the next one
    enc = tok(question, context, truncation="only_second", max_length=64, stride=16, return_overflowing_tokens=True)
    first = [t for t, sid in zip(enc["input_ids"][0], enc.sequence_ids(0)) if sid == 1]
    second = [t for t, sid in zip(enc["input_ids"][1], enc.sequence_ids(1)) if sid == 1]
    assert first[-16:] == second[:16]
    top = answer_question(model, tok, question, context, max_length=64, stride=16, top_k=2)
    assert [a["answer"] for a in top] == ["Zanzibar", "Mombasa"] and top[0]["score"] > top[1]["score"]
    assert answer_question(model, tok, question, context, max_length=64, stride=16, batch_size=3) == out
    assert len(model.calls) == 2 + -(-ids_WxT.shape[0] // 3)


def test_answer_in_overlap_is_listed_once(tok):
    context = FILLER * 2 + "Her cat is called Biscuit and it sleeps. " + FILLER * 2
    model = PointingModel(tok, "Biscuit")
    answers = answer_question(model, tok, "Cat name?", context, max_length=40, stride=20, top_k=3)
    assert answers[0]["answer"] == "Biscuit"
    windows = model.calls[0][0]
    pattern = tok.encode(" Biscuit", add_special_tokens=False)
    hits = sum(any(row[i:i + len(pattern)].tolist() == pattern for i in range(len(row))) for row in windows)
    assert hits >= 2  # the answer sits in the overlap of two windows ...
    spans = [(a["start"], a["end"]) for a in answers]
    assert len(set(spans)) == len(spans) == 3  # ... and is reported once
    assert all(a["answer"] == context[a["start"]:a["end"]] for a in answers)


def test_unicode_context_character_offsets(tok):
    context = "Café 東京 🙂 — the résumé says naïve Zoë won."
    out = answer_question(PointingModel(tok, "Zoë"), tok, "Who won?", context)
    assert out["answer"] == "Zoë" and (out["start"], out["end"]) == (context.index("Zoë"), context.index("Zoë") + 3)


def test_answer_question_errors(tok):
    model = PointingModel(tok, "x")
    for q, c, name in (("", "ctx", "question"), ("  \n", "ctx", "question"), ("q?", "", "context"), ("q?", " ", "context")):
        with pytest.raises(ValueError, match=name):
            answer_question(model, tok, q, c)
    with pytest.raises(TypeError, match="context"):
        answer_question(model, tok, "q?", None)
    long_question = "why " * 50
    with pytest.raises(ValueError, match="no room for the context within max_length=32"):
        answer_question(model, tok, long_question, "ctx", max_length=32)
    with pytest.raises(ValueError, match="stride=35 must be smaller"):
        answer_question(model, tok, "q?", FILLER * 5, max_length=40, stride=35)
    bad = lambda input_ids, attention_mask: SimpleNamespace(start_logits=np.zeros((1, 3)), end_logits=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="start_logits has shape"):
        answer_question(bad, tok, "q?", FILLER)


@pytest.mark.slow
def test_with_a_tiny_random_bart_qa_model(tok):
    from flax_bart.config import BartConfig
    from flax_bart.models import FlaxBartForQuestionAnswering

    config = BartConfig(vocab_size=len(tok), d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, max_position_embeddings=64)
    model = FlaxBartForQuestionAnswering(config, seed=0)
    context = FILLER * 4 + "The fleet sailed to Zanzibar in 1890."
    out = answer_question(model, tok, "Where?", context, max_length=48, stride=16, max_answer_len=5)
    assert out["answer"] == context[out["start"]:out["end"]] and 0.0 < out["score"] <= 1.0
    windows = tok("Where?", context, truncation="only_second", max_length=48, stride=16,
                  return_overflowing_tokens=True)["input_ids"]
    assert len(windows) >= 2
