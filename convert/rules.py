"""The one mapping table between PyTorch BART state dicts and the 4.x Flax BART parameter tree.

Both directions read `RULES` (per-leaf renames and transforms) and `_modules` (which modules a
config has), so they cannot drift apart. Everything here is computed from the config alone.

Names are *canonical*: without the `model.` / `model/` prefix that head models put in front of the
backbone. `Param` is one logical tensor; the word embedding is one `Param` with several PyTorch
aliases (the tied copies) and two Flax homes (`shared` in seq2seq models, `decoder/embed_tokens` in
the causal LM).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

from flax_bart.config import BartConfig

from convert.errors import ConversionError

HEADS = ("base", "lm", "cls", "qa", "causal")
PT_PREFIX = "model."
FLAX_PREFIX = "model"

# Per-leaf rules, the single table both directions read:
#   module kind -> ((PyTorch leaf, Flax leaf, rule name, transposed), ...)
RULES: dict[str, tuple[tuple[str, str, str, bool], ...]] = {
    "linear": (("weight", "kernel", "linear_weight", True), ("bias", "bias", "linear_bias", False)),
    "linear_nobias": (("weight", "kernel", "linear_weight", True),),
    "layernorm": (("weight", "scale", "layernorm_weight", False), ("bias", "bias", "layernorm_bias", False)),
    "embedding": (("weight", "embedding", "embedding", False),),
    "buffer": (("", "", "verbatim", False),),
}

# Where each part of the model sits, per head. "embed" is the word embedding.
_PARTS = {
    "base": ("embed", "encoder", "decoder"),
    "lm": ("embed", "encoder", "decoder", "lm"),
    "cls": ("embed", "encoder", "decoder", "cls"),
    "qa": ("embed", "encoder", "decoder", "qa"),
    "causal": ("embed", "decoder", "lm"),
}
HEAD_PARTS = {"lm", "cls", "qa"}


@dataclasses.dataclass(frozen=True)
class Param:
    """One logical tensor: canonical names on both sides, the rule, and both shapes."""

    pt: str                      # canonical PyTorch key, e.g. "encoder.layers.0.fc1.weight"
    flax: tuple[str, ...]        # canonical Flax path, e.g. ("encoder", "layers", "0", "fc1", "kernel")
    rule: str                    # rule name from RULES (counted in summaries)
    transposed: bool             # PyTorch shape is the Flax shape reversed
    flax_shape: tuple[int, ...]
    part: str                    # "embed", "encoder", "decoder", "lm", "cls" or "qa"

    @property
    def pt_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.flax_shape)) if self.transposed else self.flax_shape

    def shape_in(self, framework: str) -> tuple[int, ...]:
        return self.pt_shape if framework == "pt" else self.flax_shape


def check_head(head: str) -> str:
    if head not in HEADS:
        raise ConversionError(f"head {head!r} is not one of {list(HEADS)}")
    return head


def _linear_shape(n_in: int, n_out: int, leaf: str) -> tuple[int, ...]:
    return (n_in, n_out) if leaf == "kernel" else (n_out,)


def _modules(config: BartConfig) -> Iterator[tuple[str, str, tuple[int, ...], str]]:
    """(module name, module kind, dims, part) for every module of every head.

    The Flax module path is the PyTorch module name with "/" for ".". dims: (in, out) for linear;
    (n,) for layernorm; (num, dim) for embedding; the shape for buffers.
    """
    c, d = config, config.d_model
    for side in ("encoder", "decoder"):
        ffn = c.encoder_ffn_dim if side == "encoder" else c.decoder_ffn_dim
        n_layers = c.encoder_layers if side == "encoder" else c.decoder_layers
        yield f"{side}.embed_positions", "embedding", (c.max_position_embeddings + 2, d), side
        for i in range(n_layers):
            pre = f"{side}.layers.{i}"
            for attn in ("self_attn", "encoder_attn") if side == "decoder" else ("self_attn",):
                for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                    yield f"{pre}.{attn}.{proj}", "linear", (d, d), side
                yield f"{pre}.{attn}_layer_norm", "layernorm", (d,), side
            yield f"{pre}.fc1", "linear", (d, ffn), side
            yield f"{pre}.fc2", "linear", (ffn, d), side
            yield f"{pre}.final_layer_norm", "layernorm", (d,), side
        yield f"{side}.layernorm_embedding", "layernorm", (d,), side
    yield "final_logits_bias", "buffer", (1, c.vocab_size), "lm"
    if not c.tie_word_embeddings:
        yield "lm_head", "linear_nobias", (d, c.vocab_size), "lm"
    yield "classification_head.dense", "linear", (d, d), "cls"
    yield "classification_head.out_proj", "linear", (d, c.num_labels), "cls"
    yield "qa_outputs", "linear", (d, 2), "qa"


def separate_embeddings(config: BartConfig, head: str | None = None) -> bool:
    """The seq2seq layout with `shared`, `encoder.embed_tokens` and `decoder.embed_tokens` as three
    parameters (transformers v5, untied; `config.separate_input_embeddings`). A causal LM holds one
    word embedding either way."""
    return bool(config.separate_input_embeddings) and head != "causal"


def causal_from_separate(config: BartConfig, head: str | None = None) -> bool:
    """A causal LM read from that layout: its word embedding is the decoder's `embed_tokens`, the one
    PyTorch's BartForCausalLM loads; `shared` and the encoder's copy belong to the seq2seq model."""
    return bool(config.separate_input_embeddings) and head == "causal"


def seq2seq_only_embeddings(config: BartConfig, framework: str) -> list[Param]:
    """`shared` and the encoder's `embed_tokens` of the separate layout, as tensors no causal LM wants."""
    vocab = (config.vocab_size, config.d_model)
    return [Param(f"{'.'.join(path[:-1])}.weight", path, "embedding", False, vocab, "encoder")
            for path in (("shared", "embedding"), ("encoder", "embed_tokens", "embedding"))]


