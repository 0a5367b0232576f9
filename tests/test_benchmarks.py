"""The benchmark entry points run and write valid output (smoke runs; no timing is asserted)."""

import json
import os
import subprocess
import sys


def _quick_bench(module: str, out, timeout: int = 600):
    """`python -m MODULE --quick --out OUT`: (the finished process, the JSON it wrote); fails on a non-zero exit."""
    proc = subprocess.run([sys.executable, "-m", module, "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


def test_suite_quick_mode_writes_reports(tmp_path):
    """`python -m benchmarks --quick` (here: the forward and convert benchmarks) writes every report."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "forward,convert",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "forward.json").read_text())
    assert data["benchmark"] == "forward" and data["quick"] is True
    assert {r["head"] for r in data["results"]} == {"qa", "cls", "lm"}
    for r in data["results"]:
        assert set(r["timings"]) == {"reference", "transformers", "flax"}
        assert all(v["median_s"] > 0 for v in r["timings"].values())
        assert r["ratios"]["flax/transformers"] > 0 and r["paired_ratios"]["flax/transformers"] > 0
        assert len({len(v["samples_s"]) for v in r["timings"].values()}) == 1  # one sample per round each
    suite = json.loads((tmp_path / "bench.json").read_text())
    assert set(suite["runs"]) == {"forward", "convert"} and all(r["exit_code"] == 0 for r in suite["runs"].values())
    assert "versions" in suite["environment"] and "torch_threads" in suite["environment"]
    md = (tmp_path / "bench.md").read_text()
    assert "| measurement | value | target |" in md and "forward tiny qa float32" in md


def test_interleaved_times_runs_round_by_round():
    """Each callable runs once per round, in turn; the paired ratio is the median of per-round ratios."""
    from benchmarks.common import interleaved_times, paired_ratio

    calls = []
    t = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3)
    assert calls == ["a", "b"] * 3
    assert all(len(v["samples_s"]) == 3 and v["median_cpu_s"] >= 0 for v in t.values())
    num, den = {"samples_s": [2.0, 9.0, 3.0]}, {"samples_s": [1.0, 3.0, 1.0]}
    assert paired_ratio(num, den) == 3.0  # per round 2, 3, 3; the medians' ratio would be 3 / 1 = 3 too
    assert paired_ratio({"samples_s": [1.0, 4.0, 1.0]}, {"samples_s": [1.0, 1.0, 2.0]}) == 1.0


def test_aggregator_rejects_unknown_benchmark(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nope", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nope" in proc.stderr


def test_gate_bench_quick_runs_cold_then_warm(tmp_path):
    """`python -m benchmarks.gate_bench --quick`: the gate twice on one compile cache; the second run
    loads the programs the first compiled."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gate_bench", "--quick", "--out", str(tmp_path),
                           "--cache-dir", str(tmp_path / "demo")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "gate.json").read_text())
    cold, warm = data["results"]["smoke"]["cold"], data["results"]["smoke"]["warm"]
    assert cold["exit_code"] == warm["exit_code"] == 0
    assert cold["programs"] > 0 and cold["cache_hits"] == 0 and warm["cache_hits"] > 0
    assert set(cold["steps"]) == {"qa/float32"} and data["environment"]["cpu"]
    assert data["results"]["smoke"]["precision"] == "highest"
    # parity tunes a CPU gate's allocator (flax_bart.host_memory), without the one arena for a test-sized
    # model (parity.cli.tune_allocator_for); faults are counted
    assert data["results"]["smoke"]["allocator"] == "tuned"
    assert cold["host_allocator"] == "tuned (mmap threshold 1024 MiB, trim threshold 1024 MiB)"
    assert cold["minor_faults"] > 0


def test_gate_bench_out_is_a_folder_or_a_json_file():
    from benchmarks.gate_bench import results_path

    assert results_path(os.path.join("reports", "bench")) == os.path.join("reports", "bench", "gate.json")
    assert results_path(os.path.join("x", "gate-demo.json")) == os.path.join("x", "gate-demo.json")
    assert results_path("G.JSON") == "G.JSON"


