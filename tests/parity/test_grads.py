"""`--grads`: gradient parity and after_3_adamw_steps in the harness, on the quick demo config.

Passes on a correct conversion (lm and qa, every parameter, forward order, one row for the tied
embedding); fails at decoder layer 1's fc1 kernel when a monkeypatched Flax Dense scales that
kernel's gradient alone (forward values unchanged), and the CLI exits 1 there.
"""

from __future__ import annotations

import json
import math

import flax.linen as nn
import jax
import numpy as np
import pytest

from flax_bart.modules import Dense
from parity import harness
from parity.adamw import PREFIX, flax_label, torch_decays
from parity.checkpoint import ParityInputError, open_checkpoint
from parity.cli import build_parser, main
from parity.grads import draw_targets, locate, zero_gradients
from parity.harness import Options, run_parity
from parity.metrics import compare
from parity.regression import check_baseline
from parity.report import load_report, write_reports
from parity.tolerance import GRAD_RTOL_FACTOR, judge_at_scale
from test_harness import save_checkpoint

SMALL = dict(batch_size=2, seq_len=12, steps=0, cases=("right_padding",))


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("grads_lm"))


@pytest.fixture(scope="module")
def correct(ckpt_path):
    return run_parity(ckpt_path, opts=Options(heads=("lm", "qa"), dtypes=("float32", "bfloat16"), grads=True, **SMALL))


def _rows(col, head, what):
    return [r for r in col.results if r.name.startswith(f"{head}/right_padding/{what}/")]


def _torch_names(ckpt_path, head):
    from parity.grads import trainable
    from parity.reference import build_reference

    ckpt = open_checkpoint(ckpt_path)
    model = build_reference(ckpt.config, head, ckpt.reference_weights(head, 0))
    return set(trainable(model)) | ({"final_logits_bias"} if head == "lm" else set())


def test_correct_conversion_passes_with_a_row_per_parameter(correct, ckpt_path):
    col = correct.report.column("float32")
    assert col.passed, col.first_failure
    for head in ("lm", "qa"):
        grads, params = _rows(col, head, "grad"), _rows(col, head, PREFIX)
        names = [r.name.rsplit("/", 1)[1] for r in grads]
        assert set(names) == _torch_names(ckpt_path, head) and len(names) == len(set(names))
        assert [r.name.rsplit("/", 1)[1] for r in params] == names
        assert {r.metrics.kind for r in grads} == {"grad"} and {r.metrics.kind for r in params} == {"param"}
        assert all(r.metrics.count > 0 and r.metrics.gold_ratio is not None for r in grads)
        # forward order: embeddings, encoder layer 0, decoder layers 0..2, head
        assert names[0] == "model.shared.weight" and (grads[0].group, grads[0].layer) == ("embeddings", None)
        keys = [locate(n)[0] for n in names]
        assert keys == sorted(keys)
        layers = [(r.group, r.layer) for r in grads if r.group in ("encoder", "decoder")]
        assert layers == sorted(layers, key=lambda gl: (gl[0] != "encoder", gl[1]))
        assert grads[-1].group == "heads"
        assert not any("embed_tokens" in n or n == "lm_head.weight" for n in names)  # the tied copies: one row
    assert any("one parameter in both frameworks" in n for n in correct.report.notes)


def test_gradients_match_to_float32_rounding(correct):
    col = correct.report.column("float32")
    policy = correct.report.policy
    ordinary = [r for r in col.results if r.metrics.kind == "grad" and not r.verdict.rule.startswith("zero")]
    assert len(ordinary) > 100
    assert all(r.verdict.metric == "gold_err_cand_max" and r.verdict.passed for r in ordinary)
    for r in ordinary:   # float32 gradients: against the float64 gold, like fp16/bf16 (tolerance rule 6)
        m = r.metrics
        own = policy.grad_bound("float32", m.gold_err_ref_max, m.gold_rms)  # the floor at the gradient's own RMS ...
        assert r.verdict.tolerance >= own * (1 - 1e-9)
        assert "x RMS of all gradients" in r.verdict.rule  # ... or at 1e-3 of all gradients' RMS
    assert max(r.metrics.max_rel_err for r in ordinary) < GRAD_RTOL_FACTOR * 1e-5
    assert np.median([r.metrics.max_rel_err for r in ordinary]) < 1e-5 / 3
    fc1 = next(r for r in ordinary if r.name == "lm/right_padding/grad/model.decoder.layers.1.fc1.weight")
    assert fc1.metrics.cosine > 1 - 1e-9 and fc1.metrics.ref_rms > 0


