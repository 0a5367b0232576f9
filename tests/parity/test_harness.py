"""The parity harness on tiny checkpoints: passes on a correct conversion, fails and names the layer
when the Flax weights are perturbed, judges fp16/bf16 against a float64 gold run, reports NaN.

The checkpoints use the `flax-bart demo --quick` config, so that the Flax models compiled here are
reused by the demo test (the harness caches models per config, head and dtype).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bart_helpers import torch_model
from parity.checkpoint import ParityInputError, open_checkpoint
from parity.collect import case_masks, forward_specs
from parity.demo import QUICK_SHAPE, demo_config
from parity.harness import Options, flax_model, run_parity
from parity.report import load_report, write_reports
from parity.tolerance import LOW_PRECISION

# The demo's quick config, as a transformers checkpoint (the unlisted fields are both defaults).
OVERRIDES = {k: v for k, v in QUICK_SHAPE.items()}
SMALL = dict(batch_size=2, seq_len=12, steps=2)
ALL_DTYPES = ("float32", "bfloat16", "float16")


def save_checkpoint(directory, head="lm", seed=0):
    torch_model(head, seed=seed, **OVERRIDES).save_pretrained(directory)
    return directory


def save_flax_next_to_it(directory, head="lm", scale=None):
    """Convert the PyTorch weights in `directory` and save the Flax params there too (optionally perturbed)."""
    from convert import load_flax_params, save_flax_params

    ckpt = open_checkpoint(directory)
    params, _ = load_flax_params(directory, ckpt.config, head)
    if scale is not None:
        path, factor = scale
        node = params
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = (np.asarray(node[path[-1]], np.float64) * factor).astype(np.float32)
    save_flax_params(params, directory)


FC1_DECODER_2 = ("model", "decoder", "layers", "2", "fc1", "kernel")


@pytest.fixture(scope="module")
def correct(tmp_path_factory):
    """One run over qa and lm in every dtype on a PyTorch-only checkpoint (converted on the fly)."""
    path = save_checkpoint(tmp_path_factory.mktemp("lm_pt"))
    opts = Options(heads=("qa", "lm"), dtypes=ALL_DTYPES, cases=("right_padding", "fully_padded_row", "qa_pairs"),
                   **SMALL)
    return run_parity(path, opts=opts)


def test_config_matches_the_quick_demo(tmp_path):
    ckpt = open_checkpoint(save_checkpoint(tmp_path))
    assert flax_model(ckpt.config, "qa", "float32") is flax_model(demo_config(quick=True), "qa", "float32")


def test_correct_conversion_passes_every_column(correct):
    report = correct.report
    assert report.passed, report.first_failures()
    assert [c.key for c in report.columns] == [f"{d}/cpu/cpu" for d in ALL_DTYPES]
    assert correct.checkpoint.flax_path is None  # PyTorch weights only: converted on the fly
    assert "converted on the fly" in report.environment.extra["flax_weights"]
    assert report.environment.matmul_precision == "highest"
    assert report.checkpoint_hash.startswith("sha256:") and report.config_hash.startswith("sha256:")
    for col in report.columns:
        assert col.groups() == ["embeddings", "encoder", "decoder", "heads", "cached_decoding", "generate"]
        names = [r.name for r in col.results]
        assert len(names) == len(set(names))
        assert names.index("lm/right_padding/greedy_ids") > names.index("lm/right_padding/cached_steps.logits")
        assert any(n.endswith("flax_cached_vs_uncached") for n in names)
        assert any(n.endswith("torch_cached_vs_uncached") for n in names)
    assert any("qa_outputs" in note for note in report.notes)  # the qa head weights were drawn


def test_results_are_in_forward_order_with_layers(correct):
    col = correct.report.column("float32")
    qa = [r for r in col.results if r.name.startswith("qa/right_padding/")]
    assert [r.name.split("/")[-1] for r in qa[:5]] == [
        "encoder_hidden_states[0]", "encoder_attentions[0]", "encoder_hidden_states[1]",
        "encoder_last_hidden_state", "decoder_hidden_states[0]"]
    by_name = {r.name.split("/")[-1]: r for r in qa}
    assert (by_name["encoder_hidden_states[0]"].group, by_name["encoder_hidden_states[0]"].layer) == ("embeddings", None)
    assert (by_name["decoder_hidden_states[3]"].group, by_name["decoder_hidden_states[3]"].layer) == ("decoder", 2)
    assert (by_name["cross_attentions[1]"].group, by_name["cross_attentions[1]"].layer) == ("decoder", 1)
    assert [r.name.split("/")[-1] for r in qa[-2:]] == ["start_logits", "end_logits"]


def test_padded_positions_are_not_compared(correct):
    cfg = correct.checkpoint.config
    case = {"input_ids": np.full((2, 4), 5, np.int32), "attention_mask": np.array([[1, 1, 1, 0], [0, 0, 0, 0]]),
            "decoder_input_ids": np.full((2, 4), 5, np.int32)}
    m = case_masks("qa", case)
    assert m.rows.tolist() == [True, False]
    assert m.dec.tolist() == [[True, True, True, True], [False] * 4]
    specs = {s.name: s for s in forward_specs(cfg, "qa", "", case)}
    assert specs["encoder_attentions[0]"].mask.shape == (2, 1, 4, 4)
    assert not specs["encoder_attentions[0]"].mask[0, 0, 3].any()
    col = correct.report.column("float32")
    r = next(r for r in col.results if r.name == "qa/fully_padded_row/encoder_hidden_states[1]")
    assert r.metrics.count == 12 * cfg.d_model  # only the full first row of the two


def test_low_precision_is_judged_against_the_float64_gold(correct):
    policy = correct.report.policy
    for dtype in LOW_PRECISION:
        col = correct.report.column(dtype)
        floats = [r for r in col.results if r.metrics.kind != "ids"]
        assert floats and all(r.metrics.gold_ratio is not None for r in floats)
        for r in floats:
            m = r.metrics
            bound = policy.k * m.gold_err_ref_max + policy.floor(dtype, m.gold_rms)
            assert r.verdict.passed and m.gold_err_cand_max <= bound, r.name
        ratios = [r.metrics.gold_ratio for r in floats]
        assert np.median(ratios) <= policy.k
        greedy = next(r for r in col.results if r.name == "lm/right_padding/greedy_ids")
        assert greedy.metrics.count >= 2  # the decisive part of the greedy path is compared


def test_fp32_decoding_is_consistent(correct):
    col = correct.report.column("float32")
    for name in ("lm/right_padding/cached_steps.logits", "lm/right_padding/cached_steps.flax_cached_vs_uncached",
                 "lm/right_padding/cached_steps.torch_cached_vs_uncached"):
        r = next(r for r in col.results if r.name == name)
        assert r.verdict.passed and r.metrics.max_rel_err < 1e-5 and r.metrics.argmax_agreement == 1.0
    greedy = next(r for r in col.results if r.name == "lm/right_padding/greedy_ids")
    assert greedy.metrics.mismatches == 0 and greedy.metrics.count == 2 * 3  # start token + 2 new, 2 rows


def test_report_files_validate(correct, tmp_path):
    paths = write_reports(correct.report, tmp_path)
    assert sorted(p.name for p in paths.values()) == ["junit.xml", "report.html", "report.json", "report.md"]
    again = load_report(paths["json"])
    assert again.passed and len(again.columns) == 3


def test_greedy_scores_are_compared_per_step(correct):
    for dtype in ALL_DTYPES:
        col = correct.report.column(dtype)
        names = [r.name for r in col.results]
        assert names.index("lm/right_padding/greedy_scores") == names.index("lm/right_padding/greedy_ids") + 1
        r = col.results[names.index("lm/right_padding/greedy_scores")]
        assert r.group == "generate" and r.metrics.kind == "logits" and r.verdict.passed, (dtype, r.verdict)
        assert r.metrics.count >= 1
    fp32 = next(r for r in correct.report.column("float32").results if r.name == "lm/right_padding/greedy_scores")
    assert fp32.metrics.max_rel_err < 1e-5 and fp32.metrics.argmax_agreement == 1.0


def test_shifted_logits_fail_the_scores_not_the_ids(tmp_path):
    """A constant added to every logit keeps each argmax (same ids) but moves every score: the scores fail."""
    from convert import load_flax_params, save_flax_params

    path = save_checkpoint(tmp_path)
    params, _ = load_flax_params(path, open_checkpoint(path).config, "lm")
    params["final_logits_bias"] = np.asarray(params["final_logits_bias"], np.float32) + np.float32(0.05)
    save_flax_params(params, path)
    out = run_parity(path, opts=Options(heads=("lm",), cases=("right_padding",), **SMALL))
    by_name = {r.name: r for r in out.report.column("float32").results}
    assert by_name["lm/right_padding/greedy_ids"].verdict.passed
    scores = by_name["lm/right_padding/greedy_scores"]
    assert not scores.verdict.passed and scores.metrics.count >= 2
    assert not out.report.passed


def test_perturbed_flax_weights_fail_at_decoder_layer_2(tmp_path):
    path = save_checkpoint(tmp_path)
    save_flax_next_to_it(path, scale=(FC1_DECODER_2, 1.001))
    out = run_parity(path, opts=Options(heads=("qa",), cases=("right_padding",), **SMALL))
    assert out.checkpoint.flax_path == str(path)  # the Flax weights next to the PyTorch ones, as they are
    col = out.report.column("float32")
    first = col.first_failure
    assert (first.group, first.layer, first.name) == ("decoder", 2, "qa/right_padding/decoder_hidden_states[3]")
    assert first.metric == "max_rel_err" and first.value > first.tolerance
    assert all(r.verdict.passed for r in col.results if r.group in ("embeddings", "encoder"))


def test_fp32_outside_rtol_is_judged_against_a_gold_run_started_then(tmp_path):
    """A float32-only matrix runs no float64 gold until rule 4 fails; then the gold judges those tensors
    (as close to exact as PyTorch passes), and a perturbed layer still fails."""
    from parity.tolerance import Policy

    path = save_checkpoint(tmp_path)
    opts = Options(heads=("lm",), cases=("right_padding",), **SMALL)
    plain = run_parity(path, opts=opts)
    assert plain.report.passed and "lm/float64 gold" not in plain.report.timings["steps"]
    tight = Options(heads=("lm",), cases=("right_padding",), policy=Policy(rtol=1e-12), **SMALL)
    out = run_parity(path, opts=tight)
    assert "lm/float64 gold" in out.report.timings["steps"]
    col = out.report.column("float32")
    by_gold = [r for r in col.results if r.verdict.metric == "gold_err_cand_max"]
    assert len(by_gold) > 10 and all(r.verdict.passed for r in by_gold)
    # greedy decoding keeps exact float32 rules (no gold path there): ids equal, scores by rule 4 only
    assert {r.name for r in col.failures} == {"lm/right_padding/greedy_scores"}
    save_flax_next_to_it(path, scale=(FC1_DECODER_2, 1.001))
    first = run_parity(path, opts=tight).report.column("float32").first_failure
    assert (first.group, first.layer) == ("decoder", 2)


def test_only_rows_the_gold_can_judge_start_a_float32_gold_run():
    from parity.harness import _outside_rtol
    from parity.metrics import compare
    from parity.report import Environment, RunReport

    ref = np.array([1.0, -1.0, 1.0, -1.0])
    report = RunReport("t", Environment.collect())
    col = {"dtype": "float32", "flax_device": "cpu", "torch_device": "cpu"}
    report.add(compare("lm/c/greedy_scores", ref, ref + 1e-3, kind="logits"), group="generate", **col)
    assert not report.passed and not _outside_rtol(report, [col], [0])  # float32 greedy: exact rules only
    report.add(compare("lm/c/logits", ref, ref + 1e-3, kind="logits"), group="output", **col)
    assert _outside_rtol(report, [col], [0]) and not _outside_rtol(report, [col], [2])


def test_max_length_case_runs_in_float32_unless_asked(tmp_path):
    """The 1 x max_position_embeddings row is float32's by default; --max-length-dtypes all or --cases
    max_length runs it in every dtype; the report says which."""
    path = save_checkpoint(tmp_path)
    kw = dict(heads=("causal",), dtypes=("float32", "bfloat16"), **SMALL)

    def long_rows(out, dtype):
        return [r.name for r in out.report.column(dtype).results if "/max_length/" in r.name]

    default = run_parity(path, opts=Options(**kw))
    assert default.report.passed and long_rows(default, "float32") and not long_rows(default, "bfloat16")
    assert default.report.environment.extra["max_length_dtypes"] == "float32"
    assert any("max_length case" in n and "not in bfloat16" in n for n in default.report.notes)
    every = run_parity(path, opts=Options(max_length_dtypes=None, **kw))
    assert every.report.passed and long_rows(every, "bfloat16") == long_rows(every, "float32")
    named = run_parity(path, opts=Options(heads=("causal",), dtypes=("bf16",), cases=("max_length",), **SMALL))
    assert long_rows(named, "bfloat16") and named.report.passed


def test_fast_compile_passes_and_still_fails_on_perturbed_weights(tmp_path):
    """--compile-mode fast (XLA's backend optimisation off) changes how programs compile, not the verdicts."""
    path = save_checkpoint(tmp_path)
    opts = Options(heads=("lm",), cases=("right_padding", "length_1"), compile_mode="fast", **SMALL)
    good = run_parity(path, opts=opts)
    assert good.report.passed, good.report.column("float32").first_failure
    assert good.report.environment.extra["xla_compile"].startswith("backend optimisation off")
    assert "[fast compile]" in good.report.environment.extra["flax_buckets"]
    save_flax_next_to_it(path, scale=(FC1_DECODER_2, 1.001))
    bad = run_parity(path, opts=opts)
    first = bad.report.column("float32").first_failure
    assert not bad.report.passed and (first.group, first.layer) == ("decoder", 2)
    with pytest.raises(ParityInputError, match="--compile-mode 'quick'"):
        run_parity(path, opts=Options(heads=("lm",), compile_mode="quick", **SMALL))


def test_fused_attention_passes_and_still_fails_on_perturbed_weights(tmp_path):
    """--attention xla (jax.nn.dot_product_attention, the fused path's wiring on a CPU): the same verdicts."""
    path = save_checkpoint(tmp_path)
    opts = Options(heads=("lm",), cases=("right_padding", "fully_padded_row"), attention="xla", **SMALL)
    good = run_parity(path, opts=opts)
    assert good.report.passed, good.report.column("float32").first_failure
    assert good.report.environment.extra["attention"] == "requested xla; cpu: float32 xla"
    save_flax_next_to_it(path, scale=(FC1_DECODER_2, 1.001))
    bad = run_parity(path, opts=opts)
    first = bad.report.column("float32").first_failure
    assert not bad.report.passed and (first.group, first.layer) == ("decoder", 2)


def test_unrolled_layer_stacks_pass_and_are_recorded(tmp_path):
    """--no-scan-layers: the gate compiles the layers as the models run by default."""
    path = save_checkpoint(tmp_path)
    out = run_parity(path, opts=Options(heads=("lm",), cases=("right_padding",), scan_layers=False, **SMALL))
    assert out.report.passed and out.report.environment.extra["layer_stacks"] == "unrolled"


def test_unperturbed_flax_weights_next_to_pytorch_pass(tmp_path):
    path = save_checkpoint(tmp_path)
    save_flax_next_to_it(path)
    out = run_parity(path, opts=Options(heads=("qa",), cases=("right_padding",), **SMALL))
    assert out.checkpoint.flax_path == str(path) and out.report.passed
    # the hash (made in a worker thread while the weights are read) covers both frameworks' files
    from parity.report import checkpoint_hash

    files = out.checkpoint.hashed_files()
    assert any(f.endswith(".msgpack") or "flax" in f for f in files) and len(files) >= 2
    assert out.report.checkpoint_hash == checkpoint_hash(files)


def test_nan_weights_give_nan_metrics_that_fail(tmp_path):
    model = torch_model("lm", **OVERRIDES)
    with torch.no_grad():
        model.model.encoder.layers[0].fc1.weight[0, 0] = float("nan")
    model.save_pretrained(tmp_path)
    out = run_parity(tmp_path, opts=Options(heads=("qa",), cases=("right_padding",), **SMALL))
    assert out.nan_weights and "model.encoder.layers.0.fc1.weight" in out.nan_weights[0]
    col = out.report.column("float32")
    assert not col.passed
    hit = next(r for r in col.results if r.name == "qa/right_padding/encoder_hidden_states[1]")
    assert math.isnan(hit.metrics.max_rel_err) and not hit.verdict.passed
    downstream = [r for r in col.results if r.group == "heads" or "cross_attentions" in r.name
                  or "encoder_hidden_states[1]" in r.name or "decoder_hidden_states[1]" in r.name]
    assert len(downstream) == 2 + 3 + 2 and not any(r.verdict.passed for r in downstream)
    assert all(math.isnan(r.metrics.max_abs_err) for r in downstream)


def test_causal_head_decodes(tmp_path):
    path = save_checkpoint(tmp_path, head="causal")
    out = run_parity(path, opts=Options(cases=("right_padding",), **SMALL))
    col = out.report.column("float32")
    assert col.passed, col.first_failure
    names = [r.name for r in col.results]
    assert "causal/right_padding/hidden_states[3]" in names and "causal/right_padding/greedy_ids" in names


@pytest.mark.parametrize("opts, words", [
    (Options(dtypes=("float8",)), "unknown dtype"),
    (Options(dtypes=("float64",)), "gold yardstick"),
    (Options(heads=("seq2seq",)), "--heads"),
    (Options(cases=("nope",)), "--cases"),
    (Options(steps=-1), "--steps"),
    (Options(torch_devices=("tpu",)), "--torch-device"),
    (Options(precision="tf32"), "--precision 'tf32': expected one of highest, default"),
])
def test_bad_options_are_input_errors(tmp_path_factory, opts, words):
    path = tmp_path_factory.getbasetemp() / "bad_opts_ckpt"
    if not path.exists():
        save_checkpoint(path)
    with pytest.raises(ParityInputError, match=words):
        run_parity(path, opts=opts)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_columns(tmp_path):
    import jax

    path = save_checkpoint(tmp_path)
    devices = ("cpu", "gpu") if any(d.platform == "gpu" for d in jax.devices()) else ("cpu",)
    out = run_parity(path, opts=Options(heads=("qa",), cases=("right_padding",), flax_devices=devices,
                                        torch_devices=("cpu", "cuda"), **SMALL))
    assert [c.key for c in out.report.columns][-1].endswith("/cuda")
    assert out.report.passed, out.report.first_failures()


def test_transformers_reference_behind_the_same_harness(tmp_path):
    pytest.importorskip("transformers")
    path = save_checkpoint(tmp_path)
    out = run_parity(path, opts=Options(heads=("lm",), dtypes=("float32", "bfloat16"), reference="transformers",
                                        cases=("right_padding",), **SMALL))
    assert out.report.environment.extra["reference"] == "transformers"
    assert out.report.passed, out.report.first_failures()
    assert any(r.name == "lm/right_padding/greedy_ids" for r in out.report.column("bfloat16").results)


@pytest.mark.parametrize("sd_dtype", [np.float32, np.float64])
def test_16bit_references_built_from_the_state_dict_equal_the_cast_float32_one(tmp_path, sd_dtype):
    from parity.harness import _cast_reference, _reference

    ckpt = open_checkpoint(save_checkpoint(tmp_path, head="lm", seed=4))
    sd = {k: np.asarray(v, sd_dtype) for k, v in ckpt.reference_weights("qa", seed=0).items()}
    opts = Options()
    base = _reference(ckpt, "qa", sd, opts)
    for dtype in ("bfloat16", "float16"):
        cast = _cast_reference(base, dtype, torch.device("cpu"))
        built = _cast_reference(base, dtype, torch.device("cpu"), ckpt, "qa", sd, opts)
        got, want = built.state_dict(), cast.state_dict()
        assert got.keys() == want.keys()
        assert all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want), dtype


