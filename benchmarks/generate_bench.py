"""Greedy generation side by side: flax_bart `generate` vs transformers' PyTorch `generate`.

BART-base shape with random weights (the same weights on both sides), batch 4, source length 256,
exactly 32 new tokens (min_new_tokens = max_new_tokens, identically on both sides), torch threads 2.
Reports tokens per second (batch * new tokens / wall time of one `generate` call, encoder
included), the median of several calls after warm-up (the two sides interleaved, so that load from
other processes hits both alike; CPU seconds per call are reported too), and flax's first call
(compile + run) in a fresh process. Also checks that both sides produced the same token ids.

`--dtype bfloat16` runs both sides in bfloat16 (flax_bart's params and compute, PyTorch's model cast).

Where flax_bart's decoding loop multiplies with (out, in) copies of the decoder's kernels
(`flax_bart.search._transposed_kernels`: float32 on a CPU), a third arm, interleaved with the other two,
times the same `generate` with the kernels as stored, so every run on every CPU type says whether the
copies pay there (`loop_kernels` in the JSON).

It also measures the floor of any exact greedy decoding in that dtype on this machine: the encoder pass and
the cross-attention K/V projections that every decoder layer computes once from its output (each the
faster of the two frameworks, measured alone), plus, for each new token, one read of the weights a
decoding step must touch (decoder weights except the cross-attention K/V projections, LM head) and
of the cached cross-attention K/V, at the memory bandwidth XLA reaches streaming an array of that
size (one read of it timed in the same interleaved rounds as the calls, since 2026-12-04; the JSON keeps
the fastest and slowest rounds' bandwidths). `torch median / floor` is the best ratio any implementation
could reach against this PyTorch.

    python -m benchmarks.generate_bench [--quick] [--repeats N] [--dtype float32|bfloat16]
                                        [--out reports/bench/generate.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from unittest import mock

import numpy as np

from benchmarks.common import SHAPES, add_allocator_flag, apply_allocator, finish, interleaved_times, paired_ratio

FULL = dict(shape="base", batch=4, source_length=256, new_tokens=32, repeats=7)
QUICK = dict(shape="tiny", batch=2, source_length=16, new_tokens=8, repeats=2)


DTYPES = ("float32", "bfloat16")


def run(shape: str, batch: int, source_length: int, new_tokens: int, repeats: int, torch_threads: int = 2,
        dtype: str = "float32") -> dict:
    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    from convert import pt_to_flax
    from flax_bart import BartConfig, FlaxBartForConditionalGeneration
    from flax_bart import search as _search

    torch.set_num_threads(torch_threads)
    cfg_kwargs = SHAPES[shape]
    torch.manual_seed(0)
    tmodel = transformers.BartForConditionalGeneration(transformers.BartConfig(**cfg_kwargs)).eval()
    config = BartConfig(**cfg_kwargs)
    params = pt_to_flax(tmodel.state_dict(), config, head="lm")   # the float32 weights, before any cast
    model = FlaxBartForConditionalGeneration(config, dtype=getattr(jnp, dtype), _do_init=False)
    if dtype == "bfloat16":
        params, tmodel = model.to_bf16(params), tmodel.to(torch.bfloat16)
    params = jax.block_until_ready(jax.device_put(params))

    rng = np.random.default_rng(0)
    ids = rng.integers(4, config.vocab_size, size=(batch, source_length)).astype(np.int32)
    mask = np.ones_like(ids)
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=1, do_sample=False)

    def flax_generate():
        out = model.generate(ids, attention_mask=mask, params=params, **settings)
        return np.asarray(jax.block_until_ready(out.sequences))

    ti, tm = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def torch_generate():
        with torch.inference_mode():
            return tmodel.generate(input_ids=ti, attention_mask=tm, **settings).numpy()

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    flax_ids = flax_generate()
    first_call_s = time.perf_counter() - t0
    torch_ids = torch_generate()  # warm-up
    flax_generate()
    fns = {"flax": flax_generate}
    transposed_used = _search.transposes_loop_kernels(model.module, batch, new_tokens)
    if transposed_used:
        def flax_stored_kernels():
            with mock.patch.object(_search, "TRANSPOSE_MAX_ROWS", -1):   # no (out, in) copies this call
                return flax_generate()
        fns["flax_stored_kernels"] = flax_stored_kernels
    stored_ids = fns["flax_stored_kernels"]() if transposed_used else None   # its own program: compiled here
    # The floor's memory bandwidth: a read of one step's bytes, timed in the same rounds as the calls
    # (measured apart, once, it moved between 30 and 44 GB/s from run to run while the calls did not).
    block, read = jnp.ones((floor_step_bytes(model, params, ids) // 4,), jnp.float32), jax.jit(lambda x: x.sum())
    jax.block_until_ready(read(block))
    stream = {"stream": lambda: jax.block_until_ready(read(block))}
    # interleaved, so that changes in the machine's load hit both sides alike
    timed = interleaved_times({**fns, "transformers": torch_generate, **stream}, repeats)
    flax_t, torch_t = ({**timed[k], "min_s": min(timed[k]["samples_s"])} for k in ("flax", "transformers"))

    tokens = batch * new_tokens
    flax_tps, torch_tps = tokens / flax_t["median_s"], tokens / torch_t["median_s"]
    floor = decoding_floor(model, params, tmodel, ids, mask, new_tokens, max(3, repeats // 2), timed["stream"])
    floor["best_possible_speedup"] = torch_t["median_s"] / floor["floor_s"]
    floor["share_of_floor_reached"] = floor["floor_s"] / flax_t["median_s"]
    return {
        "case": dict(shape=shape, batch=batch, source_length=source_length, new_tokens=new_tokens, dtype=dtype,
                     decoding="greedy", repeats=repeats, torch_threads=torch_threads),
        "flax": dict(first_call_s=first_call_s, tokens_per_s=flax_tps, **flax_t),
        "transformers": dict(tokens_per_s=torch_tps, **torch_t),
        "speedup": flax_tps / torch_tps,
        # fastest call of each side: what an uncontended machine gives when other processes come and go
        "speedup_best": torch_t["min_s"] / flax_t["min_s"],
        "first_call_s": first_call_s,
        "tokens_equal": bool(flax_ids.shape == torch_ids.shape and (flax_ids == torch_ids).all()),
        "generated_shape": list(flax_ids.shape),
        # a shared machine: other processes' load skews both sides (PyTorch's OpenMP threads most)
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
        "floor": floor,
        "loop_kernels": _loop_kernels_result(transposed_used, timed, stored_ids, flax_ids),
        "targets": {"speedup": ">= 3", "first_call_s": "<= 5"},
    }


def _loop_kernels_result(used: bool, timed: dict, stored_ids, flax_ids) -> dict:
    """Whether the decoding loop used (out, in) kernel copies and, if so, the interleaved arm without them."""
    if not used:
        return {"transposed_used": False}
    stored, flax_t = timed["flax_stored_kernels"], timed["flax"]
    return {"transposed_used": True, "stored_kernels": stored,
            "stored_over_transposed": stored["median_s"] / flax_t["median_s"],
            "stored_over_transposed_paired": paired_ratio(stored, flax_t),
            "tokens_equal": bool(np.array_equal(stored_ids, flax_ids))}


def floor_step_bytes(model, params, ids) -> int:
    """Bytes one decoding step must read (doc): the decoder's weights but the cross-attention K/V
    projections (applied once, before the loop), the LM head and its bias, the cached cross-attention K/V."""
    import jax.numpy as jnp
    from flax import traverse_util

    flat = traverse_util.flatten_dict(params, sep="/")
    once = ("encoder_attn/k_proj/", "encoder_attn/v_proj/")
    # (a step reads one row of the position table: not counted)
    weights = sum(v.nbytes for k, v in flat.items()
                  if ("/decoder/" in k and not any(o in k for o in once) and "embed_positions" not in k)
                  or k.endswith("shared/embedding")
                  or k.startswith("lm_head/") or k == "final_logits_bias")
    cfg = model.config
    itemsize = jnp.dtype(model.dtype).itemsize   # the cached cross-attention K/V are in the compute dtype
    return int(weights + 2 * cfg.decoder_layers * ids.shape[0] * ids.shape[1] * cfg.d_model * itemsize)


def decoding_floor(model, params, tmodel, ids, mask, new_tokens: int, repeats: int, stream: dict) -> dict:
    """Encoder times alone, bytes one decoding step must read, streaming bandwidth (from `stream`, the
    interleaved timing of one read of those bytes), and the floor (doc)."""
    import jax
    import jax.numpy as jnp
    import torch
    from flax import traverse_util

    ti, tm = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def torch_encode():
        with torch.inference_mode():
            tmodel.get_encoder()(input_ids=ti, attention_mask=tm)

    encoders = {"flax": lambda: jax.block_until_ready(
                    model.encode(ids, attention_mask=mask, params=params).last_hidden_state),
                "transformers": torch_encode}
    flat = traverse_util.flatten_dict(params, sep="/")
    once = ("encoder_attn/k_proj/", "encoder_attn/v_proj/")  # computed once into the cache
    # The cross-attention K/V of every decoder layer, projected once from the encoder's output: work any
    # exact decoder does once per call (PyTorch in its first step), timed in both frameworks alike.
    proj = {k[:-len("kernel")]: (v, flat[k[:-len("kernel")] + "bias"]) for k, v in flat.items()
            if any(o in k for o in once) and k.endswith("/kernel")}
    enc_j = jnp.zeros(ids.shape + (model.config.d_model,), model.dtype)
    cross_flax = jax.jit(lambda e, ws: [jnp.einsum("bsd,de->bse", e, w.astype(e.dtype)) + b.astype(e.dtype)
                                        for w, b in ws.values()])
    enc_t = torch.zeros(enc_j.shape, dtype=next(tmodel.parameters()).dtype)

    def torch_cross():
        with torch.inference_mode():
            for layer in tmodel.get_decoder().layers:
                layer.encoder_attn.k_proj(enc_t), layer.encoder_attn.v_proj(enc_t)

    encoders.update({"flax cross K/V": lambda: jax.block_until_ready(cross_flax(enc_j, proj)),
                     "transformers cross K/V": torch_cross})
    for fn in encoders.values():
        fn()   # warm-up (flax_bart: trace and compile)
    encoders = interleaved_times(encoders, repeats)   # all in turn, as the generate calls above
    enc_flax, enc_torch = encoders["flax"]["median_s"], encoders["transformers"]["median_s"]
    cross_s = min(encoders["flax cross K/V"]["median_s"], encoders["transformers cross K/V"]["median_s"])
    step_bytes = floor_step_bytes(model, params, ids)
    bandwidth = step_bytes / stream["median_s"]
    floor_s = min(enc_flax, enc_torch) + cross_s + new_tokens * step_bytes / bandwidth
    return {"encoder_s": {"flax": enc_flax, "transformers": enc_torch},
            "cross_kv_s": {"flax": encoders["flax cross K/V"]["median_s"],
                           "transformers": encoders["transformers cross K/V"]["median_s"]},
            "step_bytes": int(step_bytes), "bandwidth_gb_s": bandwidth / 1e9, "floor_s": floor_s,
            # the read's fastest and slowest rounds, as bandwidths
            "bandwidth_gb_s_range": [step_bytes / max(stream["samples_s"]) / 1e9,
                                     step_bytes / min(stream["samples_s"]) / 1e9],
            # the floor as computed before 2026-12-04, without the cross-attention K/V projections
            "floor_without_cross_kv_s": floor_s - cross_s}


def render(result: dict) -> str:
    f, t, fl = result["flax"], result["transformers"], result["floor"]
    c = result["case"]
    return "\n".join([
        f"greedy generate, BART-{c['shape']}, batch {c['batch']}, source {c['source_length']}, "
        f"{c['new_tokens']} new tokens, {c['dtype']}, torch threads {c['torch_threads']}, host allocator "
        f"{result['environment']['host_allocator']}",
        "| implementation | median s | fastest s | tokens/s (median) | median CPU s | first call s |",
        "|---|---|---|---|---|---|",
        f"| flax_bart | {f['median_s']:.3f} | {f['min_s']:.3f} | {f['tokens_per_s']:.1f} | {f['median_cpu_s']:.2f} | "
        f"{f['first_call_s']:.2f} |",
        f"| transformers (PyTorch) | {t['median_s']:.3f} | {t['min_s']:.3f} | {t['tokens_per_s']:.1f} | "
        f"{t['median_cpu_s']:.2f} | |",
        f"speedup (flax / transformers tokens/s): {result['speedup']:.2f} from medians, "
        f"{result['speedup_best']:.2f} from the fastest calls (target >= 3); "
        f"first call {result['first_call_s']:.2f} s (target <= 5); same token ids: {result['tokens_equal']}; "
        f"load average {result['load_average_1min']['start']:.1f} -> {result['load_average_1min']['end']:.1f}",
        f"floor of exact {c['dtype']} greedy decoding here: {fl['floor_s']:.3f} s = encoder {min(fl['encoder_s'].values()):.3f} s "
        f"(flax {fl['encoder_s']['flax']:.3f}, transformers {fl['encoder_s']['transformers']:.3f}) + cross-attention "
        f"K/V {min(fl['cross_kv_s'].values()):.3f} s (flax {fl['cross_kv_s']['flax']:.3f}, transformers "
        f"{fl['cross_kv_s']['transformers']:.3f}) + "
        f"{c['new_tokens']} x {fl['step_bytes'] / 1e6:.0f} MB at {fl['bandwidth_gb_s']:.1f} GB/s (rounds "
        f"{fl['bandwidth_gb_s_range'][0]:.1f}-{fl['bandwidth_gb_s_range'][1]:.1f}); best possible "
        f"speedup {fl['best_possible_speedup']:.2f}; flax_bart reaches {100 * fl['share_of_floor_reached']:.0f}% "
        "of the floor's speed",
        *_render_loop_kernels(result.get("loop_kernels", {})),
    ])


def _render_loop_kernels(lk: dict) -> list[str]:
    if not lk.get("transposed_used"):
        return ["decoding loop: kernels as stored (no (out, in) copies for this case)"]
    return [f"decoding loop with (out, in) kernel copies vs as stored (interleaved): stored / copies "
            f"{lk['stored_over_transposed']:.2f} (paired {lk['stored_over_transposed_paired']:.2f}; stored median "
            f"{lk['stored_kernels']['median_s']:.3f} s); same token ids: {lk['tokens_equal']}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.generate_bench")
    p.add_argument("--quick", action="store_true", help="tiny model: a smoke run, not a measurement")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="both sides' parameter and compute dtype")
    p.add_argument("--out", default="reports/bench/generate.json")
    add_allocator_flag(p)
    args = p.parse_args(argv)
    apply_allocator(args.allocator)
    case = dict(QUICK if args.quick else FULL)
    if args.repeats is not None:
        case["repeats"] = args.repeats
    return finish(run(**case, dtype=args.dtype), args.quick, args.out, render)


if __name__ == "__main__":
    sys.exit(main())