def test_bfloat16_gradients_are_judged_against_the_float64_gold(correct):
    policy = correct.report.policy
    col = correct.report.column("bfloat16")
    grads = [r for r in col.results if r.metrics.kind == "grad"]
    assert len(grads) == len([r for r in correct.report.column("float32").results if r.metrics.kind == "grad"])
    assert all(r.verdict.metric == "gold_err_cand_max" for r in grads)
    ordinary = [r for r in grads if not r.verdict.rule.startswith("zero gradient")]
    for r in ordinary:
        m = r.metrics
        own = policy.grad_bound("bfloat16", m.gold_err_ref_max, m.gold_rms)  # the floor at the gradient's own RMS ...
        assert r.verdict.tolerance >= own * (1 - 1e-9)
        assert "x RMS of all gradients" in r.verdict.rule  # ... or at 1e-3 of all gradients' RMS
    assert np.median([r.metrics.gold_ratio for r in ordinary]) <= policy.k
    assert not any(r.metrics.kind == "param" for r in col.results)  # AdamW: float32 only


def test_zero_gradients_are_judged_at_the_scale_of_all_gradients(correct):
    col = correct.report.column("float32")
    by_name = {r.name: r for r in col.results}
    kbias = by_name["qa/right_padding/grad/model.decoder.layers.0.self_attn.k_proj.bias"]
    assert kbias.verdict.rule.startswith("zero gradient") and kbias.verdict.passed
    assert kbias.metrics.max_rel_err > 1e-5  # rounding noise: meaningless against its own RMS
    qa_bias = by_name["qa/right_padding/grad/qa_outputs.bias"]
    assert qa_bias.verdict.rule.startswith("zero gradient")
    fb = by_name["lm/right_padding/grad/final_logits_bias"]  # a PyTorch buffer: no gradient on either side
    assert fb.metrics.max_abs_err == 0.0 and fb.verdict.passed
    assert not by_name["qa/right_padding/grad/model.decoder.layers.0.fc1.weight"].verdict.rule.startswith("zero")


def test_zero_gradient_rule_can_fail():
    gold = {"w": np.ones(100), "b": np.full(3, 1e-17)}
    zero, scale = zero_gradients(gold)
    assert zero == {"b"} and math.isclose(scale, math.sqrt(100 / 103))
    m = compare("b", np.full(3, 1e-12), np.full(3, 1e-4), kind="grad")
    assert not judge_at_scale(m, "float32", scale).passed
    assert judge_at_scale(compare("b", np.full(3, 1e-12), np.full(3, 3e-12), kind="grad"), "float32", scale).passed