def test_flax_weights_converted_in_memory_equal_a_conversion_of_the_files(tmp_path):
    from convert import load_flax_params, rules
    from convert.tree import flatten

    ckpt = open_checkpoint(save_checkpoint(tmp_path, head="lm", seed=5))
    for head in ("lm", "qa", "cls", "causal", "base"):
        sd = ckpt.reference_weights(head, seed=0)
        got = flatten(ckpt.flax_weights(head, sd))
        allow = rules.head_only_prefixes(ckpt.config, head)
        want, summary = load_flax_params(tmp_path, ckpt.config, head, allow_missing=allow)
        want = flatten(want)
        assert set(got) == set(want) | {tuple(k.split("/")) for k in summary.missing}, head
        for k, v in want.items():
            assert got[k].dtype == v.dtype and np.array_equal(got[k], v), (head, k)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")   # 1e6 in float16, on purpose
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_gate_param_cast_is_the_models_cast_bit_for_bit(dtype):
    import jax

    from parity.harness import _cast_params

    model = flax_model(demo_config(quick=True), "qa", dtype)
    special = np.array([0.0, -0.0, 1e-8, -6e-8, 3e-5, 65504.0, 65520.0, 1e6, -np.inf, np.inf, np.nan, 1 / 3],
                       np.float32)
    rng = np.random.default_rng(0)
    plain = {"a": {"kernel": rng.standard_normal((7, 5)).astype(np.float32)}, "b": special}   # the quick paths
    mixed = dict(plain, c=rng.standard_normal(3).astype(np.float32).astype(np.float16))       # the model's cast
    for params in (plain, mixed):
        got = _cast_params(model, params, dtype)
        want = {"float32": model.to_fp32, "bfloat16": model.to_bf16, "float16": model.to_fp16}[dtype](params)
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            g, w = np.asarray(g), np.asarray(w)
            assert g.dtype == w.dtype and g.shape == w.shape
            assert np.array_equal(g.view(np.uint8), w.view(np.uint8))   # NaN's bits too


