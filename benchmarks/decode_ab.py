"""Variants of flax_bart's greedy `generate` side by side in one process: the same weights and inputs,
each variant in a model of its own (its own compiled program), calls interleaved round by round.

    python -m benchmarks.decode_ab [--quick] [--repeats 11] [--arm argmax] [--arm xla:OPTION=VALUE[,...]]
                                   [--out reports/bench/decode_ab.json]

Arms besides `default` (the library as it is):
- `argmax`: the next token by XLA's `jnp.argmax` instead of `flax_bart.search.first_argmax`;
- `xla:OPTION=VALUE,...`: the model built with those XLA `compiler_options` (`true`/`false` for booleans).
Reports each arm's median call, its paired ratio to `default` (median of the per-round ratios) and
whether it produced the same token ids. BART-base, batch 4, source 256, 32 new tokens, float32.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from unittest import mock

import numpy as np

from benchmarks.common import SHAPES, add_allocator_flag, apply_allocator, finish, paired_ratio

FULL = dict(shape="base", batch=4, source_length=256, new_tokens=32, repeats=11)
QUICK = dict(shape="tiny", batch=2, source_length=16, new_tokens=8, repeats=2)


def parse_arm(spec: str) -> dict:
    """An arm's description: {"name", "compiler_options", "xla_argmax"}; ValueError names a bad one."""
    if spec == "argmax":
        return {"name": spec, "compiler_options": None, "xla_argmax": True}
    if spec.startswith("xla:") and "=" in spec:
        opts = {}
        for item in spec[4:].split(","):
            key, sep, value = item.partition("=")
            if not key or not sep:
                raise ValueError(f"--arm {spec!r}: expected xla:OPTION=VALUE[,OPTION=VALUE...]")
            opts[key] = {"true": True, "false": False}.get(value.lower(), value)
        return {"name": spec, "compiler_options": opts, "xla_argmax": False}
    raise ValueError(f"--arm {spec!r}: expected 'argmax' or 'xla:OPTION=VALUE[,...]'")


def run(arms: list[dict], shape: str, batch: int, source_length: int, new_tokens: int, repeats: int) -> dict:
    import jax.numpy as jnp

    from flax_bart import BartConfig, FlaxBartForConditionalGeneration
    from flax_bart import search

    config = BartConfig(**SHAPES[shape])
    default = FlaxBartForConditionalGeneration(config, seed=0)
    params = default.params
    ids = np.random.default_rng(0).integers(4, config.vocab_size, size=(batch, source_length)).astype(np.int32)
    models = {"default": (default, False)}
    for arm in arms:
        models[arm["name"]] = (FlaxBartForConditionalGeneration(config, _do_init=False,
                                                                compiler_options=arm["compiler_options"]),
                               arm["xla_argmax"])

    traced_xla_argmax = set()   # the arms whose program was traced with XLA's argmax

    def xla_argmax_for(name):
        def pick(scores):
            traced_xla_argmax.add(name)
            return jnp.argmax(scores, axis=-1).astype(jnp.int32)
        return pick

    def call(name):
        model, xla_argmax = models[name]
        patch = mock.patch.object(search, "first_argmax", xla_argmax_for(name)) if xla_argmax \
            else contextlib.nullcontext()
        with patch:   # read when the program is traced (the first call); each model keeps its program
            out = model.generate(ids, attention_mask=np.ones_like(ids), params=params, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, num_beams=1, do_sample=False)
        return np.asarray(out.sequences)

    tokens = {name: call(name) for name in models}   # compiles each arm's program
    samples = {name: [] for name in models}
    for _ in range(repeats):
        for name in models:
            t0 = time.perf_counter()
            call(name)
            samples[name].append(time.perf_counter() - t0)
    base = {"samples_s": samples["default"]}
    return {
        "case": dict(shape=shape, batch=batch, source_length=source_length, new_tokens=new_tokens, repeats=repeats,
                     dtype="float32", decoding="greedy"),
        "arms": {name: {"median_s": statistics.median(s), "samples_s": s,
                        "paired_ratio_to_default": paired_ratio({"samples_s": s}, base),
                        "tokens_equal": bool(np.array_equal(tokens[name], tokens["default"])),
                        "xla_argmax": name in traced_xla_argmax}
                 for name, s in samples.items()},
    }


def render(result: dict) -> str:
    c = result["case"]
    lines = [f"greedy generate, BART-{c['shape']}, batch {c['batch']}, source {c['source_length']}, "
             f"{c['new_tokens']} new tokens, {c['repeats']} interleaved rounds",
             "| arm | median ms | paired ratio to default | same tokens |", "|---|---:|---:|---|"]
    for name, a in result["arms"].items():
        lines.append(f"| {name} | {a['median_s'] * 1e3:.1f} | {a['paired_ratio_to_default']:.3f} | {a['tokens_equal']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode_ab")
    p.add_argument("--quick", action="store_true", help="tiny model: a smoke run, not a measurement")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--arm", action="append", default=[], help="argmax, or xla:OPTION=VALUE[,...]; repeatable")
    p.add_argument("--out", default="reports/bench/decode_ab.json")
    add_allocator_flag(p)
    args = p.parse_args(argv)
    try:
        arms = [parse_arm(a) for a in (args.arm or ["argmax"])]
    except ValueError as e:
        p.error(str(e))
    apply_allocator(args.allocator)
    case = dict(QUICK if args.quick else FULL)
    if args.repeats is not None:
        case["repeats"] = args.repeats
    return finish(run(arms, **case), args.quick, args.out, render)


if __name__ == "__main__":
    sys.exit(main())