def test_a_zero_bias_gradient_is_judged_against_the_size_of_its_terms(correct):
    """The span loss's qa_outputs.bias gradient is sum_t (softmax_t - onehot_t) = 0: its float32 rounding is a
    few ULPs of the terms' absolute sum (about 1), and PyTorch's error is one draw of it. Measured: an
    AVX-512 EPYC gave Flax 9.47e-7 (8 ULPs of the sum) against PyTorch's 2.98e-8, which failed the gate
    at 7.85x its tolerance when the bound was 2 k x PyTorch's error + 8 ULPs of all gradients' RMS."""
    col = correct.report.column("float32")
    row = next(r for r in col.results if r.name == "qa/right_padding/grad/qa_outputs.bias")
    assert "absolute sum" in row.verdict.rule
    mass = float(row.verdict.rule.rsplit("(", 1)[1].rstrip(")"))
    assert 0.3 < mass <= 1.0  # (1 - p(target)) per row and logit, averaged over rows: near 1 at random init
    eps = 2.0**-23
    amd = compare("qa_outputs.bias", np.full(2, 2.98e-8), np.full(2, 8.3 * eps), kind="grad", gold=np.zeros(2))
    scale = 2.2e-3  # RMS of all gradients of that loss
    assert not judge_at_scale(amd, "float32", scale).passed
    assert judge_at_scale(amd, "float32", scale, mass=mass).passed
    gross = compare("qa_outputs.bias", np.zeros(2), np.full(2, 1e-4 * mass), kind="grad", gold=np.zeros(2))
    assert not judge_at_scale(gross, "float32", scale, mass=mass).passed
    bf16 = compare("qa_outputs.bias", np.zeros(2), np.full(2, 0.5 * mass), kind="grad", gold=np.zeros(2))
    assert not judge_at_scale(bf16, "bfloat16", scale, mass=mass).passed


def test_bias_masses_are_the_absolute_sums_of_the_output_gradients(ckpt_path):
    import torch

    from parity.grads import bias_masses, torch_loss, torch_outputs, trainable
    from parity.reference import build_reference

    ckpt = open_checkpoint(ckpt_path)
    model = build_reference(ckpt.config, "qa", ckpt.reference_weights("qa", 0), dtype=torch.float64)
    rng = np.random.default_rng(0)
    ids = rng.integers(4, ckpt.config.vocab_size, (2, 7))
    case = {"input_ids": ids, "attention_mask": np.ones((2, 7), np.int32), "decoder_input_ids": ids}
    targets = draw_targets(ckpt.config, "qa", case, 0)
    params, masses = trainable(model), {}
    for p in params.values():
        p.requires_grad_(True)
    with torch.enable_grad(), bias_masses(model, params, masses):
        out = torch_outputs(model, "qa", case)
        for v in out.values():
            v.retain_grad()
        torch_loss("qa", out, targets, model.config.num_labels).backward()
    expect = max(float(out["start_logits"].grad.abs().sum()), float(out["end_logits"].grad.abs().sum()))
    assert math.isclose(masses["qa_outputs.bias"], expect, rel_tol=1e-12)
    assert masses["model.decoder.layers.0.self_attn.k_proj.bias"] > 0
    assert not any(n.endswith(".weight") for n in masses)
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_adamw_rows_pass_within_the_param_tolerance(correct):
    col = correct.report.column("float32")
    params = [r for r in col.results if r.metrics.kind == "param"]
    ordinary = [r for r in params if r.verdict.metric == "mean_rel_err"]
    assert ordinary and all(r.verdict.passed and r.verdict.tolerance == 1e-4 for r in ordinary)
    assert max(r.metrics.max_rel_err for r in ordinary) < 1e-4
    moved = next(r for r in params if r.name == "lm/right_padding/after_3_adamw_steps/model.decoder.layers.1.fc1.weight")
    assert moved.metrics.max_rel_err < 1e-4
    noisy = [r for r in params if r.verdict.metric == "max_abs_err"]
    assert any(r.name.endswith("qa_outputs.bias") for r in noisy)
    assert all(r.verdict.tolerance == pytest.approx(6e-3) for r in noisy)


def test_weight_decay_masks_agree():
    for pt, flax in [("model.encoder.layers.0.fc1.weight", ("model", "encoder", "layers", "0", "fc1", "kernel")),
                     ("model.encoder.layers.0.fc1.bias", ("model", "encoder", "layers", "0", "fc1", "bias")),
                     ("model.decoder.layers.1.final_layer_norm.weight", ("model", "decoder", "layers", "1",
                                                                         "final_layer_norm", "scale")),
                     ("model.encoder.layernorm_embedding.bias", ("model", "encoder", "layernorm_embedding", "bias")),
                     ("model.shared.weight", ("model", "shared", "embedding"))]:
        assert torch_decays(pt) == (flax_label(flax) == "decay"), pt
    assert flax_label(("final_logits_bias",)) == "frozen"