def test_highest_precision_runs_the_blocked_float32_products_and_still_fails_on_perturbed_weights(tmp_path):
    """--precision highest: the Flax model's float32 contractions summed in blocks (d_model 512: 2 blocks),
    recorded in the report; a perturbed layer still fails."""
    torch_model("lm", seed=0, d_model=512, encoder_ffn_dim=1024, decoder_ffn_dim=1024, encoder_layers=1,
                decoder_layers=1, encoder_attention_heads=8, decoder_attention_heads=8).save_pretrained(tmp_path)
    runs = {}
    for precision in ("default", "highest"):
        opts = Options(heads=("lm",), cases=("right_padding",), precision=precision, **SMALL)
        runs[precision] = run_parity(tmp_path, opts=opts).report
        assert runs[precision].passed, runs[precision].column("float32").first_failure
    assert runs["highest"].environment.extra["flax_precision"].startswith("highest (float32 contractions")
    errs = {p: [r.metrics.max_abs_err for r in rep.column("float32").results] for p, rep in runs.items()}
    assert errs["default"] != errs["highest"]   # a different sum ran
    save_flax_next_to_it(tmp_path, scale=(("model", "decoder", "layers", "0", "fc1", "kernel"), 1.001))
    bad = run_parity(tmp_path, opts=Options(heads=("lm",), cases=("right_padding",), precision="highest", **SMALL))
    first = bad.report.column("float32").first_failure
    assert not bad.report.passed and (first.group, first.layer) == ("decoder", 0)
