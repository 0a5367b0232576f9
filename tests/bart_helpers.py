"""Tiny seeded BART configs and builders shared by the tests (no downloads)."""

from __future__ import annotations

import numpy as np

TINY = dict(
    vocab_size=99, d_model=16, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
    decoder_attention_heads=2, encoder_ffn_dim=24, decoder_ffn_dim=20, max_position_embeddings=40,
    scale_embedding=True, dropout=0.0,
)

HEADS = ("base", "lm", "cls", "qa", "causal")

OUTPUT_NAMES = {
    "base": ("last_hidden_state",),
    "lm": ("logits",),
    "cls": ("logits",),
    "qa": ("start_logits", "end_logits"),
    "causal": ("logits",),
}


def torch_class(head):
    import transformers as T

    return {
        "base": T.BartModel, "lm": T.BartForConditionalGeneration, "cls": T.BartForSequenceClassification,
        "qa": T.BartForQuestionAnswering, "causal": T.BartForCausalLM,
    }[head]


def torch_model(head, seed=0, **overrides):
    """A transformers (PyTorch) BART of `head`, eager attention, random weights incl. biases/LN."""
    import torch
    import transformers as T

    kw = {**TINY, **overrides}
    torch.manual_seed(seed)
    model = torch_class(head)(T.BartConfig(**kw, attn_implementation="eager")).eval()
    with torch.no_grad():  # randomise what init leaves at 0/1 so a port that drops them fails
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        base = getattr(model, "model", model)
        if not kw.get("tie_word_embeddings", True) and hasattr(base, "shared"):
            # v5 unties encoder/decoder input embeddings too; real untied checkpoints keep them equal
            # to `shared` (the only layout 4.x Flax can hold), so make them so.
            base.encoder.embed_tokens.weight.copy_(base.shared.weight)
            base.decoder.embed_tokens.weight.copy_(base.shared.weight)
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.add_(0.1 * torch.randn(model.final_logits_bias.shape, generator=g))
    return model


def flax_from_torch(tmodel, head, dtype=None):
    """(flax model, params) with the PyTorch model's weights, through the project's converter."""
    import jax.numpy as jnp
    from convert.tree import pt_to_flax
    from flax_bart import BartConfig
    from flax_bart.models import MODEL_CLASSES

    cfg = BartConfig.from_dict({k: v for k, v in tmodel.config.to_dict().items()})
    params = pt_to_flax(tmodel.state_dict(), cfg, head=head)
    model = MODEL_CLASSES[head](cfg, _do_init=False, dtype=dtype or jnp.float32)
    return model, params


def random_params(model, seed):
    """Random N(0, 0.2) weights for `model`'s whole parameter tree, made without compiling an initialiser."""
    from flax import traverse_util

    rng = np.random.default_rng(seed)
    flat = {k: rng.normal(0, 0.2, s.shape).astype(s.dtype) for k, s in model.params_shape_tree().items()}
    return traverse_util.unflatten_dict(flat)


def batch(seed=0, b=3, t=9, vocab=99, pad=1, eos=2, bos=0):
    """Right-padded ids with one <eos> per row (row 1 padded, last row fully padded when b>=4)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, vocab, size=(b, t)).astype(np.int32)
    ids[:, 0] = bos
    mask = np.ones((b, t), np.int32)
    lengths = [t] * b
    if b > 1:
        lengths[1] = t - 3
    for i, n in enumerate(lengths):
        ids[i, n - 1] = eos
        ids[i, n:] = pad
        mask[i, n:] = 0
    return ids, mask


# ---- subprocesses with simulated devices ---------------------------------------------------------
# Fast CPU compiles for the many multi-device programs of the worker subprocesses.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def simulated_devices_env(n_devices: int, root: str) -> dict:
    """Environment of a subprocess in which JAX starts with `n_devices` CPU devices (never set in the
    test process itself) and `root` (the repository) is importable."""
    import os

    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices} {FAST_COMPILE_FLAGS}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def run_json_worker(argv: list, out_path, n_devices: int, root: str, timeout: int = 900):
    """Run `python *argv` with `n_devices` simulated devices; it must exit 0 and write JSON to `out_path`."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, *map(str, argv)], env=simulated_devices_env(n_devices, root), cwd=root,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    with open(out_path) as f:
        return json.load(f)