def test_targets_are_drawn_from_the_seed(correct):
    cfg = correct.checkpoint.config
    case = {"input_ids": np.full((2, 6), 5, np.int32), "attention_mask": np.array([[1] * 6, [1, 1, 1, 0, 0, 0]]),
            "decoder_input_ids": np.full((2, 6), 5, np.int32)}
    a, b = draw_targets(cfg, "lm", case, 3), draw_targets(cfg, "lm", case, 3)
    assert np.array_equal(a["labels"], b["labels"])
    assert not np.array_equal(a["labels"], draw_targets(cfg, "lm", case, 4)["labels"])
    assert (a["labels"][1, 4:] == -100).all() and (a["labels"] != -100).any()
    qa = draw_targets(cfg, "qa", case, 3)
    assert (qa["start_positions"] < np.array([6, 4])).all()
    cls = draw_targets(cfg, "cls", case, 3)["labels"]
    assert ((0 <= cls) & (cls < cfg.num_labels)).all()


def test_reports_carry_the_new_rows(correct, tmp_path):
    paths = write_reports(correct.report, tmp_path)
    again = load_report(paths["json"])
    assert again.column("float32").passed and any(r.metrics.kind == "grad" for r in again.column("float32").results)
    html = paths["html"].read_text()
    assert "lm/right_padding/grad/model.decoder.layers.1.fc1.weight" in html
    assert 'name="decoder"' in paths["junit"].read_text()
    assert check_baseline(again, correct.report, 2.0, None).passed


def test_help_documents_the_flag():
    assert "--grads" in build_parser().format_help()


def test_grads_with_a_mesh_is_an_input_error(ckpt_path):
    with pytest.raises(ParityInputError, match="--grads with --mesh"):
        run_parity(ckpt_path, opts=Options(heads=("lm",), grads=True, mesh="dp=1", **SMALL))


def _scale_kernel_gradient(factor: float, layer: str = "1"):
    """An interceptor that scales dLoss/dkernel of decoder layer `layer`'s fc1 by `factor` and nothing else:
    fc1(x) + (factor - 1) * x @ (W - stop_gradient(W)) has fc1(x)'s value and x's gradient unchanged.
    Used with `_unrolled`: a scanned stack runs one layer body for every layer, so a fault in the code
    of one layer alone exists only in the unrolled stack (per-layer weights are per-layer either way)."""

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        mod = context.module
        if context.method_name == "__call__" and isinstance(mod, (nn.Dense, Dense)) and \
                tuple(mod.path[-4:]) == ("decoder", "layers", layer, "fc1"):
            w = mod.variables["params"]["kernel"]
            zero = (w - jax.lax.stop_gradient(w)).astype(out.dtype)
            out = out + (factor - 1.0) * (args[0] @ zero)
        return out

    return nn.intercept_methods(interceptor)


def _unrolled(monkeypatch):
    import flax_bart.modules

    monkeypatch.setattr(harness, "_MODELS", {})  # fresh models: traced under the interceptor, dropped after
    monkeypatch.setattr(flax_bart.modules, "can_scan", lambda *args, **kwargs: False)