def all_params(config: BartConfig, head: str | None = None) -> list[Param]:
    """Every logical tensor any head can have (the word embedding first, under its seq2seq name)."""
    vocab = (config.vocab_size, config.d_model)
    out = [Param("shared.weight", ("shared", "embedding"), "embedding", False, vocab, "embed")]
    if separate_embeddings(config, head):
        out += [Param(f"{side}.embed_tokens.weight", (side, "embed_tokens", "embedding"), "embedding", False, vocab,
                      side) for side in ("encoder", "decoder")]
    for module, kind, dims, part in _modules(config):
        for pt_leaf, flax_leaf, rule, transposed in RULES[kind]:
            shape = _linear_shape(dims[0], dims[1], flax_leaf) if kind.startswith("linear") else dims
            pt = f"{module}.{pt_leaf}" if pt_leaf else module
            flax = tuple(module.split(".")) + ((flax_leaf,) if flax_leaf else ())
            out.append(Param(pt, flax, rule, transposed, shape, part))
    return out


def head_params(config: BartConfig, head: str) -> list[Param]:
    """The logical tensors of `head`, in model order."""
    parts = _PARTS[check_head(head)]
    params = [p for p in all_params(config, head) if p.part in parts]
    if head == "causal":  # decoder-only: no final_logits_bias; lm_head only when untied
        params = [p for p in params if p.pt != "final_logits_bias"]
    return params


# ---- the word embedding and its tied copies ----------------------------------------------------
def embedding_pt_aliases(config: BartConfig, head: str | None = None) -> tuple[str, ...]:
    """Canonical PyTorch keys that all hold the word embedding, in order of preference as source."""
    if separate_embeddings(config, head):
        return ("shared.weight",)
    if causal_from_separate(config, head):
        return ("decoder.embed_tokens.weight",)
    keys = ("shared.weight", "decoder.embed_tokens.weight", "encoder.embed_tokens.weight")
    return keys + (("lm_head.weight",) if config.tie_word_embeddings else ())


