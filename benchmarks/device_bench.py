"""Forward and greedy generation side by side with transformers on one device (a GPU, or the CPU),
per precision mode, with achieved TFLOP/s and the fraction of the device's roofline.

Modes: `fp32-exact` (jax matmul precision highest, torch TF32 off), `tf32` (jax "tensorfloat32",
torch TF32 on), `bf16` (parameters and compute in bfloat16 on both sides). The Flax model runs with
its default `attention_impl="auto"` (cuDNN's fused attention on a GPU in bf16). Forward: the QA head
over batch x length, jitted flax vs eager transformers, the median of `repeats` calls after warm-up.
Generation: greedy, exactly `new_tokens` new tokens on both sides, tokens/s of whole `generate`
calls; the decode step time is (generate - encoder) / new tokens, set against the bytes a step must
read (`benchmarks.roofline`) at the device's HBM bandwidth. On a device without a datasheet entry
(any CPU) the roofline fractions are left out.

    python -m benchmarks.device_bench --device gpu [--shape base] [--modes fp32-exact,tf32,bf16]
    python -m benchmarks --device gpu          # the same, through the suite runner
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import numpy as np

from benchmarks.common import SHAPES, environment, median_time, write_json
from benchmarks.roofline import decode_step_bytes, forward_flops, peaks_for

MODES = ("fp32-exact", "tf32", "bf16")
FULL = dict(shape="base", batch=32, length=512, new_tokens=64, repeats=10)
QUICK = dict(shape="tiny", batch=2, length=16, new_tokens=4, repeats=2)


class DeviceError(Exception):
    pass


def _devices(name: str):
    import jax
    import torch

    try:
        jdev = jax.devices(name)[0]
    except RuntimeError:
        raise DeviceError(f"--device {name}: JAX finds no {name} device (has: "
                          f"{', '.join(sorted({d.platform for d in jax.devices()}))})") from None
    if name == "gpu":
        if not torch.cuda.is_available():
            raise DeviceError("--device gpu: PyTorch finds no CUDA device")
        return jdev, torch.device("cuda")
    return jdev, torch.device("cpu")


@contextlib.contextmanager
def precision_mode(mode: str):
    """The matmul precision of `mode` on both sides, restored afterwards."""
    import jax
    import torch

    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = mode == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        with jax.default_matmul_precision("tensorfloat32" if tf32 else "highest" if mode == "fp32-exact" else "default"):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _sync(tdev):
    import torch

    if tdev.type == "cuda":
        torch.cuda.synchronize()


def _models(shape: str, mode: str, jdev, tdev):
    import jax
    import torch
    import transformers

    from convert import pt_to_flax
    from flax_bart import BartConfig
    from flax_bart.models import MODEL_CLASSES

    torch.manual_seed(0)
    tdtype = torch.bfloat16 if mode == "bf16" else torch.float32
    lm = transformers.BartForConditionalGeneration(transformers.BartConfig(**SHAPES[shape])).eval()
    qa = transformers.BartForQuestionAnswering(transformers.BartConfig(**SHAPES[shape])).eval()
    qa.model.load_state_dict(lm.model.state_dict())
    cfg = BartConfig(**SHAPES[shape])
    flax = {}
    for head, tm in (("lm", lm), ("qa", qa)):
        import jax.numpy as jnp

        model = MODEL_CLASSES[head](cfg, dtype=jnp.bfloat16 if mode == "bf16" else jnp.float32, _do_init=False)
        params = pt_to_flax({k: v.float().numpy() for k, v in tm.state_dict().items()}, cfg, head=head)
        params = model.to_bf16(params) if mode == "bf16" else params
        flax[head] = (model, jax.device_put(params, jdev))
    return flax, {"lm": lm.to(tdev, tdtype), "qa": qa.to(tdev, tdtype)}


def run_mode(mode: str, device: str, shape: str, batch: int, length: int, new_tokens: int, repeats: int) -> dict:
    import jax
    import torch

    jdev, tdev = _devices(device)
    ids = np.random.default_rng(0).integers(4, SHAPES[shape]["vocab_size"], (batch, length)).astype(np.int32)
    ids[:, -1] = 2
    mask = np.ones_like(ids)
    jids, jmask = jax.device_put(ids, jdev), jax.device_put(mask, jdev)
    tids, tmask = torch.tensor(ids, dtype=torch.long, device=tdev), torch.tensor(mask, device=tdev)
    peak = peaks_for(getattr(jdev, "device_kind", "") or "")
    out = {"mode": mode}
    with precision_mode(mode):
        flax, torch_models = _models(shape, mode, jdev, tdev)
        qa_model, qa_params = flax["qa"]

        def flax_forward():
            jax.block_until_ready(qa_model(jids, attention_mask=jmask, params=qa_params).start_logits)

        def torch_forward():
            with torch.inference_mode():
                torch_models["qa"](input_ids=tids, attention_mask=tmask, use_cache=False)
            _sync(tdev)

        t0 = time.perf_counter()
        flax_forward()
        first = time.perf_counter() - t0
        fwd = {"flax": median_time(flax_forward, repeats), "transformers": median_time(torch_forward, repeats)}
        fwd["flax"]["first_call_s"] = first
        flops = forward_flops(SHAPES[shape], "qa", batch, length)
        fwd["flops"] = flops
        fwd["ratio"] = fwd["flax"]["median_s"] / fwd["transformers"]["median_s"]
        for side in ("flax", "transformers"):
            fwd[side]["tflop_s"] = flops / fwd[side]["median_s"] / 1e12
            if peak:
                fwd[side]["fraction_of_peak"] = flops / fwd[side]["median_s"] / peak[mode]
        out["forward"] = fwd
        out["generate"] = _generate(flax["lm"], torch_models["lm"], jids, jmask, tids, tmask, tdev, shape, mode,
                                    new_tokens, repeats, peak)
    return out


def _generate(flax_lm, torch_lm, jids, jmask, tids, tmask, tdev, shape, mode, new_tokens, repeats, peak) -> dict:
    import jax
    import torch

    model, params = flax_lm
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=1, do_sample=False)

    def flax_gen():
        return np.asarray(jax.block_until_ready(model.generate(jids, attention_mask=jmask, params=params,
                                                               **settings).sequences))

    def torch_gen():
        with torch.inference_mode():
            seqs = torch_lm.generate(input_ids=tids, attention_mask=tmask, **settings)
        _sync(tdev)
        return seqs.cpu().numpy()

    def flax_encode():
        jax.block_until_ready(model.encode(jids, attention_mask=jmask, params=params).last_hidden_state)

    t0 = time.perf_counter()
    flax_ids = flax_gen()
    first = time.perf_counter() - t0
    torch_ids = torch_gen()
    res = {"flax": median_time(flax_gen, repeats), "transformers": median_time(torch_gen, repeats, warmup=0)}
    res["flax"]["first_call_s"] = first
    res["flax_encoder_s"] = median_time(flax_encode, repeats)["median_s"]
    batch, length = jids.shape
    tokens = batch * new_tokens
    for side in ("flax", "transformers"):
        res[side]["tokens_per_s"] = tokens / res[side]["median_s"]
    res["speedup"] = res["flax"]["tokens_per_s"] / res["transformers"]["tokens_per_s"]
    res["tokens_equal"] = bool(flax_ids.shape == torch_ids.shape and (flax_ids == torch_ids).all())
    step_s = max(res["flax"]["median_s"] - res["flax_encoder_s"], 1e-9) / new_tokens
    step_bytes = decode_step_bytes(SHAPES[shape], batch, length, new_tokens // 2, mode)
    res["decode_step"] = {"seconds": step_s, "bytes": step_bytes, "achieved_bytes_s": step_bytes["total"] / step_s}
    if peak:
        roof = step_bytes["total"] / peak["hbm_bytes_s"]
        res["decode_step"].update(roofline_s=roof, times_roofline=step_s / roof)
    return res


def render(result: dict) -> str:
    lines = [f"device {result['device']} ({result['device_kind']}), BART-{result['case']['shape']}, "
             f"batch {result['case']['batch']} x {result['case']['length']}, {result['case']['new_tokens']} new tokens",
             "| mode | forward flax ms | transformers ms | flax/PyTorch | flax TFLOP/s | generate flax tok/s | "
             "transformers tok/s | speedup | decode step ms | x roofline | first call s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["modes"]:
        f, g = r["forward"], r["generate"]
        roof = g["decode_step"].get("times_roofline")
        lines.append(f"| {r['mode']} | {f['flax']['median_s'] * 1e3:.1f} | {f['transformers']['median_s'] * 1e3:.1f} | "
                     f"{f['ratio']:.2f} | {f['flax']['tflop_s']:.3g} | {g['flax']['tokens_per_s']:.0f} | "
                     f"{g['transformers']['tokens_per_s']:.0f} | {g['speedup']:.2f} | "
                     f"{g['decode_step']['seconds'] * 1e3:.2f} | {'-' if roof is None else f'{roof:.1f}'} | "
                     f"{g['flax']['first_call_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_bench")
    p.add_argument("--device", choices=("cpu", "gpu"), default="gpu")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None)
    p.add_argument("--quick", action="store_true", help="tiny model: a smoke run, not a measurement")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default=None, help="default reports/bench/device-<device>.json")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        print(f"error: --modes {args.modes!r}: expected some of {', '.join(MODES)}", file=sys.stderr)
        return 2
    case = dict(QUICK if args.quick else FULL)
    if args.shape:
        case["shape"] = args.shape
    if args.repeats:
        case["repeats"] = args.repeats
    try:
        jdev, _ = _devices(args.device)
    except DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results = [run_mode(m, args.device, **case) for m in modes]
    out = {"benchmark": "device", "quick": args.quick, "device": args.device,
           "device_kind": getattr(jdev, "device_kind", str(jdev)), "case": case, "modes": results,
           "peaks": peaks_for(getattr(jdev, "device_kind", "") or ""), "environment": environment(),
           "measured": time.strftime("%Y-%m-%d")}
    path = args.out or f"reports/bench/device-{args.device}.json"
    write_json(path, out)
    print(render(out))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