def test_a_wrong_fc1_gradient_fails_at_decoder_layer_1(ckpt_path, tmp_path, monkeypatch):
    _unrolled(monkeypatch)
    out_dir = tmp_path / "report"
    with _scale_kernel_gradient(1.001):
        code = main([str(ckpt_path), "--heads", "lm", "--grads", "--cases", "right_padding", "--steps", "0",
                     "--batch-size", "2", "--seq-len", "12", "--out", str(out_dir), "--no-compile-cache", "--quiet"])
    assert code == 1
    report = load_report(out_dir / "report.json")
    col = report.column("float32")
    first = col.first_failure
    assert (first.group, first.layer) == ("decoder", 1)
    assert first.name == "lm/right_padding/grad/model.decoder.layers.1.fc1.weight"
    assert first.metric == "gold_err_cand_max" and first.value > 10 * first.tolerance  # 1e-3 x |g| vs fp32 rounding
    assert all(r.verdict.passed for r in col.results if r.metrics.kind not in ("grad", "param"))  # forward intact
    failing = {r.name.rsplit("/", 1)[1] for r in col.failures if r.metrics.kind == "grad"}
    assert failing == {"model.decoder.layers.1.fc1.weight"}
    assert json.loads((out_dir / "report.json").read_text())["outcome"]["exit_code"] == 1


def test_a_gradient_off_by_a_fifth_fails_in_bfloat16(ckpt_path, tmp_path, monkeypatch):
    """The wider low-precision gradient bound (tolerance rule 6) still catches a real fault in bf16."""
    _unrolled(monkeypatch)
    out_dir = tmp_path / "report"
    with _scale_kernel_gradient(1.2):
        code = main([str(ckpt_path), "--heads", "lm", "--grads", "--cases", "right_padding", "--steps", "0",
                     "--dtypes", "bfloat16", "--batch-size", "2", "--seq-len", "12", "--out", str(out_dir),
                     "--no-compile-cache", "--quiet"])
    assert code == 1
    col = load_report(out_dir / "report.json").column("bfloat16")
    failing = {r.name.rsplit("/", 1)[1] for r in col.failures if r.metrics.kind == "grad"}
    assert failing == {"model.decoder.layers.1.fc1.weight"}


def test_grad_heads_selects_heads_and_refuses_others(ckpt_path, tmp_path):
    out_dir = tmp_path / "report"
    code = main([str(ckpt_path), "--heads", "lm,qa", "--grad-heads", "qa", "--cases", "right_padding", "--steps",
                 "0", "--batch-size", "2", "--seq-len", "12", "--out", str(out_dir), "--quiet"])
    assert code == 0
    col = load_report(out_dir / "report.json").column("float32")
    grad_heads = {r.name.split("/")[0] for r in col.results if r.metrics.kind in ("grad", "param")}
    assert grad_heads == {"qa"}
    assert {r.name.split("/")[0] for r in col.results} == {"lm", "qa"}
    code = main([str(ckpt_path), "--heads", "lm", "--grad-heads", "cls", "--out", str(tmp_path / "bad"), "--quiet"])
    assert code == 2


def test_max_length_gradients_follow_the_forward_dtypes(ckpt_path, monkeypatch):
    """The max_length case's gradients run in --max-length-dtypes only (float32 by default), and each
    case's float64 gold is computed once however many dtypes ask for it."""
    from parity.grad_check import GradCheck
    from parity.inputs import cases_for_head

    ckpt = open_checkpoint(ckpt_path)
    cases = {k: v for k, v in cases_for_head(ckpt.config, "qa", seed=0, batch_size=2, seq_len=12).items()
             if k in ("right_padding", "max_length")}
    assert set(cases) == {"right_padding", "max_length"}
    check = GradCheck(ckpt, "qa", ckpt.reference_weights("qa", 0), None, cases, Options(dtypes=("float32", "bf16")))
    assert set(check.cases_for("float32")) == {"right_padding", "max_length"}
    assert set(check.cases_for("bfloat16")) == {"right_padding"}
    every = GradCheck(ckpt, "qa", ckpt.reference_weights("qa", 0), None, cases, Options(max_length_dtypes=None))
    assert set(every.cases_for("bfloat16")) == set(cases)
    computed = []
    monkeypatch.setattr(GradCheck, "torch_side",
                        lambda self, dtype, device, todo, masses=None: computed.append((dtype, sorted(todo))) or
                        {c: {"g": c} for c in todo})
    assert check.gold(check.cases_for("bfloat16")) == {"right_padding": {"g": "right_padding"}}
    assert set(check.gold(check.cases_for("float32"))) == set(cases)
    assert computed == [("float64", ["right_padding"]), ("float64", ["max_length"])]