def test_gate_bench_rejects_an_unknown_precision(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gate_bench", "--precisions", "tf32", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--precisions 'tf32'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "gate.json").exists()


def test_train_bench_quick_writes_both_sides(tmp_path):
    """`python -m benchmarks.train_bench --quick`: flax and transformers training steps timed, finite
    losses, tokens/s and the ratio recorded with the machine fingerprint."""
    out = tmp_path / "train.json"
    proc, data = _quick_bench("benchmarks.train_bench", out)
    assert data["benchmark"] == "train" and data["quick"] is True and data["environment"]["cpu"]
    r = data["results"]
    assert set(r["timings"]) == {"transformers", "flax"} and r["tokens_per_step"] == 2 * 2 * 16
    for t in r["timings"].values():
        assert t["median_s"] > 0 and t["first_step_s"] > 0 and len(t["samples_s"]) == data["repeats"]
        assert t["tokens_per_s"] == r["tokens_per_step"] / t["median_s"]
        assert len(t["losses"]) == data["repeats"] + 2 and all(0 < x < 20 for x in t["losses"])
    assert r["speedup"] == r["timings"]["flax"]["tokens_per_s"] / r["timings"]["transformers"]["tokens_per_s"]


def test_remat_bench_quick_writes_memory_per_setting(tmp_path):
    """`python -m benchmarks.remat_bench --quick`: compiled memory and saved residuals per setting."""
    out = tmp_path / "remat.json"
    proc, data = _quick_bench("benchmarks.remat_bench", out, timeout=900)
    assert data["benchmark"] == "remat" and data["quick"] is True and data["environment"]["versions"]["jax"]
    rows = data["results"]["settings"]
    assert set(rows) == {"none", "nothing_saveable", "dots_saveable"}
    assert all(r["temp_size_in_bytes"] > 0 and r["step"]["median_s"] > 0 for r in rows.values())
    # Backend-independent: rematerialising keeps fewer residuals than saving everything.
    assert rows["nothing_saveable"]["saved_residual_bytes"] < rows["dots_saveable"]["saved_residual_bytes"]
    assert rows["dots_saveable"]["saved_residual_bytes"] < rows["none"]["saved_residual_bytes"]


def test_device_bench_runs_every_mode_on_the_cpu(tmp_path):
    """`python -m benchmarks --device cpu --quick`: the GPU benchmark's code path on the CPU: forward and
    greedy generation beside transformers per precision mode, FLOP/s and decode-step bytes recorded."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--device", "cpu", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "device.json").read_text())
    assert [m["mode"] for m in data["modes"]] == ["fp32-exact", "tf32", "bf16"] and data["peaks"] is None
    for m in data["modes"]:
        assert m["forward"]["flax"]["tflop_s"] > 0 and m["forward"]["ratio"] > 0
        g = m["generate"]
        assert isinstance(g["tokens_equal"], bool) and g["speedup"] > 0
        assert g["decode_step"]["bytes"]["total"] > 0 and "times_roofline" not in g["decode_step"]
    assert "cpu fp32-exact QA forward" in (tmp_path / "bench.md").read_text()


def test_device_bench_without_the_device_exits_2(tmp_path):
    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        return
    proc = subprocess.run([sys.executable, "-m", "benchmarks.device_bench", "--device", "gpu", "--out",
                           str(tmp_path / "d.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--device gpu: JAX finds no gpu device" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "d.json").exists()


def test_roofline_counts():
    from benchmarks.common import BART_BASE
    from benchmarks.roofline import decode_step_bytes, forward_flops, peaks_for

    cfg = dict(d_model=4, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=8, decoder_ffn_dim=8, vocab_size=10)
    # encoder layer over 3 tokens: 2*3*(4*16 + 2*4*8) + 4*3*3*4 = 768 + 144; decoder: the same plus cross
    # attention 2*3*2*16 (Q, O) + 2*3*2*16 (K, V of 3 encoder tokens) + 4*3*3*4; QA head 2*4*2*3
    enc = 2 * 3 * (64 + 64) + 4 * 3 * 3 * 4
    dec = enc + 192 + 192 + 144
    assert forward_flops(cfg, "qa", 1, 3) == enc + dec + 48
    assert forward_flops(cfg, "lm", 2, 3) == 2 * (enc + dec + 2 * 4 * 10 * 3)
    b = decode_step_bytes(BART_BASE, batch=32, source_length=512, cache_length=0, mode="bf16")
    assert b["cross_kv"] == 2 * 6 * 32 * 512 * 768 * 2 and b["self_cache"] == 0
    assert b["weights"] == (6 * (6 * 768 * 768 + 2 * 768 * 3072) + 50265 * 768) * 2
    assert peaks_for("NVIDIA H200")["matched"] == "H200" and peaks_for("cpu") is None


def test_compile_bench_quick_compiles_each_variant_of_one_program(tmp_path):
    """`python -m benchmarks.compile_bench --quick`: one lowered tiny forward compiled with each option
    set; the fast ones drift from the optimized one by rounding only."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compile_bench", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads((tmp_path / "compile-quick.json").read_text())
    (row,) = data["results"]
    assert row["shape"] == "quick" and row["dtype"] == "float32" and data["environment"]["cpu"]
    assert set(row["variants"]) == {"optimized", "O0", "fast"}
    assert row["fast_compile"]["xla_backend_optimization_level"] == 0
    for v in row["variants"].values():
        assert v["compile_s"] > 0 and v["run_median_s"] > 0 and 0 <= v["drift_rel_rms"] < 1e-4
    assert row["variants"]["optimized"]["drift_rel_rms"] == 0.0


def test_gate_bench_rejects_an_unknown_allocator(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gate_bench", "--allocators", "jemalloc", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--allocators 'jemalloc'" in proc.stderr and "Traceback" not in proc.stderr


def test_gate_bench_rejects_bad_flax_jobs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gate_bench", "--flax-jobs", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--flax-jobs" in proc.stderr


def test_dtype_bench_quick_times_every_dtype(tmp_path):
    """`python -m benchmarks.dtype_bench --quick`: forward and greedy generation per compute dtype."""
    out = tmp_path / "dtypes.json"
    proc, data = _quick_bench("benchmarks.dtype_bench", out)
    assert data["benchmark"] == "dtypes" and data["quick"] is True and data["environment"]["cpu"]
    case = data["case"]
    assert set(data["results"]) == {"float32", "bfloat16", "float16"}
    for r in data["results"].values():
        assert r["generated_shape"] == [case["batch"], case["new_tokens"] + 1]
        for what in ("forward", "generate"):
            assert r[what]["median_s"] > 0 and r[what]["first_call_s"] > 0
            assert len(r[what]["samples_s"]) == case["repeats"]


def test_gate_prep_bench_quick_times_every_call(tmp_path):
    """`python -m benchmarks.gate_prep_bench --quick`: each preparation call of the gate timed per head."""
    out = tmp_path / "gate_prep.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gate_prep_bench", "--quick", "--heads", "qa,lm",
                           "--cache-dir", str(tmp_path / "demo"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "gate_prep" and data["heads"] == ["qa", "lm"] and data["environment"]["cpu"]
    calls = ("reference_weights", "flax_weights", "reference", "cast_reference", "cast_params")
    assert set(data["median_s"]) == {"open_checkpoint"} | {f"{c}/{h}" for c in calls for h in ("qa", "lm")}
    assert all(v >= 0 for v in data["median_s"].values()) and len(data["total_s"]) == 1
    bad = subprocess.run([sys.executable, "-m", "benchmarks.gate_prep_bench", "--heads", "nope", "--out",
                          str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nope" in bad.stderr and not (tmp_path / "x.json").exists()


def test_matmul_bench_quick_writes_every_mode(tmp_path):
    """`python -m benchmarks.matmul_bench --quick`: XLA's products in float32, bf16 and bf16 -> f32 beside
    PyTorch's, and the 4-row streaming rows, recorded with the CPU."""
    out = tmp_path / "matmul.json"
    proc, data = _quick_bench("benchmarks.matmul_bench", out)
    assert data["benchmark"] == "matmul" and data["quick"] is True and data["environment"]["cpu"]
    modes = {"xla float32", "xla bfloat16", "xla bfloat16->float32", "torch float32", "torch bfloat16"}
    assert data["compute"] and all(set(r["gflop_s"]) == modes for r in data["compute"])
    assert all(v > 0 for r in data["compute"] for v in r["gflop_s"].values())
    assert set(data["stream"]["gb_s"]) == {"xla float32", "xla bfloat16", "xla bfloat16->float32", "torch float32",
                                           "xla plain read"}
    assert "| rows x in -> out |" in proc.stdout


def test_scan_bench_quick_mode_times_forward_and_generation(tmp_path):
    """`python -m benchmarks.scan_bench --quick --generate`: forward scanned vs unrolled, and greedy
    generation with the decoding steps unrolled vs scanned, which pick the same tokens."""
    out = tmp_path / "scan.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scan_bench", "--quick", "--generate", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["results"] and all(set(r["median_s"]) == {"scan", "unrolled"} for r in data["results"])
    assert [r["dtype"] for r in data["generate"]] == ["float32", "bfloat16", "float16"]
    for r in data["generate"]:
        assert r["same_tokens"] is True
        assert set(r["first_call_s"]) == {"steps unrolled", "steps scanned"}
        assert all(v > 0 for v in r["tokens_per_s"].values())


def test_trace_bench_quick_mode_times_tracing_and_init_cache(tmp_path):
    """`python -m benchmarks.trace_bench --quick`: a forward trace and init_cache for new shapes."""
    out = tmp_path / "trace.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.trace_bench", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data["results"]) == {"forward trace", "forward trace, unrolled", "init_cache lm", "init_cache causal"}
    for r in data["results"].values():
        assert len(r["samples_s"]) == 2 and all(v > 0 for v in r["samples_s"])
    assert "init_cache causal: median" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "benchmarks.trace_bench", "--repeats", "0", "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--repeats 0" in bad.stderr


def test_chunked_dot_bench_quick_measures_both_ways(tmp_path):
    """`python -m benchmarks.chunked_dot_bench --quick`: products and a forward, plain and blocked, each
    with its distance from float64 and its interleaved timings."""
    proc, data = _quick_bench("benchmarks.chunked_dot_bench", tmp_path / "chunked.json")
    assert data["benchmark"] == "chunked_dot" and data["environment"]["cpu"]
    for row in data["products"]:
        assert row["chunks"] > 1 and set(row["rel_err_vs_float64"]) == {"xla_plain", "xla_blocked", "torch"}
        assert all(0 < e < 1e-4 for e in row["rel_err_vs_float64"].values())
        assert all(len(t["samples_s"]) == data["repeats"] for t in row["timings"].values())
    assert data["forwards"] and set(data["forwards"][0]["rel_err_vs_float64"]) == {"plain", "blocked"}


def test_attention_bench_quick_measures_both_orders(tmp_path):
    """`python -m benchmarks.attention_bench --quick`: attention and a forward with the probabilities
    first and post-normalised, each with its distance from float64, beside PyTorch, timed in rounds."""
    proc, data = _quick_bench("benchmarks.attention_bench", tmp_path / "attention.json")
    assert data["benchmark"] == "attention" and data["environment"]["cpu"]
    from flax_bart.modules import QUERY_BLOCK

    assert any(row["queries"] > QUERY_BLOCK for row in data["cores"])
    for row in data["cores"]:
        blocked = {"query_blocked"} if row["queries"] > QUERY_BLOCK else set()
        assert set(row["rel_err_vs_float64"]) == {"probs_first", "post_normalised", "torch_eager"} | blocked
        assert all(0 < e < 1e-4 for e in row["rel_err_vs_float64"].values())
        assert set(row["timings"]) == {"probs_first", "post_normalised", "torch_eager", "torch_sdpa"} | blocked
        assert all(len(t["samples_s"]) == data["repeats"] for t in row["timings"].values())
    fwd = data["forwards"][0]
    assert set(fwd["rel_err_vs_float64"]) == {"probs_first", "post_normalised", "transformers"}
    assert all(0 < e < 1e-4 for e in fwd["rel_err_vs_float64"].values())
    assert fwd["paired_ratios"]["post/probs_first"] > 0


def test_metrics_bench_quick_times_each_chunk_size(tmp_path):
    """`python -m benchmarks.metrics_bench --quick`: both comparisons at every chunk size, same metrics."""
    _, data = _quick_bench("benchmarks.metrics_bench", tmp_path / "metrics.json")
    assert data["benchmark"] == "metrics" and data["quick"] is True
    assert [r["case"] for r in data["results"]] == ["grad (ref, cand, float64 gold)", "logits rows"]
    for r in data["results"]:
        assert set(r["timings"]) == {str(1 << 18), str(1 << 16), str(1 << 14)}
        assert all(v["median_s"] > 0 for v in r["timings"].values())
