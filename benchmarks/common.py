"""Timing and environment helpers shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from importlib import metadata

import numpy as np

BART_BASE = dict(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                 decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024)
BART_LARGE = dict(BART_BASE, d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                  decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096)
TINY = dict(vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
SHAPES = {"base": BART_BASE, "large": BART_LARGE, "tiny": TINY}
# The smoke-run shape of the checkpoint-file benchmarks (convert, shard_load).
FILE_QUICK = dict(vocab_size=1000, d_model=64, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=128,
                  decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4,
                  max_position_embeddings=64)


def build_checkpoint(directory: str, shape: dict, seed: int = 0) -> dict:
    """config.json + model.safetensors (v5 layout, no tied copies), written tensor by tensor so that
    no more than one tensor is ever in memory; returns its parameter count, size and largest tensor."""
    import numpy as np

    from convert.rules import expected_pt_shapes
    from convert.safetensors_io import SafetensorsWriter
    from flax_bart.config import BartConfig

    config = BartConfig.from_dict({**shape, "architectures": ["BartForConditionalGeneration"]})
    config.save_pretrained(directory)
    specs = [(k, s, np.dtype(np.float32)) for k, s in expected_pt_shapes(config, "lm", tied="drop").items()]
    rng = np.random.default_rng(seed)
    writer = SafetensorsWriter(os.path.join(directory, "model.safetensors"), specs, {"format": "pt"})
    n, largest = 0, 0
    for key, s, _ in specs:
        arr = rng.random(s, dtype=np.float32) - np.float32(0.5)
        writer.write(key, arr)
        n, largest = n + arr.size, max(largest, arr.nbytes)
    writer.close()
    return {"parameters": n, "bytes": os.path.getsize(os.path.join(directory, "model.safetensors")),
            "largest_tensor_bytes": largest}


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports `ru_maxrss` in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


HEAD_OUTPUT = {"qa": "start_logits", "cls": "logits", "lm": "logits"}   # the output a forward bench reads per head


def rel_err(x, gold) -> float:
    """max |x - gold| / RMS(gold), in float64."""
    gold = np.asarray(gold, np.float64)
    return float(np.abs(np.asarray(x, np.float64) - gold).max() / np.sqrt(np.mean(gold ** 2)))


def median_time(fn, repeats: int, warmup: int = 1) -> dict:
    """Run `fn` `warmup` times, then time `repeats` runs; median and all samples in seconds."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(samples), "samples_s": samples}


def interleaved_times(fns: dict, repeats: int) -> dict:
    """Time several callables round by round (each runs once per round, in turn), so that load from
    other tenants of a shared machine falls on all of them alike. The callables must be warm already.
    Returns {name: {"median_s", "samples_s", "median_cpu_s"}} (CPU: this process's, all threads);
    sample i of every name comes from round i."""
    samples = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            samples[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {name: {"median_s": statistics.median(s), "samples_s": s, "median_cpu_s": statistics.median(cpu[name])}
            for name, s in samples.items()}


def paired_ratio(num: dict, den: dict) -> float:
    """Median over rounds of num's time / den's time in the same round (`interleaved_times`)."""
    return statistics.median(a / b for a, b in zip(num["samples_s"], den["samples_s"]))


def ratios(timings: dict, num: str, den: str, name: str) -> dict:
    """{name: ratio of the two arms' medians, name + "_paired": `paired_ratio`} for two arms of `timings`."""
    return {name: timings[num]["median_s"] / timings[den]["median_s"],
            f"{name}_paired": paired_ratio(timings[num], timings[den])}


def add_allocator_flag(parser) -> None:
    parser.add_argument("--allocator", choices=("tuned", "thresholds", "default"), default="tuned",
                        help="tuned (default): flax_bart.tune_host_allocator() first, as the CLI does; thresholds: "
                             "its mmap/trim thresholds without the one arena (one_arena=False); default: the C "
                             "library's malloc settings (the process-wide setting applies to both frameworks)")


def apply_allocator(choice: str) -> None:
    if choice in ("tuned", "thresholds"):
        from flax_bart.host_memory import tune_host_allocator

        tune_host_allocator(one_arena=choice == "tuned")


def environment() -> dict:
    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    env = {
        "machine": platform.machine(), "processor": platform.processor(), "platform": platform.platform(),
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "versions": {p: version(p) for p in ("jax", "jaxlib", "flax", "torch", "transformers", "numpy")},
        "env": {k: os.environ.get(k) for k in ("XLA_FLAGS", "OMP_NUM_THREADS", "JAX_PLATFORMS")},
    }
    from flax_bart.host_memory import host_allocator_state

    env["host_allocator"] = host_allocator_state()
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    try:
        import jax

        env["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception:  # pragma: no cover
        pass
    from parity import machine

    env["machine_fingerprint"] = machine.collect()
    env["cpu"] = machine.describe(env["machine_fingerprint"])
    return env


def write_json(path: str, data: dict) -> None:
    from flax_bart.io_utils import atomic_write_text

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def finish(result: dict, quick: bool, out: str, render) -> int:
    """A benchmark's last steps: mark the run quick or not, add the environment, write the JSON to `out`
    and print `render(result)`; the exit code 0."""
    result["quick"] = quick
    result["environment"] = environment()
    write_json(out, result)
    print(render(result))
    return 0