EMBEDDING_FLAX_ALIASES = (("shared", "embedding"), ("decoder", "embed_tokens", "embedding"))


def embedding_flax_aliases(config: BartConfig, head: str | None = None) -> tuple[tuple[str, ...], ...]:
    if causal_from_separate(config, head):
        return EMBEDDING_FLAX_ALIASES[1:]
    return EMBEDDING_FLAX_ALIASES[:1] if separate_embeddings(config, head) else EMBEDDING_FLAX_ALIASES


def embedding_home(head: str, framework: str):
    """The canonical key the word embedding is stored under for `head`."""
    if framework == "pt":
        return "decoder.embed_tokens.weight" if head == "causal" else "shared.weight"
    return EMBEDDING_FLAX_ALIASES[1] if head == "causal" else EMBEDDING_FLAX_ALIASES[0]


def embedding_pt_copies(config: BartConfig, head: str, tied: str) -> tuple[str, ...]:
    """Canonical PyTorch keys written for the word embedding besides its home.

    tied="all": every copy `model.state_dict()` holds (what old `.bin` files and
    `load_state_dict(strict=True)` want). tied="drop": only the copies transformers v5 does not
    re-tie itself on load (those of an untied config), as v5 `save_pretrained` writes.
    """
    if tied not in ("all", "drop"):
        raise ConversionError(f"tied={tied!r}: expected 'all' or 'drop'")
    if (tied == "drop" and config.tie_word_embeddings) or separate_embeddings(config, head):
        return ()  # separate: encoder/decoder embed_tokens are parameters of their own
    copies = () if head == "causal" else ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
    if config.tie_word_embeddings and head in ("lm", "causal"):
        copies += ("lm_head.weight",)
    return copies


# ---- full keys (with the head models' prefix) --------------------------------------------------
def uses_prefix(head: str) -> bool:
    return head != "base"


def full_pt_key(canonical: str, part: str, head: str) -> str:
    backbone = part in ("embed", "encoder", "decoder")
    return PT_PREFIX + canonical if backbone and uses_prefix(head) else canonical


def full_flax_path(canonical: tuple[str, ...], part: str, head: str) -> tuple[str, ...]:
    backbone = part in ("embed", "encoder", "decoder")
    return (FLAX_PREFIX,) + canonical if backbone and uses_prefix(head) else canonical


def expected_flax_shapes(config: BartConfig, head: str) -> dict[tuple[str, ...], tuple[int, ...]]:
    """The 4.x Flax parameter layout of `head`: path tuple -> shape, without allocating."""
    out = {}
    for p in head_params(config, head):
        canonical = embedding_home(head, "flax") if p.part == "embed" else p.flax
        out[full_flax_path(canonical, p.part, head)] = p.flax_shape
    return out


def expected_pt_shapes(config: BartConfig, head: str, tied: str = "all") -> dict[str, tuple[int, ...]]:
    """The PyTorch state dict layout of `head` (transformers key names) -> shape."""
    out = {}
    for p in head_params(config, head):
        if p.part == "embed":
            for key in (embedding_home(head, "pt"),) + embedding_pt_copies(config, head, tied):
                out[full_pt_key(key, "lm" if key == "lm_head.weight" else "embed", head)] = p.pt_shape
        else:
            out[full_pt_key(p.pt, p.part, head)] = p.pt_shape
    return out


def head_only_prefixes(config: BartConfig, head: str) -> tuple[str, ...]:
    """Flax path prefixes ("/"-joined) of the parameters only `head` has (newly initialised when
    loading a checkpoint of another head); pass them as `allow_missing` to accept their absence."""
    return tuple(dict.fromkeys(
        "/".join(p.flax[:1]) for p in head_params(config, head) if p.part in HEAD_PARTS
    ))
