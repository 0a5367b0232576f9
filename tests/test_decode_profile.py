"""`benchmarks.decode_profile`: the decoding loop's ops sorted into groups from the compiled HLO, and the
quick run's report."""

import json
import subprocess
import sys

from benchmarks.decode_profile import GROUPS, classify, op_names

HLO = """
body {
  %ynn_fusion = f32[1000,4]{1,0} fusion(%a, %b), kind=kCustom, metadata={op_name="jit(program)/while/body/dot_general"}
  %ynn_fusion.2 = f32[768,4]{1,0} fusion(%c, %d), metadata={op_name="jit(program)/while/body/model.decode/decoder/layers/0/self_attn/q_proj/dot_general"}
  %ynn_fusion.3 = f32[3072,4]{1,0} fusion(%c, %d), metadata={op_name="jit(program)/while/body/model.decode/decoder/layers/0/0._ffn/fc1/dot_general"}
  %dot.7 = f32[4,12,256]{2,1,0} dot(%e, %f), metadata={op_name="jit(program)/while/body/model.decode/decoder/layers/0/encoder_attn/bhtk,bhsk->bhts/dot_general"}
  %ynn_fusion.5 = f32[4,12,1]{2,1,0} fusion(%g), metadata={op_name="jit(program)/while/body/model.decode/decoder/layers/0/encoder_attn/reduce_sum"}
  ROOT %iota_reduce_fusion.1 = s32[4]{0} fusion(%h), metadata={op_name="jit(program)/while/body/reduce_max"}
  %add_fusion.1 = f32[4,1000]{1,0} fusion(%i), metadata={op_name="jit(program)/while/body/add"}
}
%ynn_fusion.9 = f32[1000,4]{1,0} fusion(%a, %b), metadata={op_name="jit(program)/dot_general"}
"""


def test_classify_sorts_the_loop_ops_and_leaves_the_rest_out():
    groups = classify(HLO, vocab_size=1000)
    assert groups == {
        "ynn_fusion": "LM head", "ynn_fusion.2": "decoder weight products", "ynn_fusion.3": "decoder weight products",
        "dot.7": "attention products", "ynn_fusion.5": "other decoder ops", "iota_reduce_fusion.1": "loop bookkeeping",
        "add_fusion.1": "loop bookkeeping",
    }   # ynn_fusion.9 is outside the loop
    assert op_names(HLO)["dot.7"].startswith("model.decode/decoder/layers/0/encoder_attn/")


def test_quick_run_reports_every_group(tmp_path):
    out = tmp_path / "decode_profile.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.decode_profile", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["environment"]["cpu"]
    assert list(data["groups"]) == list(GROUPS)
    for group in GROUPS[:3]:   # a profiled loop has products of each kind, with the bytes they read
        row = data["groups"][group]
        assert row["ms_per_step"] > 0 and row["mb_per_step"] > 0 and row["gb_s"] > 0, (group, row)
    assert data["loop_ops"] > 10 and data["step_ms"] > 0 and data["step_ms_at_streaming"] > 0
    low, high = data["streaming_gb_s_range"]   # the read timed in the calls' rounds
    assert 0 < low <= data["streaming_gb_s"] <= high and ", rounds " in proc.stdout
    assert {o["group"] for o in data["top_ops"]} <= set(GROUPS)
    assert "ms a step" in proc.stdout


def test_too_few_new_tokens_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.decode_profile", "--quick", "--new-tokens", "2",
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--new-tokens 2" in proc.stderr and "Traceback" not in proc.stderr


def test_suite_headline_reports_the_floor_share_and_the_step():
    from benchmarks.__main__ import BENCHES, _headline

    assert BENCHES["decode_profile"] == "benchmarks.decode_profile"
    rows = _headline({"generate": {"speedup": 2.0, "floor": {"share_of_floor_reached": 0.8123}},
                      "decode_profile": {"step_ms": 19.514, "step_ms_at_streaming": 12.4}})
    by_label = {label: (value, target) for label, value, target in rows}
    assert by_label["greedy generate: share of the floor's speed (exact decoding at streaming bandwidth)"] == ("0.81", ">= 0.9")
    step = next(v for label, v in by_label.items() if label.startswith("greedy decoding step ms"))
    assert step == ("19.51 (12.40)", "")


def test_render_says_when_no_loop_op_was_found():
    from benchmarks.decode_profile import render

    groups = {g: {"ms_per_step": 0.0} for g in GROUPS}
    text = render({"case": {"shape": "base", "batch": 4, "source_length": 256, "dtype": "float32"}, "step_ms": 1.0,
                   "step_ms_at_streaming": 0.5, "step_mb": 10.0, "streaming_gb_s": 20.0, "loop_ops": 0,
                   "ops_summed_ms": 0.0, "groups": groups, "top_ops": []})
    assert "no op of the decoding loop was found" in text


def test_decode_ab_quick_runs_each_arm_on_the_same_tokens(tmp_path):
    """`python -m benchmarks.decode_ab --quick`: the default, XLA's argmax and an XLA option, interleaved."""
    out = tmp_path / "ab.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.decode_ab", "--quick", "--arm", "argmax", "--arm",
                           "xla:xla_cpu_enable_concurrency_optimized_scheduler=true", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    arms = json.loads(out.read_text())["arms"]
    assert list(arms) == ["default", "argmax", "xla:xla_cpu_enable_concurrency_optimized_scheduler=true"]
    for arm in arms.values():
        assert arm["tokens_equal"] is True and arm["median_s"] > 0 and len(arm["samples_s"]) == 2
    assert arms["default"]["paired_ratio_to_default"] == 1.0
    assert [name for name, arm in arms.items() if arm["xla_argmax"]] == ["argmax"]   # the arm is what it says


def test_decode_ab_rejects_an_unknown_arm(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.decode_ab", "--quick", "--arm", "fused",
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--arm 'fused'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.json").exists()
