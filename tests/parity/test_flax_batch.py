"""The Flax side's shape buckets: which cases merge, and that a merged run gives each case what its own
run gives (rows, positions, cached steps, greedy ids/scores/steps) within float32 rounding."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from flax_bart import FAST_COMPILE
from flax_bart.modules import ABSENT
from parity import flax_batch
from parity.demo import demo_config
from parity.harness import flax_model
from parity.inputs import cases_for_head
from parity.runners import FlaxRunner

CFG = demo_config(True)   # max_position_embeddings 40
STEPS = 2


def _names(buckets):
    return [sorted(m[0] for m in b.members) for b in buckets]


def test_plan_pads_every_case_into_the_nearest_bucket():
    cases = cases_for_head(CFG, "lm", seed=0, batch_size=3, seq_len=12)
    buckets = flax_batch.plan("lm", cases)
    # max_length (40 positions) takes the 12-long cases (40 <= 64 = max(4 x 12, 64)), fully_padded_row
    # too: its padding is absent, so its row still attends uniformly over its own 12 positions only.
    assert _names(buckets) == [["fully_padded_row", "left_padding", "length_1", "max_length", "right_padding"]]
    assert [(b.enc_len, b.dec_len) for b in buckets] == [(40, 40)]
    rows = {m[0]: (m[1], m[2]) for m in buckets[0].members}
    assert sorted(rows.values()) == [(0, 1), (1, 4), (4, 7), (7, 10), (10, 13)]


def test_classification_cases_of_another_eos_count_never_share_a_batch():
    """The cls head needs one `</s>` count in every row: the sentence pairs (three) run apart."""
    cases = cases_for_head(CFG, "cls", seed=0, batch_size=3, seq_len=12)
    buckets = flax_batch.plan("cls", cases, eos_token_id=CFG.eos_token_id)
    assert _names(buckets) == [["fully_masked_row", "left_padding", "length_1", "max_length", "right_padding"],
                               ["classification"]]
    assert [b.eos_count for b in buckets] == [1, 3]
    assert len(flax_batch.plan("qa", cases_for_head(CFG, "qa", 0, 3, 12), eos_token_id=CFG.eos_token_id)) == 1


def test_plan_without_padding_merges_equal_lengths_only():
    cases = cases_for_head(CFG, "causal", seed=0, batch_size=2, seq_len=12)
    assert _names(flax_batch.plan("causal", cases, pad=False)) == [
        ["max_length"], ["fully_padded_row", "left_padding", "right_padding"], ["length_1"]]


def test_padding_is_bounded_by_the_cases_own_length():
    short = cases_for_head(CFG, "qa", seed=0, batch_size=2, seq_len=12)
    cases = {"length_1": short["length_1"], "long": cases_for_head(CFG, "qa", 0, 2, 40)["right_padding"]}
    cases["long"]["input_ids"] = np.tile(cases["long"]["input_ids"], (1, 2))[:, :80]   # past 64 = max(4 x 1, 64)
    cases["long"]["attention_mask"] = np.ones_like(cases["long"]["input_ids"])
    cases["long"]["decoder_input_ids"] = cases["long"]["input_ids"].copy()
    assert len(flax_batch.plan("qa", cases)) == 2


def test_merge_pads_on_the_right_with_absent_positions_and_spells_out_decoder_masks():
    cases = cases_for_head(CFG, "lm", seed=0, batch_size=3, seq_len=12)
    bucket = flax_batch.plan("lm", cases)[0]
    merged = flax_batch.merge("lm", cases, bucket, CFG.pad_token_id)
    first, end = next((m[1], m[2]) for m in bucket.members if m[0] == "length_1")
    assert merged["input_ids"].shape == (13, 40)
    np.testing.assert_array_equal(merged["attention_mask"][first:end, 1:], ABSENT)
    np.testing.assert_array_equal(merged["input_ids"][first:end, 1:], CFG.pad_token_id)
    np.testing.assert_array_equal(merged["decoder_attention_mask"][first:end], [[1] + [ABSENT] * 39] * 3)
    first, end = next((m[1], m[2]) for m in bucket.members if m[0] == "fully_padded_row")
    np.testing.assert_array_equal(merged["attention_mask"][first:end, :12], cases["fully_padded_row"]["attention_mask"])
    np.testing.assert_array_equal(merged["attention_mask"][first:end, 12:], ABSENT)
    first, end = next((m[1], m[2]) for m in bucket.members if m[0] == "left_padding")
    np.testing.assert_array_equal(merged["decoder_attention_mask"][first:end, :12],
                                  cases["left_padding"]["decoder_attention_mask"])


def test_greedy_steps_run_stops_when_every_row_has_emitted_eos():
    eos = CFG.eos_token_id
    ids = np.array([[2, 5, eos, 1, 1], [2, 5, 6, eos, 1]])
    assert flax_batch.greedy_steps_run("lm", ids, 1, 4, CFG) == 3
    assert flax_batch.greedy_steps_run("lm", ids[:1], 1, 4, CFG) == 2
    assert flax_batch.greedy_steps_run("lm", np.array([[2, 5, 6, 7, 8]]), 1, 4, CFG) == 4


def _params(head):
    from flax_bart.models import MODEL_CLASSES

    return MODEL_CLASSES[head](CFG, seed=3).params


def _max_diff(a, b):
    if isinstance(a, (tuple, list)):
        return max((_max_diff(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return max((_max_diff(a[k], b[k]) for k in a), default=0.0)
    if a is None or isinstance(a, int):
        assert a == b
        return 0.0
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))   # -inf where a token is forced
    both = np.isfinite(a)
    return float(np.abs(a[both] - b[both]).max()) if both.any() else 0.0


def test_cut_forward_knows_each_outputs_sequence_axes():
    case = {"input_ids": np.zeros((2, 3), np.int32), "decoder_input_ids": np.zeros((2, 3), np.int32)}
    out = {"logits": np.zeros((5, 4)), "encoder_attentions": (np.zeros((5, 2, 7, 7)),),
           "cross_attentions": (np.zeros((5, 2, 7, 7)),), "start_logits": np.zeros((5, 7))}
    cut = flax_batch.cut_forward("cls", out, case, slice(1, 3))
    assert cut["logits"].shape == (2, 4)                       # labels, not positions
    assert cut["encoder_attentions"][0].shape == (2, 2, 3, 3)
    assert cut["cross_attentions"][0].shape == (2, 2, 3, 3)
    assert cut["start_logits"].shape == (2, 3)
    assert flax_batch.cut_forward("lm", {"logits": np.zeros((5, 7, 4))}, case, slice(0, 2))["logits"].shape == (2, 3, 4)


@pytest.mark.parametrize("head", ["lm", "causal"])
def test_merged_run_gives_each_case_what_its_own_run_gives(head):
    cases = cases_for_head(CFG, head, seed=0, batch_size=2, seq_len=12)
    runner = FlaxRunner(flax_model(CFG, head, "float32"), _params(head), head, CFG)
    with jax.default_matmul_precision("highest"):
        merged, layout = flax_batch.run_buckets(runner, head, cases, STEPS)
        # The cases the merge changes: padded (length_1; fully_padded_row, whose row attends to nothing)
        # and given a spelled-out decoder mask (left_padding).
        for name in ("length_1", "fully_padded_row", "left_padding"):
            case = cases[name]
            fwd, enc = runner.forward(case)
            own = {"forward": fwd}
            if head in ("lm", "causal"):
                own["steps"] = runner.cached_steps(case, enc, STEPS)
                if "greedy" in merged[name]:
                    g = runner.greedy(case, enc, STEPS)
                    own.update(greedy=g["ids"], greedy_scores=g["scores"], greedy_steps=g["steps"])
            assert merged[name].keys() == own.keys(), name
            assert _max_diff(merged[name], own) < 1e-5, name
    assert sum(len(b) for b in layout["forward"]) == len(cases)


def test_the_report_names_which_cases_shared_a_program():
    from parity.harness import describe_buckets

    text = describe_buckets({"lm": {"forward": [["max_length"], ["right_padding", "length_1"]]},
                             "causal": {"forward": [["a", "b"]], "greedy": [["a"], ["b"]]}})
    assert text == "lm: max_length | right_padding+length_1; causal: a+b; greedy a | b"
    assert describe_buckets({}) == "none"
    marked = describe_buckets({"qa": {"forward": [["max_length"], ["a", "b"]], "compile": ["optimized", "fast"]}})
    assert marked == "qa: max_length | a+b [fast compile]"


def test_fast_compile_policy_weighs_the_work_of_a_forward_pass():
    from parity.options import COMPILE_BOUND_FLOPS, FAST_BELOW_FLOPS, MIN_TOKENS, compile_bound, fast_compile

    assert fast_compile("fast", 10**12, 10**6) and not fast_compile("optimized", 1, 1)
    base, large, tiny = 140_000_000, 406_000_000, 30_000
    # BART-base: the gate's ordinary buckets (one-token greedy prompts, 12 x 12 rows, the demo's 6 x 64
    # tokens) compile fast; its max_length buckets (1 x 1024 encoder + 1024 decoder, causal 1 x 1024) do not
    assert all(fast_compile("auto", base, t) for t in (1, 3, 12 * 12, 15 * 24, 6 * 64))
    assert not any(fast_compile("auto", base, t) for t in (1024, 2048))
    assert not fast_compile("auto", large, 15 * 24)            # BART-large's ordinary bucket: optimised
    assert fast_compile("auto", tiny, 15 * 128) and fast_compile("auto", tiny, 2048)
    assert fast_compile("auto", 1, int(FAST_BELOW_FLOPS / 2) - 1) and not fast_compile("auto", 1, int(FAST_BELOW_FLOPS / 2))
    assert fast_compile("auto", int(FAST_BELOW_FLOPS / 2 / MIN_TOKENS) - 1, 1)
    assert not fast_compile("auto", int(FAST_BELOW_FLOPS / 2 / MIN_TOKENS) + 1, 1)   # MIN_TOKENS, not 1 token
    # running Flax dtypes side by side keeps its own, lower bar: BART-base is not compile-bound
    assert compile_bound(tiny) and not compile_bound(base)
    assert compile_bound(int(COMPILE_BOUND_FLOPS / 2 / MIN_TOKENS) - 1)
    assert not compile_bound(int(COMPILE_BOUND_FLOPS / 2 / MIN_TOKENS) + 1)


def test_auto_compile_mode_picks_a_model_per_bucket():
    cases = cases_for_head(CFG, "qa", seed=0, batch_size=2, seq_len=12)
    slow, fast = flax_model(CFG, "qa", "float32"), flax_model(CFG, "qa", "float32", fast_compile=True)
    assert slow.compiler_options is None and fast.compiler_options == FAST_COMPILE
    runner = FlaxRunner(slow, _params("qa"), "qa", CFG, fast_model=fast, compile_mode="auto")
    merged = flax_batch.merge("qa", cases, flax_batch.plan("qa", cases)[0], CFG.pad_token_id)
    picked, mode = runner.for_bucket(merged)
    assert mode == "fast" and picked.model is fast and picked.params is runner.params   # a tiny model: fast
    _, layout = flax_batch.run_buckets(runner, "qa", cases, 0)
    assert layout["compile"] == ["fast"] * len(layout["forward"])
    for mode in ("fast", "optimized"):   # a fixed mode keeps the runner's own model
        fixed = FlaxRunner(slow, runner.params, "qa", CFG, compile_mode=mode)
        assert fixed.for_bucket(merged) == (fixed, mode)
    alone = FlaxRunner(slow, runner.params, "qa", CFG, compile_mode="auto")   # no fast copy to switch to
    assert alone.for_bucket(merged) == (alone, "optimized")


def test_a_list_of_eos_ids_counts_every_one_of_them():
    cases = cases_for_head(CFG, "cls", seed=0, batch_size=3, seq_len=12)
    by_list = flax_batch.plan("cls", cases, eos_token_id=[CFG.eos_token_id, 7])   # 7: an id the rows never hold
    assert _names(by_list) == _names(flax_batch.plan("cls", cases, eos_token_id=CFG.eos_token_id))
