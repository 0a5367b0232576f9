"""`flax-bart demo`: the parity matrix on a BART-base-shaped random checkpoint, end to end.

1. Build (once; cached on disk) a seeded random BART-base-shaped BartForConditionalGeneration
   checkpoint as transformers v5 writes it: `model.safetensors` + `config.json`. Biases, LayerNorms
   and `final_logits_bias` are drawn too, so that a port that drops them cannot pass.
2. Convert it to Flax with `convert.convert_checkpoint` (every run).
3. Run the parity matrix on CPU: heads qa, lm, cls; float32, bfloat16, float16 (qa and cls head weights
   are drawn from the seed, in both frameworks alike), with gradient parity (`--grads`) for head qa in
   every dtype, write the four reports, and compare with the
   committed baseline `reports/baselines/demo.json` (`demo-quick.json` for `--quick`, a tiny config);
   `--update-baseline` rewrites that file from a passing run (how the committed ones were made).

The cache lives in `$FLAX_BART_CACHE/demo` (default `~/.cache/flax-bart/demo`); a checkpoint appears
there atomically (built in a temporary folder, then renamed) and is reused when its recipe matches.
Compiled XLA programs are kept there too (`jax-compile/`, JAX's persistent compilation cache): a
second run skips most of the compiling, which is most of a first run's time on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

RECIPE_VERSION = 1
SEED = 0
BASE_SHAPE = dict(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                  decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                  max_position_embeddings=1024)
# The tests build their tiny checkpoints with the same config, so both share compiled Flax models.
QUICK_SHAPE = dict(vocab_size=99, d_model=16, encoder_layers=1, decoder_layers=3, encoder_attention_heads=4,
                   decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=20, max_position_embeddings=40,
                   scale_embedding=True, dropout=0.0)
# Gradient parity (`--grads`) for one head in every dtype: the cheapest head, whose loss still reaches
# every encoder and decoder parameter.
MATRIX = dict(heads=("qa", "lm", "cls"), dtypes=("float32", "bfloat16", "float16"), grad_heads=("qa",))
FULL_INPUTS = dict(batch_size=2, seq_len=32, steps=4,
                   cases=("right_padding", "fully_padded_row", "fully_masked_row", "qa_pairs", "classification"))
QUICK_INPUTS = dict(batch_size=2, seq_len=12, steps=2,
                    cases=("right_padding", "fully_padded_row", "fully_masked_row", "qa_pairs", "classification"))
REPO_ROOT = Path(__file__).resolve().parent.parent


def default_cache() -> Path:
    from flax_bart.compile_cache import cache_root

    return cache_root() / "demo"


def default_baseline(quick: bool) -> Path:
    return REPO_ROOT / "reports" / "baselines" / ("demo-quick.json" if quick else "demo.json")


def recipe(quick: bool) -> dict:
    shape = QUICK_SHAPE if quick else BASE_SHAPE
    return {"version": RECIPE_VERSION, "seed": SEED, "head": "lm", "config": dict(shape),
            "randomised": "normal(0, init_std) weights; 0.1 * normal biases, LayerNorms and final_logits_bias"}


def demo_config(quick: bool):
    from flax_bart.config import BartConfig

    return BartConfig.from_dict({**(QUICK_SHAPE if quick else BASE_SHAPE),
                                 "architectures": ["BartForConditionalGeneration"]})


def random_state_dict(config, seed: int = SEED) -> dict:
    """A seeded BartForConditionalGeneration state dict (transformers v5 key names, no tied copies)."""
    import torch

    from parity.reference import build_reference

    model = build_reference(config, "lm", seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype))
    return {k: v.contiguous() for k, v in model.hf_state_dict(tied_copies=False).items()}


def ensure_checkpoint(quick: bool, cache: Path, log=print) -> Path:
    """The cached random checkpoint directory, built atomically when missing or stale."""
    from safetensors.torch import save_file

    want = recipe(quick)
    target = cache / ("bart-quick-random" if quick else "bart-base-random")
    marker = target / "demo_recipe.json"
    try:
        if json.loads(marker.read_text()) == want and (target / "model.safetensors").is_file():
            return target
    except (OSError, ValueError):
        pass
    log(f"building the random {'tiny' if quick else 'BART-base-shaped'} checkpoint in {target} (cached for "
        "later runs)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache))
    try:
        config = demo_config(quick)
        save_file(random_state_dict(config), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        (tmp / "demo_recipe.json").write_text(json.dumps(want, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_baseline(report_json: Path, target: Path) -> None:
    """Store a report.json as a baseline: validated, compact (one line), written atomically."""
    from parity.report import load_report

    load_report(report_json)  # refuse to commit a report that does not validate
    data = json.loads(Path(report_json).read_text(encoding="utf-8"))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(data, separators=(",", ":"), allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def run_demo(out_dir, *, quick: bool = False, cache: Path | None = None, baseline: Path | None | bool = None,
             quiet: bool = False, update_baseline: bool = False) -> int:
    """Build/convert/check; returns the exit code (0 pass, 1 parity failure or regression, 2 bad input)."""
    import time

    from convert import convert_checkpoint
    from parity.cli import run_gate
    from parity.harness import Options

    say = (lambda msg: None) if quiet else (lambda msg: print(msg, flush=True))
    t0 = time.perf_counter()
    cache = Path(cache) if cache is not None else default_cache()
    checkpoint = ensure_checkpoint(quick, cache, log=say)
    flax_dir = cache / (checkpoint.name + "-flax")
    t1 = time.perf_counter()
    summary = convert_checkpoint(str(checkpoint), str(flax_dir), to="flax", overwrite=True)
    say(f"converted to Flax in {time.perf_counter() - t1:.1f} s: {summary.one_line()}")
    if baseline is None:
        baseline = default_baseline(quick)
        if not baseline.is_file():
            say(f"no committed baseline at {baseline}: skipping the regression check")
            baseline = False
    inputs = QUICK_INPUTS if quick else FULL_INPUTS
    opts = Options(heads=MATRIX["heads"], dtypes=MATRIX["dtypes"], steps=inputs["steps"], seed=SEED,
                   grads=True, grad_heads=MATRIX["grad_heads"],
                   batch_size=inputs["batch_size"], seq_len=inputs["seq_len"], cases=inputs["cases"],
                   run_name=Path(os.path.abspath(out_dir)).name)
    # The committed baseline was recorded on one machine; on another the comparison is judged in
    # tolerance units with the cross-machine floor (parity.regression), so the demo's verdict does not
    # depend on the CPU type that recorded it.
    code = run_gate(str(checkpoint), str(flax_dir), opts, out_dir, baseline=baseline or None, quiet=quiet)
    if update_baseline:
        target = default_baseline(quick)
        if code != 0:
            say(f"not updating {target}: the run did not pass")
        else:
            write_baseline(Path(out_dir) / "report.json", target)
            say(f"baseline updated: {target}")
    say(f"demo finished in {time.perf_counter() - t0:.0f} s: {_status(out_dir, code)} (exit code {code})")
    return code


def _status(out_dir, code: int) -> str:
    """The outcome word the reports state (PASS/FAIL/REGRESSION/ERROR)."""
    from parity.report import ReportError, load_report

    try:
        return load_report(Path(out_dir) / "report.json").status
    except ReportError:
        return {0: "PASS", 2: "ERROR"}.get(code, "FAIL")


def demo_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="flax-bart demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="report directory (default reports/demo, reports/demo-quick)")
    p.add_argument("--quick", action="store_true", help="a tiny config instead of BART-base (for tests)")
    p.add_argument("--cache-dir", default=None, help="where the random checkpoint is kept (default "
                                                     "$FLAX_BART_CACHE/demo or ~/.cache/flax-bart/demo)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--baseline", default=None, help="baseline report.json (default: the committed one)")
    group.add_argument("--no-baseline", action="store_true", help="skip the regression check")
    group.add_argument("--update-baseline", action="store_true",
                       help="write this run's report.json as the committed baseline (when it passes)")
    p.add_argument("--compile-cache", default=None, metavar="DIR",
                   help="keep compiled XLA programs for the next run (default: jax-compile/<CPU ISA and jax "
                        "key> in the cache dir)")
    p.add_argument("--no-compile-cache", action="store_true", help="compile from scratch, keep nothing")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    out = args.out or os.path.join("reports", "demo-quick" if args.quick else "demo")
    cache = Path(args.cache_dir) if args.cache_dir else default_cache()
    from parity.cli import tune_allocator_for

    tune_allocator_for(("cpu",), test_sized=args.quick)   # before JAX starts (flax_bart.host_memory)
    if not args.no_compile_cache:
        from parity.cli import enable_compile_cache
        from parity.machine import compile_key

        enable_compile_cache(args.compile_cache or cache / "jax-compile" / compile_key())
    baseline = False if (args.no_baseline or args.update_baseline) else (Path(args.baseline) if args.baseline else None)
    return run_demo(out, quick=args.quick, cache=cache, baseline=baseline, quiet=args.quiet,
                    update_baseline=args.update_baseline)
