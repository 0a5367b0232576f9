"""Named tensors of one forward pass, in forward order, and how to read them from either framework.

A :class:`Spec` names one tensor of one input case (``qa/right_padding/decoder_hidden_states[3]``),
says where it sits (group and layer, for the report's "first failing layer") and which positions are
compared. Padded positions carry no meaning and are masked out: encoder tensors where the attention
mask is on; decoder tensors where the decoder input is a real token (the decoder attention mask when
the case has one, else the start token plus the shifted encoder mask) of a row with at least one
encoder token; attention probabilities where both the query and the key position are on.

Layer numbering: ``*_hidden_states[0]`` is the embedding output (group "embeddings");
``*_hidden_states[i + 1]``, ``*_attentions[i]`` and ``cross_attentions[i]`` belong to layer ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SEQ2SEQ_HEADS = ("base", "lm", "cls", "qa")


@dataclass(frozen=True)
class Spec:
    name: str
    group: str
    layer: int | None
    kind: str
    key: tuple
    mask: np.ndarray | None


@dataclass(frozen=True)
class Masks:
    enc: np.ndarray | None   # (B, S) bool; None for the causal head
    dec: np.ndarray          # (B, T) bool: decoder positions compared
    rows: np.ndarray         # (B,) bool: rows with at least one attended token


def decoder_inputs(head: str, case: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """(decoder token ids, decoder attention mask or None) the decoder sees for this case."""
    if head == "causal":
        return case["input_ids"], case["attention_mask"]
    return case["decoder_input_ids"], case.get("decoder_attention_mask")


def case_masks(head: str, case: dict) -> Masks:
    if head == "causal":
        dec = case["attention_mask"].astype(bool)
        return Masks(None, dec, dec.any(axis=1))
    enc = case["attention_mask"].astype(bool)
    rows = enc.any(axis=1)
    given = case.get("decoder_attention_mask")
    if given is not None:
        dec = given.astype(bool)
    else:  # the start token, then the shifted input positions
        dec = np.concatenate([np.ones_like(enc[:, :1]), enc[:, :-1]], axis=1)[:, :case["decoder_input_ids"].shape[1]]
    return Masks(enc, dec & rows[:, None], rows)


def _pair(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    return q[:, None, :, None] & k[:, None, None, :]


def forward_specs(config, head: str, prefix: str, case: dict) -> list[Spec]:
    """Every compared tensor of the forward pass of `head` on `case`, in forward order."""
    m = case_masks(head, case)
    specs: list[Spec] = []

    def add(name, group, layer, kind, key, mask):
        specs.append(Spec(f"{prefix}{name}", group, layer, kind, key, mask))

    if head == "causal":
        add("hidden_states[0]", "embeddings", None, "hidden", ("hidden_states", 0), m.dec)
        for i in range(config.decoder_layers):
            add(f"attentions[{i}]", "decoder", i, "attention", ("attentions", i), _pair(m.dec, m.dec))
            add(f"hidden_states[{i + 1}]", "decoder", i, "hidden", ("hidden_states", i + 1), m.dec)
        add("logits", "heads", None, "logits", ("logits",), m.dec)
        return specs

    add("encoder_hidden_states[0]", "embeddings", None, "hidden", ("encoder_hidden_states", 0), m.enc)
    for i in range(config.encoder_layers):
        add(f"encoder_attentions[{i}]", "encoder", i, "attention", ("encoder_attentions", i), _pair(m.enc, m.enc))
        add(f"encoder_hidden_states[{i + 1}]", "encoder", i, "hidden", ("encoder_hidden_states", i + 1), m.enc)
    add("encoder_last_hidden_state", "encoder", config.encoder_layers - 1, "hidden",
        ("encoder_last_hidden_state",), m.enc)
    add("decoder_hidden_states[0]", "embeddings", None, "hidden", ("decoder_hidden_states", 0), m.dec)
    for i in range(config.decoder_layers):
        add(f"decoder_attentions[{i}]", "decoder", i, "attention", ("decoder_attentions", i), _pair(m.dec, m.dec))
        add(f"cross_attentions[{i}]", "decoder", i, "attention", ("cross_attentions", i), _pair(m.dec, m.enc))
        add(f"decoder_hidden_states[{i + 1}]", "decoder", i, "hidden", ("decoder_hidden_states", i + 1), m.dec)
    if head == "base":
        add("last_hidden_state", "heads", None, "hidden", ("last_hidden_state",), m.dec)
    elif head == "lm":
        add("logits", "heads", None, "logits", ("logits",), m.dec)
    elif head == "cls":
        add("logits", "heads", None, "logits", ("logits",), m.rows)
    else:  # qa: logits over positions; the mask also picks the positions that take part in softmax
        add("start_logits", "heads", None, "logits", ("start_logits",), m.dec)
        add("end_logits", "heads", None, "logits", ("end_logits",), m.dec)
    return specs


def pick(outputs: dict, key: tuple) -> np.ndarray:
    value = outputs[key[0]]
    return value[key[1]] if len(key) > 1 else value


def output_names(head: str) -> tuple[str, ...]:
    if head == "causal":
        return ("logits", "hidden_states", "attentions")
    own = {"base": ("last_hidden_state",), "lm": ("logits",), "cls": ("logits",),
           "qa": ("start_logits", "end_logits")}[head]
    return own + ("encoder_last_hidden_state", "encoder_hidden_states", "encoder_attentions",
                  "decoder_hidden_states", "decoder_attentions", "cross_attentions")


def as_numpy(value):
    """numpy arrays from torch tensors (bf16 as ml_dtypes) or JAX arrays, through tuples."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return tuple(as_numpy(v) for v in value)
    if type(value).__module__.startswith("torch"):
        from parity.reference import to_numpy

        return to_numpy(value)
    return np.asarray(value)


def collect_outputs(out, head: str) -> dict:
    """{output name: numpy array or tuple of arrays} from a torch Output dict or a Flax output."""
    get = out.get if isinstance(out, dict) else (lambda n: getattr(out, n, None))
    collected = {}
    for name in output_names(head):
        value = get(name)
        if value is None:
            raise RuntimeError(f"the {head!r} model returned no {name!r} (asked for hidden states and attentions)")
        collected[name] = as_numpy(value)
    return collected
