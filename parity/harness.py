"""The parity harness: run the PyTorch reference and flax_bart on the same inputs and judge every tensor.

For each head, dtype and (Flax device, PyTorch device) pair, the column of the report lists, in
forward order: every hidden state, attention and cross-attention of each input case and the head's
outputs; then teacher-forced cached decoding (per step logits and last hidden state, Flax vs PyTorch,
and cached vs uncached inside each framework); then greedy decoding: token ids and per-step processed
scores (generate's `output_scores`). Cached decoding exists for the heads that decode ("lm",
"causal", "base": hidden states only), greedy decoding for "lm" and "causal".

fp32 compares Flax fp32 with PyTorch fp32 under `jax.default_matmul_precision("highest")`, the Flax
model built with `precision="highest"` (`--precision`): on CPU its float32 contractions are then summed
in blocks, as PyTorch's GEMM sums them (flax_bart.chunked_dot); XLA's own dot sums them term after term,
and on an AVX2 EPYC that put the demo's float32 LM logits at 0.99 of rtol (0.49 for the worst float32
tensor with the blocks). fp16/bf16
also run the reference in float64 as the gold yardstick (see `parity.tolerance`), once per head, shared
by every dtype; a float32 tensor outside rtol is judged against it too (run then if no low-precision
dtype is in the matrix). Low-precision greedy
ids are compared only while the float64 run's top-1/top-2 margin exceeds twice the error bound the
policy allows there: closer calls are near-ties that either framework may break either way.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from parity.checkpoint import Checkpoint, ParityInputError, open_checkpoint
from parity.judge import GREEDY_NOTE, gold_margins, judge_head
from parity.options import (
    COMPILE_MODES, PRECISIONS, FAST_BELOW_FLOPS, FLAX_DEVICES, HEADS, MIN_TOKENS, REFERENCES, Options, cases_for_dtype,
    check_dtypes, choose, count_params, flax_device, flax_jobs, input_cases, torch_device,
)
from parity.flax_batch import run_buckets
from parity.jobs import FlaxJobs
from parity.mesh import build_mesh, parse_mesh
from parity import machine
from parity.timing import CompileMeter
from parity.report import Environment, RunReport
from parity.runners import DECODING_HEADS, GREEDY_HEADS, FlaxRunner, TorchRunner, new_tokens
from parity.tolerance import LOW_PRECISION
from parity.weights import GROUP as WEIGHTS_GROUP, compare_weights

MATMUL_PRECISION = "highest"


@dataclass
class Outcome:
    report: RunReport
    checkpoint: Checkpoint
    seconds: float
    timings: dict = field(default_factory=dict)

    @property
    def nan_weights(self) -> list[str]:
        return self.checkpoint.nan_messages()


# ---- building the two models ----------------------------------------------------------------------
def _reference(checkpoint: Checkpoint, head: str, sd, opts: Options):
    import torch

    if opts.reference == "transformers":
        from parity.reference import load_transformers_reference

        return load_transformers_reference(checkpoint.config, head, sd, dtype=torch.float32, attn_impl="eager")
    from parity.reference import build_reference

    return build_reference(checkpoint.config, head, sd, dtype=torch.float32, attn_impl="eager")


def _cast_reference(base, dtype: str, device, checkpoint: Checkpoint | None = None, head: str = "", sd=None,
                    opts: Options | None = None):
    """A copy of the float32 reference in `dtype` on `device` (casting, as `model.to(dtype)` does). The
    built-in reference of a 16-bit dtype is built from the state dict `sd` straight in that dtype
    when given (the same values: no weight there is wider than float32, so rounding it once gives what
    the float32 copy cast gives; 2-4x quicker than copying the float32 model and casting it)."""
    import torch

    tdtype = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
              "bfloat16": torch.bfloat16}[dtype]
    if (sd is not None and opts is not None and opts.reference == "builtin" and dtype in ("float16", "bfloat16")
            and all(getattr(v, "dtype", None) != np.float64 for v in sd.values())):   # no double rounding
        from parity.reference import build_reference

        return build_reference(checkpoint.config, head, sd, dtype=tdtype, device=device, attn_impl="eager")
    ref = copy.deepcopy(base)
    module = getattr(ref, "model", None) if not isinstance(ref, torch.nn.Module) else ref
    module.to(device=device, dtype=tdtype)
    return ref


# Flax models by (config, head, dtype), so that repeated runs in one process (tests, a notebook, the
# demo after a gate) reuse their compiled functions. Models hold no weights; a few entries suffice.
_MODELS: dict = {}
_MODELS_MAX = 12
_MODELS_LOCK = threading.Lock()   # Flax jobs of several dtypes build their models side by side (parity.jobs)


def flax_model(config, head: str, dtype: str, mesh=None, attention: str = "auto",
               scan_layers: bool = True, fast_compile: bool = False, precision: str = "highest"):
    """The Flax model of (config, head, dtype, attention_impl), cached; with a mesh, one that runs on it
    (`model.mesh`). Layer stacks, decoding steps included, compile as one scan by default
    (flax_bart.layer_scan, `scan_layers="all"`): each program here runs a few times, so compile time is
    what counts. `fast_compile`: compiled with
    flax_bart.FAST_COMPILE (parity.options.fast_compile). `precision`: "default" or "highest", the
    model's `precision` (on CPU, "highest" sums float32 contractions in blocks: flax_bart.chunked_dot)."""
    import jax.numpy as jnp

    from flax_bart import FAST_COMPILE
    from flax_bart.models import MODEL_CLASSES

    fields = {f: getattr(config, f) for f in config.__dataclass_fields__ if f not in ("extra", "labels_given")}
    mesh_key = None if mesh is None else (mesh.axis_names, mesh.devices.shape, tuple(d.id for d in mesh.devices.flat))
    key = (json.dumps(fields, sort_keys=True, default=str), head, dtype, mesh_key, attention, scan_layers,
           fast_compile, precision)
    with _MODELS_LOCK:
        model = _MODELS.pop(key, None)
        if model is None:
            jdtype = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}[dtype]
            model = MODEL_CLASSES[head](config, dtype=jdtype, _do_init=False, attention_impl=attention,
                                        scan_layers="all" if scan_layers else False,
                                        compiler_options=FAST_COMPILE if fast_compile else None,
                                        precision=None if precision == "default" else precision)
            model.mesh = mesh
        _MODELS[key] = model  # most recently used last
        while len(_MODELS) > _MODELS_MAX:
            _MODELS.pop(next(iter(_MODELS)))
        return model