def test_torch_gradients_reach_numpy_exactly_in_their_dtype(ckpt_path):
    """No float64 copy of every gradient: each keeps the model's dtype, bit for bit (bf16 via ml_dtypes)."""
    import ml_dtypes
    import torch

    from parity.grads import torch_grads, torch_loss, torch_outputs
    from parity.reference import build_reference

    ckpt = open_checkpoint(ckpt_path)
    ids = np.random.default_rng(0).integers(4, ckpt.config.vocab_size, (2, 7))
    case = {"input_ids": ids, "attention_mask": np.ones((2, 7), np.int32), "decoder_input_ids": ids}
    targets = draw_targets(ckpt.config, "qa", case, 0)
    for dtype, expect in ((torch.float64, np.float64), (torch.float32, np.float32),
                          (torch.bfloat16, ml_dtypes.bfloat16), (torch.float16, np.float16)):
        model = build_reference(ckpt.config, "qa", ckpt.reference_weights("qa", 0), dtype=dtype)
        grads = torch_grads(model, "qa", case, targets)
        assert {g.dtype for g in grads.values()} == {np.dtype(expect)}, dtype
        with torch.enable_grad():  # the same backward again, read straight from autograd
            torch_loss("qa", torch_outputs(model, "qa", case), targets, model.config.num_labels).backward()
        again = model.qa_outputs.weight.grad.to(torch.float64).numpy()
        assert np.array_equal(grads["qa_outputs.weight"].astype(np.float64), again), dtype


def test_the_time_line_counts_the_gradient_checks():
    from parity.timing import summary_line

    timings = {"seconds": 115.2, "compare_s": 1.0, "steps": {
        "qa/float64 gold": {"torch_s": 2.8},
        "qa/float32": {"torch_s": 0.2, "flax_s": 0.8, "grads_s": 62.0},
        "qa/bfloat16": {"torch_s": 0.3, "flax_s": 0.7, "grads_s": 12.5}}}
    line = summary_line(timings)
    assert "gradient checks (--grads, both frameworks) 74.5 s" in line and line.endswith("115.2 s in all")
    assert "gradient checks (--grads, both frameworks) 74.5 s ·" in line  # no split recorded: none printed
    timings["steps"]["qa/float32"].update(grads_gold_s=9.0, grads_torch_s=4.0, grads_flax_s=6.0, grads_compare_s=2.0,
                                          grads_adamw_s=20.0)
    timings["steps"]["qa/bfloat16"].update(grads_gold_s=0.0, grads_torch_s=5.0, grads_flax_s=5.5, grads_compare_s=1.5)
    assert ("gradient checks (--grads, both frameworks) 74.5 s (float64 gold 9.0 s, PyTorch 9.0 s, Flax 11.5 s, "
            "comparing 3.5 s, AdamW steps 20.0 s)") in summary_line(timings)
    del timings["steps"]["qa/float32"]["grads_s"], timings["steps"]["qa/bfloat16"]["grads_s"]
    assert "gradient checks" not in summary_line(timings)


def test_the_report_splits_each_gradient_check(correct):
    steps = correct.report.timings["steps"]
    for head in ("lm", "qa"):
        for dtype in ("float32", "bfloat16"):
            step = steps[f"{head}/{dtype}"]
            parts = {k: v for k, v in step.items() if k.startswith("grads_") and k != "grads_s"}
            expect = {"grads_gold_s", "grads_torch_s", "grads_flax_s", "grads_compare_s"}
            assert set(parts) == expect | ({"grads_adamw_s"} if dtype == "float32" else set()), (head, dtype)
            assert all(v >= 0 for v in parts.values()) and parts["grads_flax_s"] > 0
            assert sum(parts.values()) <= step["grads_s"] + 0.005  # each rounded to 1 ms
