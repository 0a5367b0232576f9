"""Helpers for the converter tests: tiny seeded configs, random weights, transformers models."""

from __future__ import annotations

import hashlib
import json
import os

import ml_dtypes
import numpy as np

from flax_bart.config import BartConfig

from convert.rules import expected_flax_shapes

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "bart4x")
DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
          "bfloat16": np.dtype(ml_dtypes.bfloat16)}
SEQ2SEQ_HEADS = ("base", "lm", "cls", "qa")
HEADS = SEQ2SEQ_HEADS + ("causal",)

TINY = dict(vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=1, encoder_ffn_dim=24,
            decoder_ffn_dim=20, encoder_attention_heads=2, decoder_attention_heads=4,
            max_position_embeddings=32, dropout=0.0, id2label={0: "a", 1: "b", 2: "c", 3: "d"})


def tiny_config(**changes) -> BartConfig:
    return BartConfig.from_dict({**TINY, **changes})


def random_array(rng, shape, dtype) -> np.ndarray:
    """Random values; for bf16/fp16 random *bits* (NaN payloads, -0, subnormals included)."""
    dtype = np.dtype(dtype)
    if dtype.itemsize == 2:
        return rng.integers(0, 2**16, size=shape, dtype=np.uint16).view(dtype)
    return rng.standard_normal(shape).astype(dtype)


def random_flax_params(config: BartConfig, head: str, dtype=np.float32, seed: int = 0) -> dict:
    """Nested Flax params of `head` with random values."""
    rng = np.random.default_rng(seed)
    out: dict = {}
    for path, shape in expected_flax_shapes(config, head).items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = random_array(rng, shape, dtype)
    return out


def flat(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def assert_bits_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b), (sorted(set(a) ^ set(b), key=str))
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, (k, x.dtype, y.dtype, x.shape, y.shape)
        assert x.tobytes() == y.tobytes(), k


def tree_hash(path: str) -> str:
    """Hash of every file (names and bytes) under a directory, to prove it was not touched."""
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(root, name)
            h.update(os.path.relpath(p, path).encode())
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def write_config(directory: str, config: BartConfig) -> None:
    os.makedirs(directory, exist_ok=True)
    config.save_pretrained(directory)


def siblings(path: str) -> list[str]:
    """Names beside `path` in its parent (to spot leftover staging directories)."""
    return sorted(os.listdir(os.path.dirname(os.path.abspath(path))))


def hf_config(hf, config: BartConfig):
    d = config.to_dict()
    return hf.BartConfig(**{k: v for k, v in d.items() if k not in ("model_type",)})


HF_CLASSES = {"base": "BartModel", "lm": "BartForConditionalGeneration", "cls": "BartForSequenceClassification",
              "qa": "BartForQuestionAnswering", "causal": "BartForCausalLM"}


def hf_model(hf, config: BartConfig, head: str, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    model = getattr(hf, HF_CLASSES[head])(hf_config(hf, config)).eval()
    with torch.no_grad():  # perturb zero-initialised biases/LayerNorms so that dropping one shows
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.05)
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.copy_(torch.randn_like(model.final_logits_bias))
        base = getattr(model, "model", model)
        if not config.tie_word_embeddings and hasattr(base, "shared"):
            # transformers v5 unties encoder/decoder embed_tokens from `shared` too; checkpoints
            # in the wild (and the Flax layout) hold one word embedding
            base.encoder.embed_tokens.weight.copy_(base.shared.weight)
            base.decoder.embed_tokens.weight.copy_(base.shared.weight)
    return model


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---- independent writers (the safetensors library, torch.save, flax.serialization) -------------
def write_pt_checkpoint(directory, state: dict, fmt: str = "safetensors", shards: int = 1) -> None:
    """A PyTorch checkpoint as transformers lays it out, written with the libraries themselves."""
    os.makedirs(directory, exist_ok=True)
    keys = list(state)
    groups = [keys[i::shards] for i in range(shards)]
    single = {"safetensors": "model.safetensors", "bin": "pytorch_model.bin"}[fmt]
    weight_map = {}
    for i, group in enumerate(groups):
        name = single if shards == 1 else single.replace(".", f"-{i + 1:05d}-of-{shards:05d}.", 1)
        part = {k: state[k] for k in group}
        if fmt == "safetensors":
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in part.items()}, os.path.join(directory, name),
                      metadata={"format": "pt"})
        else:
            import torch

            from convert.dtypes import numpy_to_torch

            torch.save({k: numpy_to_torch(v).clone() for k, v in part.items()}, os.path.join(directory, name))
        weight_map.update({k: name for k in group})
    if shards > 1:
        with open(os.path.join(directory, single + ".index.json"), "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)


def read_pt_checkpoint(directory) -> dict:
    """The state dict in a PyTorch checkpoint directory, read with the libraries themselves."""
    files = sorted(os.listdir(directory))
    out = {}
    for name in files:
        path = os.path.join(directory, name)
        if name.endswith(".safetensors"):
            from safetensors.numpy import load_file

            out.update(load_file(path))
        elif name.endswith(".bin"):
            import torch

            from convert.dtypes import torch_to_numpy

            out.update({k: torch_to_numpy(v) for k, v in torch.load(path, weights_only=True).items()})
    return out


def write_flax_msgpack(directory, params: dict, shards: int = 1) -> None:
    """flax.serialization.to_bytes, sharded like transformers 4.x when shards > 1."""
    from flax.serialization import to_bytes

    os.makedirs(directory, exist_ok=True)
    if shards == 1:
        with open(os.path.join(directory, "flax_model.msgpack"), "wb") as f:
            f.write(to_bytes(params))
        return
    leaves = flat(params)
    keys = list(leaves)
    weight_map = {}
    for i in range(shards):
        name = f"flax_model-{i + 1:05d}-of-{shards:05d}.msgpack"
        part: dict = {}
        for k in keys[i::shards]:
            node = part
            for p in k[:-1]:
                node = node.setdefault(p, {})
            node[k[-1]] = leaves[k]
            weight_map["/".join(k)] = name
        with open(os.path.join(directory, name), "wb") as f:
            f.write(to_bytes(part))
    with open(os.path.join(directory, "flax_model.msgpack.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)


def read_flax_msgpack(directory) -> dict:
    """{path tuple: array} of every flax msgpack file in `directory` (flax.serialization)."""
    from flax.serialization import msgpack_restore

    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".msgpack"):
            with open(os.path.join(directory, name), "rb") as f:
                out.update(flat(msgpack_restore(f.read())))
    return out