def attention_for(requested: str, device) -> str:
    """The attention_impl of a Flax column: "auto" decides by JAX's default backend, so a column on
    another platform (--flax-device cpu on a GPU machine) gets the explicit path."""
    import jax

    if requested == "auto" and device.platform != jax.default_backend():
        return "explicit"
    return requested


def _cast_params(model, params, dtype: str):
    """`params` as the model's `to_fp32`/`to_bf16`/`to_fp16` give them, bit for bit, for the gate: a numpy
    leaf already in `dtype` is passed on as it is (device_put copies it anyway), float32 -> float16
    goes through PyTorch's vectorised conversion (round to nearest even like numpy's, which converts
    one element at a time: 0.6 s of every float16 run of BART-base), and float32 -> bfloat16 through
    ml_dtypes' (the same bits as the model's jnp cast, NaN included; BART-base 0.1-0.2 s against 0.22 s,
    and no 0.6 s first call compiling the cast). Any other leaf: the model's cast."""
    import jax
    import ml_dtypes

    target = np.dtype({"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}[dtype])
    leaves, treedef = jax.tree_util.tree_flatten(params)
    out = []
    for x in leaves:
        if not isinstance(x, np.ndarray):
            break
        if x.dtype == target:
            out.append(x)
        elif target == np.float16 and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.writeable:
            import torch

            out.append(torch.from_numpy(x).to(torch.float16).numpy())
        elif target == ml_dtypes.bfloat16 and x.dtype == np.float32:
            with np.errstate(invalid="ignore"):   # NaN weights stay NaN (and the report counts them)
                out.append(x.astype(target))
        else:
            break
    else:
        return jax.tree_util.tree_unflatten(treedef, out)
    return {"float32": model.to_fp32, "float16": model.to_fp16, "bfloat16": model.to_bf16}[dtype](params)


def _flax_runner(checkpoint: Checkpoint, head: str, params, dtype: str, device, mesh=None,
                 attention: str = "auto", scan_layers: bool = True, compile_mode: str = "auto",
                 precision: str = "highest") -> FlaxRunner:
    import jax

    models = [flax_model(checkpoint.config, head, dtype, mesh, attention_for(attention, device), scan_layers,
                         fast_compile=fast, precision=precision) for fast in ((False, True) if compile_mode == "auto" else
                                                          (compile_mode == "fast",))]
    model = models[0]
    cast = _cast_params(model, params, dtype)
    if mesh is None:
        placed = jax.device_put(cast, device)
    else:
        from flax_bart.sharding import shard_params

        placed = shard_params(cast, mesh, config=checkpoint.config)
    return FlaxRunner(model, placed, head, checkpoint.config, fast_model=models[1] if len(models) > 1 else None,
                      compile_mode=compile_mode)


def _attention_kernels(requested: str, fdevs: dict, dtypes, config) -> str:
    """What computes attention in each Flax column and dtype (for the report); a combination the
    requested attention_impl cannot run is a ParityInputError before anything runs."""
    from flax_bart.attention_kernels import ATTENTION_IMPLS, choose_kernel

    if requested not in ATTENTION_IMPLS:
        raise ParityInputError(f"--attention {requested!r}: expected one of {', '.join(ATTENTION_IMPLS)}")
    head_dims = sorted({config.d_model // config.encoder_attention_heads,
                        config.d_model // config.decoder_attention_heads})
    parts = []
    for label, (dev, _) in fdevs.items():
        impl = attention_for(requested, dev)
        per_dtype = []
        for dtype in dtypes:
            try:
                kernels = {choose_kernel(impl, dtype, hd, dropout_active=False) or "explicit" for hd in head_dims}
            except ValueError as e:
                raise ParityInputError(f"--attention {requested} ({label}, {dtype}): {e}") from None
            per_dtype.append(f"{dtype} {'/'.join(sorted(kernels))}")
        parts.append(f"{label}: " + ", ".join(per_dtype))
    return f"requested {requested}; " + "; ".join(parts)


def _check_mesh(config, head: str, spec) -> None:
    from flax_bart.sharding import ShardingError, partition_specs

    try:
        partition_specs(flax_model(config, head, "float32").params_shape_tree(), dict(spec.axes), config=config)
    except ShardingError as e:
        raise ParityInputError(f"--mesh {spec.label} does not fit head {head!r}: {e}") from None


# ---- running one framework ------------------------------------------------------------------------
def _greedy_result(greedy: dict) -> dict:
    return {"greedy": greedy["ids"], "greedy_scores": greedy["scores"], "greedy_steps": greedy["steps"]}


def _run_torch(runner: TorchRunner, head: str, cases: dict, steps: int) -> dict:
    out = {}
    for name, case in cases.items():
        fwd, enc = runner.forward(case)
        res = {"forward": fwd}
        if steps and head in DECODING_HEADS:
            res["steps"] = runner.cached_steps(case, enc, steps)
        if head in GREEDY_HEADS and new_tokens(head, case, steps, runner.config):
            res.update(_greedy_result(runner.greedy(case, steps)))
        out[name] = res
    return out


def _run_flax(runner: FlaxRunner, head: str, cases: dict, steps: int, device) -> tuple[dict, dict]:
    """Like `_run_torch`, with the cases merged into shape buckets (parity.flax_batch); and the buckets.
    On a mesh (`runner.model.mesh`), the model splits each batch itself; the mesh and batch sizes were
    checked against the model before anything ran."""
    import jax

    with jax.default_device(device):
        return run_buckets(runner, head, cases, steps)


def _gold(base, head: str, cfg, cases: dict, steps: int) -> dict:
    """The PyTorch reference in float64 on the CPU over every case, with the greedy margins."""
    import torch

    runner = TorchRunner(_cast_reference(base, "float64", torch.device("cpu")), head, cfg)
    gold = _run_torch(runner, head, cases, steps)
    for cname, case in cases.items():
        if "greedy" in gold[cname]:
            gold[cname]["margins"] = gold_margins(runner, head, case, gold[cname]["greedy"])
    return gold


def _outside_rtol(report, cols: list[dict], marks: list[int]) -> bool:
    """Whether a float32 tensor judged since `marks` failed rule 4 alone where a gold run could pass it
    (not greedy decoding's rows: float32 judges them without the gold)."""
    return any(r.verdict.metric == "max_rel_err" and not r.verdict.passed and r.metrics.count > 0
               and not r.metrics.nonfinite and r.metrics.kind not in ("grad", "param") and r.group != "generate"
               for col, mark in zip(cols, marks) for r in report.column(**col).results[mark:])


# ---- the run --------------------------------------------------------------------------------------
def run_parity(checkpoint_path, flax_path=None, opts: Options = Options(), log=None) -> Outcome:
    """Run the whole matrix and return the report (not yet written). Bad input: ParityInputError."""
    import jax
    import torch

    t_start = time.perf_counter()
    say = log or (lambda msg: None)
    dtypes = check_dtypes(opts.dtypes)
    if opts.max_length_dtypes is not None:
        opts = dataclasses.replace(opts, max_length_dtypes=check_dtypes(opts.max_length_dtypes, "--max-length-dtypes"))
        if not set(opts.max_length_dtypes) & set(dtypes):
            # e.g. --dtypes bfloat16,float16: the positions past --seq-len are still proved, in one dtype
            opts = dataclasses.replace(opts, max_length_dtypes=dtypes[:1])
    if opts.reference not in REFERENCES:
        raise ParityInputError(f"--reference {opts.reference!r}: expected one of {', '.join(REFERENCES)}")
    if opts.compile_mode not in COMPILE_MODES:
        raise ParityInputError(f"--compile-mode {opts.compile_mode!r}: expected one of {', '.join(COMPILE_MODES)}")
    if opts.precision not in PRECISIONS:
        raise ParityInputError(f"--precision {opts.precision!r}: expected one of {', '.join(PRECISIONS)}")
    if opts.steps < 0:
        raise ParityInputError(f"--steps {opts.steps}: expected a number >= 0")
    mesh_spec = parse_mesh(opts.mesh) if opts.mesh is not None else None
    flax_jobs(opts.flax_jobs, mesh_spec is not None)   # a bad --flax-jobs fails before anything runs
    fdevs = {}  # column label -> (first device, mesh or None)
    for name in choose(opts.flax_devices, FLAX_DEVICES, "--flax-device"):
        dev = flax_device(name)
        if mesh_spec is None:
            fdevs[name] = (dev, None)
        else:
            fdevs[mesh_spec.column_label(name)] = (dev, build_mesh(mesh_spec, name))
    tdevs = {name: torch_device(name) for name in dict.fromkeys(opts.torch_devices)}
    if not tdevs:
        raise ParityInputError("--torch-device: nothing given")
    if opts.reference == "transformers":
        from parity.reference import _import_transformers

        try:
            _import_transformers()
        except ImportError as e:
            raise ParityInputError(str(e)) from None

    ckpt = open_checkpoint(checkpoint_path, flax_path)
    heads = choose(opts.heads or (ckpt.source_head,), HEADS, "--heads")
    grad_heads = heads
    if opts.grads and opts.grad_heads is not None:
        grad_heads = choose(opts.grad_heads, heads, "--grad-heads (among --heads)")
    cases = input_cases(ckpt, heads, opts)
    cfg = ckpt.config
    if mesh_spec is not None:  # before anything runs: the mesh must fit every head's parameters
        for head in heads:
            _check_mesh(cfg, head, mesh_spec)
    attention = _attention_kernels(opts.attention, fdevs, dtypes, cfg)
    say(f"checkpoint {ckpt.path} ({ckpt.source_head}); Flax weights {ckpt.flax_origin}")
    env_extra = {
        "attention": attention,
        "flax_precision": {"default": "default (XLA's float32 dot)",
                           "highest": "highest (float32 contractions summed in blocks on CPU, flax_bart.chunked_dot)"
                           }[opts.precision],
        "layer_stacks": "one lax.scan per stack (decoding steps included)" if opts.scan_layers else "unrolled",
        "max_length_dtypes": "all" if opts.max_length_dtypes is None else ",".join(opts.max_length_dtypes),
        "xla_compile": {"auto": "auto: backend optimisation off (flax_bart.FAST_COMPILE) for shape buckets under " +
                                f"{FAST_BELOW_FLOPS / 1e9:g} GFLOP a forward pass (at least {MIN_TOKENS} tokens counted), on above",
                        "fast": "backend optimisation off (flax_bart.FAST_COMPILE) for every program",
                        "optimized": "XLA's default optimisation for every program"}[opts.compile_mode],
        "checkpoint": str(ckpt.path), "flax_weights": ckpt.flax_origin, "reference": opts.reference,
        **machine.software_versions(opts.reference),
        "heads": ",".join(heads), "dtypes": ",".join(dtypes), "seed": opts.seed, "steps": opts.steps,
        "cases": ";".join(f"{h}:{','.join(c)}" for h, c in cases.items()),
        "torch_threads": torch.get_num_threads(), "gold": "PyTorch reference in float64 on cpu",
        "mesh": "none" if mesh_spec is None else
        f"{mesh_spec.label} ({mesh_spec.size} devices per platform, flax_bart.sharding.DEFAULT_RULES)",
    }
    devices = [f"jax {d} ({getattr(d, 'device_kind', d.platform)})" +
               ("" if m is None else f" and the next {m.size - 1}, mesh {mesh_spec.label}")
               for d, m in fdevs.values()]
    devices += [f"torch {d}" + (f" ({torch.cuda.get_device_name(d)})" if d.type == "cuda" else "")
                for d in tdevs.values()]
    report = RunReport(opts.run_name, Environment.collect(devices=devices,
                                                          matmul_precision=MATMUL_PRECISION, extra=env_extra),
                       policy=opts.policy, config_hash=ckpt.config_hash())   # checkpoint_hash: at the end (parity.checkpoint)
    for dtype in dtypes:
        for fd in fdevs:
            for td in tdevs:
                report.column(dtype, fd, td)
    if any(d in LOW_PRECISION for d in dtypes) and any(h in GREEDY_HEADS for h in heads) and opts.steps:
        report.notes.append(GREEDY_NOTE)
    skipped = [d for d in dtypes if any("max_length" in cases[h] and "max_length" not in cases_for_dtype(cases[h], d, opts)
                                        for h in heads)]
    if skipped:
        report.notes.append(f"The max_length case (one row of max_position_embeddings tokens) ran in "
                            f"{', '.join(d for d in dtypes if d not in skipped) or 'no compared dtype'}, not in "
                            f"{', '.join(skipped)}: the positions it proves are looked up alike in every dtype "
                            "(--max-length-dtypes all runs it everywhere).")
    timings = {"torch_s": 0.0, "flax_s": 0.0, "flax_wait_s": 0.0, "compare_s": 0.0}
    steps_timing: dict[str, dict] = {}  # "head/dtype" -> seconds (parity.timing)
    greedy_paths = set()
    buckets: dict[str, dict] = {}  # head -> the Flax side's shape buckets (parity.flax_batch)
    low = any(d in LOW_PRECISION for d in dtypes)
    bar = progress_bar(len(heads) * (len(dtypes) * (len(tdevs) + len(fdevs)) + low), disable=log is None)

    def flax_job(head, params, dtype, fd, dcases):
        """One Flax run (maybe in a worker thread): (outputs, bucket layout, CompileMeter, greedy path)."""
        fdev, mesh = fdevs[fd]
        with jax.default_matmul_precision(MATMUL_PRECISION), CompileMeter() as meter:
            runner = _flax_runner(ckpt, head, params, dtype, fdev, mesh, opts.attention, opts.scan_layers,
                                  opts.compile_mode, opts.precision)
            out, layout = _run_flax(runner, head, dcases, opts.steps, fdev)
            return out, layout, meter, runner.greedy_path

    on_cpu = all(dev.platform == "cpu" for dev, _ in fdevs.values())
    jobs_used: dict[str, int] = {}
    with jax.default_matmul_precision(MATMUL_PRECISION):
        for head in heads:
            sd = ckpt.reference_weights(head, opts.seed)
            params = ckpt.flax_weights(head, sd)
            jobs_used[head] = flax_jobs(opts.flax_jobs, mesh_spec is not None, on_cpu, count_params(params))
            with FlaxJobs(jobs_used[head]) as jobs:   # a failure drops the head's Flax runs not started
                per_dtype = {d: cases_for_dtype(cases[head], d, opts) for d in dtypes}
                for dtype in dtypes:   # started now in worker threads when there are several (parity.jobs)
                    for fd in fdevs:
                        jobs.submit((dtype, fd), lambda h=head, p=params, d=dtype, f=fd, c=per_dtype[dtype]:
                                    flax_job(h, p, d, f, c))
                base = _reference(ckpt, head, sd, opts)
                gold = None
                grad_check = None
                if opts.grads and head in grad_heads:
                    from parity.grad_check import GradCheck

                    grad_check = GradCheck(ckpt, head, sd, params, cases[head], opts)
                # the gold covers what a low-precision dtype runs, and float32's cases for rule 4's fallback
                gold_cases = {n: c for d in dtypes for n, c in per_dtype[d].items()}

                def run_gold(base=base):   # bound here; deleted with `base` after the head
                    bar.set_description(f"{head} float64 gold")
                    t0 = time.perf_counter()
                    out = _gold(base, head, cfg, gold_cases, opts.steps)
                    timings["torch_s"] += time.perf_counter() - t0
                    steps_timing[f"{head}/float64 gold"] = {"torch_s": round(time.perf_counter() - t0, 3)}
                    say(f"[{head} float64 gold] PyTorch cpu: {time.perf_counter() - t0:.1f} s")
                    return out

                if low:
                    gold = run_gold()
                    bar.update()
                for dtype in dtypes:
                    dcases = per_dtype[dtype]
                    torch_out, flax_out = {}, {}
                    step = steps_timing.setdefault(f"{head}/{dtype}", {"torch_s": 0.0})
                    for td, tdev in tdevs.items():
                        bar.set_description(f"{head} {dtype} PyTorch {td}")
                        t0 = time.perf_counter()
                        runner = TorchRunner(base if (dtype == "float32" and td == "cpu") else
                                             _cast_reference(base, dtype, tdev, ckpt, head, sd, opts), head, cfg)
                        torch_out[td] = _run_torch(runner, head, dcases, opts.steps)
                        del runner
                        timings["torch_s"] += time.perf_counter() - t0
                        step["torch_s"] = round(step["torch_s"] + time.perf_counter() - t0, 3)
                        bar.update()
                        say(f"[{head} {dtype}] PyTorch {td}: {time.perf_counter() - t0:.1f} s")
                    for fd in fdevs:
                        bar.set_description(f"{head} {dtype} Flax {fd}")
                        t0 = time.perf_counter()
                        flax_out[fd], layout, meter, greedy_path = jobs.result((dtype, fd))
                        timings["flax_wait_s"] += time.perf_counter() - t0
                        buckets[head] = layout
                        if head in GREEDY_HEADS and opts.steps:
                            greedy_paths.add(f"{head}: {greedy_path}")
                        timings["flax_s"] += meter.total_s
                        key = f"{head}/{dtype}" + ("" if len(fdevs) == 1 else f"/{fd}")
                        steps_timing.setdefault(key, {}).update(meter.to_dict())
                        bar.update()
                        say(f"[{head} {dtype}] Flax {fd}: {meter.total_s:.1f} s ({meter.build_s:.1f} s building "
                            f"{meter.programs} programs, {meter.run_s:.1f} s running)")
                    cols = [{"dtype": dtype, "flax_device": fd, "torch_device": td} for fd in fdevs for td in tdevs]
                    marks = [len(report.column(**col).results) for col in cols]

                    def judge_columns(gold):
                        t0 = time.perf_counter()
                        for col, mark in zip(cols, marks):
                            del report.column(**col).results[mark:]  # a re-judgement replaces the first one
                            judge_head(report, col, head, dcases, cfg, torch_out[col["torch_device"]],
                                       flax_out[col["flax_device"]], gold, opts)
                        timings["compare_s"] += time.perf_counter() - t0

                    judge_columns(gold)
                    if gold is None and dtype == "float32" and _outside_rtol(report, cols, marks):
                        # rule 4 failed somewhere: judge float32 against the float64 gold too (parity.tolerance)
                        gold = run_gold()
                        judge_columns(gold)
                    if grad_check is not None:
                        t0 = time.perf_counter()
                        step.update(grad_check.judge(report, dtype, fdevs, tdevs))
                        step["grads_s"] = round(time.perf_counter() - t0, 3)
                if ckpt.flax_path:
                    # a Flax checkpoint checked as it is: its weights too, after the outputs (so the first
                    # failure stays the first output in forward order where an output fails; parity.weights)
                    t0 = time.perf_counter()
                    first = dict(dtype=dtypes[0], flax_device=next(iter(fdevs)), torch_device=next(iter(tdevs)))
                    for metrics, verdict in compare_weights(sd, params, cfg, head):
                        report.add(metrics, group=WEIGHTS_GROUP, verdict=verdict, **first)
                    timings["compare_s"] += time.perf_counter() - t0
                del base, gold, run_gold   # the float64 model goes before the next head's

    if ckpt.drawn:
        report.notes.append("Head weights absent from the checkpoint were drawn from seed "
                            f"{opts.seed} (same values in both frameworks): " +
                            "; ".join(f"{h}: {', '.join(keys)}" for h, keys in ckpt.drawn.items()))
    nan = ckpt.nan_messages()
    if nan:
        report.notes.append("The checkpoint's weights hold NaN (" + "; ".join(nan[:10]) +
                            (f"; and {len(nan) - 10} more" if len(nan) > 10 else "") +
                            "): every metric they reach is NaN and fails.")
    seconds = time.perf_counter() - t_start
    from flax_bart.host_memory import host_allocator_state

    report.environment = Environment.collect(
        devices=report.environment.devices, matmul_precision=MATMUL_PRECISION,
        extra={**env_extra, "host_allocator": host_allocator_state(), "flax_greedy": "; ".join(sorted(greedy_paths)) or "none",
               "flax_buckets": describe_buckets(buckets), "flax_jobs": describe_jobs(jobs_used)})
    bar.close()
    report.checkpoint_hash = ckpt.checkpoint_hash()
    report.timings = {**{k: round(v, 3) for k, v in timings.items()}, "seconds": round(seconds, 3),
                      "steps": steps_timing}
    report.machine = machine.collect()
    return Outcome(report, ckpt, seconds, timings)


def describe_jobs(jobs_used: dict) -> str:
    """'2: the Flax runs ... side by side ...', '1: one Flax run at a time', or per head when heads differ."""
    if not jobs_used:
        return "none"
    counts = sorted(set(jobs_used.values()))
    if len(counts) == 1:
        parts = str(counts[0])
    else:
        parts = "; ".join(f"{n} ({', '.join(h for h, k in jobs_used.items() if k == n)})" for n in counts)
    if counts[-1] > 1:
        return f"{parts}: the Flax runs of a head's dtypes side by side in threads (parity.jobs)"
    return f"{parts}: one Flax run at a time"


def describe_buckets(buckets: dict) -> str:
    """'lm: right_padding+length_1 | max_length; greedy ...' : which cases shared one Flax program."""
    parts = []
    for head, layout in buckets.items():
        modes = layout.get("compile") or [""] * len(layout["forward"])
        text = " | ".join("+".join(b) + (" [fast compile]" if m == "fast" else "")
                          for b, m in zip(layout["forward"], modes))
        if "greedy" in layout:
            text += "; greedy " + " | ".join("+".join(b) for b in layout["greedy"])
        parts.append(f"{head}: {text}")
    return "; ".join(parts) or "none"


def progress_bar(total: int, disable: bool):
    """A tqdm bar over the matrix (heads x dtypes x frameworks) with the time left, on stderr."""
    from tqdm import tqdm

    return tqdm(total=total, disable=disable, unit="run", leave=False, dynamic_ncols=True,
                bar_format="{desc:<28} {bar} {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")


def print_progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
