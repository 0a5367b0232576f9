"""Where a greedy decoding step's time goes: per-step time of flax_bart's decoding loop, split by the
compiled program's own ops, with the bytes each group must read and the bandwidth it reaches.

    python -m benchmarks.decode_profile [--quick] [--shape base|large] [--batch 4] [--source-length 256]
                                        [--new-tokens 32] [--dtype float32|bfloat16] [--allocator tuned]
                                        [--out reports/bench/decode_profile.json]

The step time is the difference of two `generate` calls' medians (N and N/4 new tokens, interleaved),
divided by the steps between them: the encoder and the loop's set-up cancel. One more call of N tokens
runs under `jax.profiler`; every event of the decoding program (`hlo_module` jit_program) that ran once
per step is an op of the loop, and the op's metadata in the compiled HLO (`op_name`) puts it in a group:

- decoder weight products: the products with the decoder's kernels (q/k/v/out projections, fc1, fc2);
- LM head: the logits' product with the (vocab, d) table;
- attention products: the score and context products over the cached keys and values;
- other decoder ops: softmax, layer norms, activations, cache updates, the views of the cache;
- loop bookkeeping: the logits processors, the next token's choice, the carried state.

Bytes per step are what each group must read at least (the kernels it multiplies with, the table, the
cached K/V); the streaming bandwidth is XLA's sum over an array of the step's size, timed in the same
interleaved rounds as the calls, as in `benchmarks.generate_bench`'s floor. Op times are the
profiler's, summed over the threads that ran them (two ops on two cores count twice), so the groups can
add up to more than the step's wall time.
Written for and run on XLA:CPU only (no GPU was lent while it was built): it reads every profiler event
that names the program's module and an HLO op, which a GPU trace may lay out otherwise; with none found
it says so instead of printing a breakdown.
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import statistics
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import SHAPES, add_allocator_flag, apply_allocator, finish
from benchmarks.roofline import MODE_BYTES, decode_step_bytes

FULL = dict(shape="base", batch=4, source_length=256, new_tokens=32, repeats=7)
QUICK = dict(shape="tiny", batch=2, source_length=16, new_tokens=8, repeats=2)
GROUPS = ("decoder weight products", "LM head", "attention products", "other decoder ops", "loop bookkeeping")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_DENSE = re.compile(r"/(q_proj|k_proj|v_proj|out_proj|fc1|fc2)/")


def _loop_instructions(hlo_text: str):
    """(name, output dims, op_name) of each instruction of the program's decoding loop (`op_name` under
    while/body) in a compiled HLO text."""
    for line in hlo_text.splitlines():
        m, op = _INSTR.match(line), _OP_NAME.search(line)
        if m and op and "/while/body/" in op.group(1):
            yield m.group(1), [int(d) for d in m.group(3).split(",") if d], op.group(1)


def classify(hlo_text: str, vocab_size: int) -> dict[str, str]:
    """{instruction name: group} for the ops of the program's decoding loop; `op_names(hlo_text)` gives
    their metadata."""
    groups = {}
    for name, dims, op_name in _loop_instructions(hlo_text):
        product = op_name.endswith("dot_general")
        if product and _DENSE.search(op_name) and "model." in op_name:
            groups[name] = GROUPS[0]
        elif product and "model." not in op_name and vocab_size in dims:
            groups[name] = GROUPS[1]
        elif product and "_attn/" in op_name:
            groups[name] = GROUPS[2]
        elif "model." in op_name:
            groups[name] = GROUPS[3]
        else:
            groups[name] = GROUPS[4]
    return groups


def op_names(hlo_text: str) -> dict[str, str]:
    """{instruction name: its `op_name` metadata, from the loop's body on} of the loop's ops."""
    return {name: op_name.split("/while/body/", 1)[1] for name, _, op_name in _loop_instructions(hlo_text)}


def step_bytes(config, batch: int, source_length: int, cache_length: int, dtype: str) -> dict:
    """Bytes per group one step must read (`benchmarks.roofline.decode_step_bytes`): the decoder's kernels
    (not the cross-attention K/V projections, applied once before the loop), the LM table, the cached
    cross-attention and self-attention K/V."""
    mode = "bf16" if dtype == "bfloat16" else "fp32-exact"
    b = decode_step_bytes(config.to_dict(), batch, source_length, cache_length, mode)
    table = config.vocab_size * config.d_model * MODE_BYTES[mode]
    return {GROUPS[0]: b["weights"] - table, GROUPS[1]: table, GROUPS[2]: b["cross_kv"] + b["self_cache"]}


def _profile_ops(call, module_name: str = "jit_program") -> dict[str, list[float]]:
    """{hlo_op: [durations in s]} of one `call()` under the profiler, for the program `module_name`."""
    import jax
    from jax.profiler import ProfileData

    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d)
        try:
            call()
        finally:
            jax.profiler.stop_trace()
        data = ProfileData.from_file(glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0])
    ops = collections.defaultdict(list)
    for plane in data.planes:
        for line in plane.lines:
            for ev in line.events:
                stats = dict(ev.stats)
                if stats.get("hlo_module") == module_name and "hlo_op" in stats and not ev.name.startswith("end:"):
                    ops[stats["hlo_op"]].append(ev.duration_ns / 1e9)
    return ops


def run(shape: str, batch: int, source_length: int, new_tokens: int, repeats: int, dtype: str = "float32") -> dict:
    import jax
    import jax.numpy as jnp

    from flax_bart import BartConfig, FlaxBartForConditionalGeneration

    config = BartConfig(**SHAPES[shape])
    model = FlaxBartForConditionalGeneration(config, dtype=getattr(jnp, dtype), seed=0)
    params = model.params if dtype == "float32" else model.to_bf16(model.params)
    rng = np.random.default_rng(0)
    ids = rng.integers(4, config.vocab_size, size=(batch, source_length)).astype(np.int32)
    short = max(2, new_tokens // 4)

    def generate(n):
        out = model.generate(ids, attention_mask=np.ones_like(ids), params=params, max_new_tokens=n,
                             min_new_tokens=n, num_beams=1, do_sample=False)
        return jax.block_until_ready(out.sequences)

    generate(new_tokens), generate(short)   # compile both
    plans = [p for p in model.__dict__["_generate_programs"] if p.new_tokens == new_tokens]
    needed = step_bytes(config, batch, source_length, plans[0].prompt_slots + new_tokens - 1, dtype)
    total_bytes = sum(needed.values())
    block, read = jnp.ones((total_bytes // 4,), jnp.float32), jax.jit(lambda x: x.sum())
    jax.block_until_ready(read(block))
    calls = {new_tokens: lambda: generate(new_tokens), short: lambda: generate(short),
             "stream": lambda: jax.block_until_ready(read(block))}
    samples = {name: [] for name in calls}
    for _ in range(repeats):   # interleaved: other load hits the calls and the streaming read alike
        for name, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    long_s, short_s = (statistics.median(samples[n]) for n in (new_tokens, short))
    step_s = (long_s - short_s) / (new_tokens - short)

    programs, plan = model.__dict__["_generate_programs"], plans[0]
    program, captured = programs[plan], {}

    def spy(*args):
        captured["args"] = args
        return program(*args)

    programs[plan] = spy
    try:
        ops = _profile_ops(lambda: generate(new_tokens))
    finally:
        programs[plan] = program
    hlo = program.lower(*captured["args"]).compile().as_text()
    groups, names = classify(hlo, config.vocab_size), op_names(hlo)

    loop_steps = new_tokens - 1   # the first token comes from the last prompt slot's step, as every other
    per_group = dict.fromkeys(GROUPS, 0.0)
    top = []
    for name, durations in ops.items():
        if name in groups and len(durations) >= loop_steps:
            per_group[groups[name]] += sum(durations) / len(durations)
            top.append((sum(durations) / len(durations), name, groups[name]))
    bandwidth = total_bytes / statistics.median(samples["stream"])
    rows = {}
    for g in GROUPS:
        row = {"ms_per_step": per_group[g] * 1e3}
        if g in needed and per_group[g] > 0:
            row.update(mb_per_step=needed[g] / 1e6, gb_s=needed[g] / per_group[g] / 1e9,
                       share_of_streaming=needed[g] / per_group[g] / bandwidth)
        rows[g] = row
    return {
        "case": dict(shape=shape, batch=batch, source_length=source_length, new_tokens=new_tokens, dtype=dtype,
                     repeats=repeats, short_new_tokens=short),
        "generate_s": {"long": long_s, "short": short_s},
        "step_ms": step_s * 1e3,
        "step_ms_at_streaming": total_bytes / bandwidth * 1e3,
        "streaming_gb_s": bandwidth / 1e9,
        "streaming_gb_s_range": [total_bytes / max(samples["stream"]) / 1e9, total_bytes / min(samples["stream"]) / 1e9],
        "step_mb": total_bytes / 1e6,
        "groups": rows,
        "ops_summed_ms": sum(per_group.values()) * 1e3,
        "loop_ops": sum(1 for name, d in ops.items() if name in groups and len(d) >= loop_steps),
        "top_ops": [{"op": n, "group": g, "op_name": names.get(n), "ms_per_step": s * 1e3}
                    for s, n, g in sorted(top, reverse=True)[:16]],
    }


def _rounds(r: dict) -> str:
    low_high = r.get("streaming_gb_s_range")
    return f", rounds {low_high[0]:.1f}-{low_high[1]:.1f}" if low_high else ""


def render(r: dict) -> str:
    c = r["case"]
    lines = [f"greedy decoding step, BART-{c['shape']}, batch {c['batch']}, source {c['source_length']}, {c['dtype']}: "
             f"{r['step_ms']:.2f} ms a step (at streaming speed {r['step_ms_at_streaming']:.2f} ms: "
             f"{r['step_mb']:.0f} MB at {r['streaming_gb_s']:.1f} GB/s{_rounds(r)}); {r['loop_ops']} ops a step, "
             f"{r['ops_summed_ms']:.2f} ms summed over threads",
             "| group | ms / step | MB / step | GB/s | share of streaming |", "|---|---:|---:|---:|---:|"]
    for g, row in r["groups"].items():
        extra = (f"{row['mb_per_step']:.1f} | {row['gb_s']:.1f} | {100 * row['share_of_streaming']:.0f}%"
                 if "gb_s" in row else " | | ")
        lines.append(f"| {g} | {row['ms_per_step']:.3f} | {extra} |")
    if not r["loop_ops"]:
        lines.append("no op of the decoding loop was found in the profile (this device's trace layout is not "
                     "one this benchmark reads: it was written for XLA:CPU's)")
    lines.append("slowest ops: " + ", ".join(f"{o['op']} ({o['group']}) {o['ms_per_step']:.3f} ms" for o in r["top_ops"][:6]))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode_profile")
    p.add_argument("--quick", action="store_true", help="tiny model: a smoke run, not a measurement")
    p.add_argument("--shape", choices=("base", "large"), default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--source-length", type=int, default=None)
    p.add_argument("--new-tokens", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--out", default="reports/bench/decode_profile.json")
    add_allocator_flag(p)
    args = p.parse_args(argv)
    apply_allocator(args.allocator)
    case = dict(QUICK if args.quick else FULL)
    for key in ("shape", "batch", "source_length", "new_tokens", "repeats"):
        if getattr(args, key) is not None:
            case[key] = getattr(args, key)
    if case["new_tokens"] < 4:
        p.error(f"--new-tokens {case['new_tokens']}: expected at least 4")
    return finish(run(**case, dtype=args.dtype), args.quick, args.out, render)


if __name__ == "__main__":
    sys.exit(main())
