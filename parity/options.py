"""Options of a parity run, their checks, and the input cases (bad input raises ParityInputError)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parity.checkpoint import Checkpoint, ParityInputError
from parity.tolerance import DEFAULT_POLICY, Policy, normalize_dtype

HEADS = ("base", "lm", "cls", "qa", "causal")
FLAX_DEVICES = ("cpu", "gpu", "tpu")
REFERENCES = ("builtin", "transformers")


@dataclass(frozen=True)
class Options:
    heads: tuple[str, ...] | None = None          # None: the checkpoint's own head
    dtypes: tuple[str, ...] = ("float32",)
    steps: int = 4
    seed: int = 0
    batch_size: int | None = None                 # None: 3, rounded up to a multiple of the mesh's batch axes
    seq_len: int | None = None
    cases: tuple[str, ...] | None = None          # None: every case of parity.inputs
    flax_devices: tuple[str, ...] = ("cpu",)
    torch_devices: tuple[str, ...] = ("cpu",)
    reference: str = "builtin"
    texts: tuple[str, ...] = ()
    policy: Policy = DEFAULT_POLICY
    run_name: str = "parity"
    mesh: str | None = None                       # "dp=2,tp=4": run the Flax side sharded (parity.mesh)
    grads: bool = False                           # also compare dLoss/dParam and 3 AdamW steps (parity.grad_check)
    grad_heads: tuple[str, ...] | None = None     # with grads: only these heads (None: every head run)
    attention: str = "auto"                       # the Flax model's attention_impl (flax_bart.attention_kernels)
    scan_layers: bool = True                      # compile each layer stack (decoding steps too) as one lax.scan
    max_length_dtypes: tuple[str, ...] | None = ("float32",)  # dtypes that run the default max_length case
    #                                               (None: every dtype); --cases max_length runs it in all
    compile_mode: str = "auto"                    # XLA backend optimisation: auto, fast (off), optimized (on)
    flax_jobs: int | None = None                  # Flax runs of a head side by side (None: flax_jobs())
    precision: str = "highest"                    # the Flax model's matmul precision: highest (on CPU, float32
    #                                               contractions summed in blocks: flax_bart.chunked_dot), or default


COMPILE_MODES = ("auto", "fast", "optimized")
PRECISIONS = ("highest", "default")   # Options.precision / --precision
# auto: a bucket whose forward pass costs less compiles with flax_bart.FAST_COMPILE (every dtype alike)
FAST_BELOW_FLOPS = 2e11
MIN_TOKENS = 256   # a bucket counts at least this many tokens: its decoding reads every weight at every step
COMPILE_BOUND_FLOPS = 2e10   # `compile_bound`: a test-sized model (about 39M parameters at MIN_TOKENS)


def _bucket_flops(n_params: int, tokens: int) -> float:
    return 2.0 * n_params * max(tokens, MIN_TOKENS)


def fast_compile(mode: str, n_params: int, tokens: int) -> bool:
    """Whether a shape bucket's programs compile with XLA's backend optimisation off (flax_bart.FAST_COMPILE).
    Each program of the gate runs once (forward, greedy) or a few times (the cached steps), so what counts
    is compiling plus one run. "auto" turns it on below FAST_BELOW_FLOPS (about 2 x parameters x tokens,
    tokens being rows x (encoder + decoder length), at least MIN_TOKENS). Measured cold, side by side on
    BART-base (2-core Intel Xeon with AVX-512 and AMX, natively and capped to AVX2 with `--xla_cpu_max_isa`;
    README, "Gate speed"): compiling fast roughly halves each program's compile time and costs 1.3-2x
    its run time, which pays for the gate's ordinary buckets (0.7-1.1e11 here: 1-15 rows of 12-32
    tokens; most of all for the greedy and cached-decoding loops, in every dtype) but not for the
    1 x 1024 `max_length` bucket (2.9-5.7e11): `qa`/`cls` float32 took 1.0-1.5 s longer with it fast.
    An earlier rule (float16 only below 2e9) dated from the float16 LM head that ran element by element in
    the decoding loop (fixed since, `flax_bart/search.py`)."""
    if mode != "auto":
        return mode == "fast"
    return _bucket_flops(n_params, tokens) < FAST_BELOW_FLOPS


def count_params(tree) -> int:
    """Number of parameters (elements) in a parameter tree."""
    import jax

    return sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(tree))


def flax_jobs(requested: int | None, mesh: bool, on_cpu: bool = True, n_params: int = 0) -> int:
    """How many Flax runs (the dtypes of one head) trace, compile and run side by side in threads, next to
    the PyTorch runs of the main thread (parity.jobs). `requested` (--flax-jobs) wins, except on a device
    mesh (always 1: its programs' collectives never run concurrently). By default: one per CPU core, at
    most 4, where the Flax side is mostly compiling, which XLA does on about one core: on an accelerator,
    or on a CPU for a test-sized model (`compile_bound`). A BART-size model on a CPU computes on every
    core already, and runs side by side only contend: on this project's 2-core AVX2 machine the BART-base
    demo matrix took 140 s instead of 130 s cold and 92 s instead of 83 s warm with 2 jobs, while the
    tiny 4 x 3 matrix took 45 s instead of 54 s cold (`python -m benchmarks.gate_bench --flax-jobs 1,default`)."""
    if requested is not None and requested < 1:
        raise ParityInputError(f"--flax-jobs {requested}: expected a number >= 1")
    if mesh:
        return 1
    if requested is not None:
        return requested
    if on_cpu and not compile_bound(n_params):
        return 1
    import os

    return max(1, min(4, os.cpu_count() or 1))


def estimated_params(config: dict) -> int:
    """A BART config's parameter count from its sizes alone (weights of the embeddings and the layers'
    matrices; biases and norms left out), for decisions taken before any weights are read."""
    d, vocab = int(config.get("d_model", 1024)), int(config.get("vocab_size", 50265))
    positions = int(config.get("max_position_embeddings", 1024)) + 2
    enc = int(config.get("encoder_layers", 12)) * (4 * d * d + 2 * d * int(config.get("encoder_ffn_dim", 4 * d)))
    dec = int(config.get("decoder_layers", 12)) * (8 * d * d + 2 * d * int(config.get("decoder_ffn_dim", 4 * d)))
    return vocab * d + 2 * positions * d + enc + dec


def compile_bound(n_params: int) -> bool:
    """Whether a model this size is test-sized: its gate programs cost more to compile than to run
    (below COMPILE_BOUND_FLOPS at MIN_TOKENS tokens: about 39M parameters)."""
    return _bucket_flops(n_params, MIN_TOKENS) < COMPILE_BOUND_FLOPS


def cases_for_dtype(cases: dict, dtype: str, opts: Options) -> dict:
    """A head's cases in `dtype`: the default `max_length` case (1 x max_position_embeddings, the costliest)
    runs only in `opts.max_length_dtypes`, unless --cases names it. The positions it proves are looked up
    the same way in every dtype; PyTorch's bf16/fp16 forward of that row cost 50-74 s per head and dtype on
    a CPU without AVX512-BF16 (BART-base, this project's AVX2 machine)."""
    explicit = opts.cases is not None and "max_length" in opts.cases
    if explicit or opts.max_length_dtypes is None or dtype in opts.max_length_dtypes:
        return cases
    return {name: case for name, case in cases.items() if name != "max_length"}


# ---- checking the options -------------------------------------------------------------------------
def choose(values, allowed, what: str) -> tuple[str, ...]:
    values = tuple(values)
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        raise ParityInputError(f"{what}: {', '.join(map(repr, bad)) or 'nothing given'}; expected some of "
                               f"{', '.join(allowed)}")
    return tuple(dict.fromkeys(values))


def check_dtypes(dtypes, what: str = "--dtypes") -> tuple[str, ...]:
    out = []
    for d in dtypes:
        try:
            name = normalize_dtype(d)
        except ValueError:
            raise ParityInputError(f"{what}: unknown dtype {d!r}; expected some of float32, bfloat16, float16") \
                from None
        if name == "float64":
            raise ParityInputError(f"{what}: float64 is the gold yardstick, not a compared dtype; "
                                   "expected some of float32, bfloat16, float16")
        out.append(name)
    if not out:
        raise ParityInputError(f"{what}: no dtype given")
    return tuple(dict.fromkeys(out))


def flax_device(name: str):
    import jax

    if name not in FLAX_DEVICES:
        raise ParityInputError(f"--flax-device {name!r}: expected one of {', '.join(FLAX_DEVICES)}")
    try:
        devices = jax.devices(name)
    except RuntimeError:
        devices = []
    if not devices:
        have = sorted({d.platform for d in jax.devices()})
        raise ParityInputError(f"--flax-device {name}: JAX finds no {name} device on this machine "
                               f"(available: {', '.join(have)})")
    return devices[0]


def torch_device(name: str):
    import torch

    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ParityInputError(f"--torch-device {name}: PyTorch finds no CUDA device on this machine")
        try:
            dev = torch.device(name)
        except RuntimeError as e:
            raise ParityInputError(f"--torch-device {name}: {e}") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ParityInputError(f"--torch-device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        return dev
    raise ParityInputError(f"--torch-device {name!r}: expected cpu or cuda[:N]")


# ---- inputs ---------------------------------------------------------------------------------------
def text_case(checkpoint: Checkpoint, head: str, texts) -> dict:
    """One case from user text, tokenized with the checkpoint's tokenizer (right padded)."""
    from flax_bart.tokenizer import BartTokenizer
    from parity.inputs import decoder_inputs

    try:
        tok = BartTokenizer.from_pretrained(checkpoint.directory)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise ParityInputError(f"--text needs the checkpoint's tokenizer, but none can be loaded from "
                               f"{checkpoint.directory}: {e}") from None
    cfg = checkpoint.config
    enc = tok(list(texts), padding=True, truncation=True, max_length=cfg.max_position_embeddings, return_tensors="np")
    ids = np.asarray(enc["input_ids"], np.int32)
    if ids.size == 0 or ids.shape[1] == 0:
        raise ParityInputError("--text: the texts tokenize to nothing")
    if int(ids.max()) >= cfg.vocab_size:
        raise ParityInputError(f"--text: the tokenizer produced id {int(ids.max())}, outside the model's vocabulary "
                               f"(vocab_size={cfg.vocab_size}): tokenizer and checkpoint do not belong together")
    case = {"input_ids": ids, "attention_mask": np.asarray(enc["attention_mask"], np.int32)}
    if head != "causal":
        case["decoder_input_ids"] = decoder_inputs(ids, cfg)
    return case


def input_cases(checkpoint: Checkpoint, heads, opts: Options) -> dict[str, dict[str, dict]]:
    """head -> {case name: inputs}, filtered by `opts.cases`."""
    from parity.inputs import cases_for_head
    from parity.mesh import check_batch, default_batch_size, parse_mesh

    if isinstance(opts.seed, bool) or not isinstance(opts.seed, int) or not 0 <= opts.seed < 2**64:
        raise ParityInputError(f"--seed {opts.seed!r}: expected an integer in [0, 2**64) (numpy's and "
                               "torch's generators are seeded with it)")
    mesh = parse_mesh(opts.mesh) if opts.mesh is not None else None
    batch_size = default_batch_size(mesh) if opts.batch_size is None else opts.batch_size
    if opts.texts:
        check_batch(mesh, len(opts.texts), f"--text (given {len(opts.texts)} times)")
    elif opts.batch_size is not None:
        check_batch(mesh, batch_size, f"--batch-size {batch_size}")
    out = {}
    for head in heads:
        if opts.texts:
            out[head] = {"text": text_case(checkpoint, head, opts.texts)}
            continue
        try:
            out[head] = cases_for_head(checkpoint.config, head, opts.seed, batch_size, opts.seq_len,
                                       row_multiple=1 if mesh is None else mesh.batch_shards)
        except ValueError as e:
            raise ParityInputError(f"inputs for head {head!r}: {e}") from None
    if opts.cases is not None and not opts.texts:
        known = sorted({c for cases in out.values() for c in cases})
        unknown = [c for c in opts.cases if c not in known]
        if unknown:
            raise ParityInputError(f"--cases: unknown case(s) {unknown}; the chosen heads have {known}")
        out = {h: {c: cases[c] for c in opts.cases if c in cases} for h, cases in out.items()}
        empty = [h for h, cases in out.items() if not cases]
        if empty:
            raise ParityInputError(f"--cases {','.join(opts.cases)} selects no input case for head(s) {empty}")
    return out

