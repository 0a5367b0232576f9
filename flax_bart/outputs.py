"""Output containers with the 4.x Flax field names.

Each is a frozen pytree (so it can leave a `jax.jit`), reads like the 4.x `ModelOutput`:
attribute access, `out["logits"]`, `out[0]`, `out.to_tuple()` (None fields dropped), `keys()`.
The head outputs start with `loss` as in PyTorch; it is None (so absent from tuples and keys, which
keep the 4.x order) unless labels were given.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from flax import struct

Array = Any


class ModelOutput:
    def to_tuple(self) -> tuple:
        return tuple(v for v in (getattr(self, f.name) for f in dataclasses.fields(self)) if v is not None)

    def keys(self):
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def values(self):
        return [getattr(self, k) for k in self.keys()]

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]

    def __getitem__(self, k):
        if isinstance(k, str):
            if k not in self.keys():
                raise KeyError(k)
            return getattr(self, k)
        return self.to_tuple()[k]

    def __contains__(self, k):
        return k in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.keys())

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def returned(out: ModelOutput, return_dict: bool):
    """`out`, or with `return_dict=False` its fields that are not None as a tuple (4.x's layout)."""
    return out if return_dict else out.to_tuple()


@struct.dataclass
class FlaxBaseModelOutput(ModelOutput):
    last_hidden_state: Array = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None


@struct.dataclass
class FlaxBaseModelOutputWithPastAndCrossAttentions(ModelOutput):
    last_hidden_state: Array = None
    past_key_values: Optional[dict] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    cross_attentions: Optional[tuple] = None


@struct.dataclass
class FlaxCausalLMOutputWithCrossAttentions(ModelOutput):
    loss: Array = None
    logits: Array = None
    past_key_values: Optional[dict] = None
    hidden_states: Optional[tuple] = None
    attentions: Optional[tuple] = None
    cross_attentions: Optional[tuple] = None


@struct.dataclass
class FlaxSeq2SeqModelOutput(ModelOutput):
    last_hidden_state: Array = None
    past_key_values: Optional[dict] = None
    decoder_hidden_states: Optional[tuple] = None
    decoder_attentions: Optional[tuple] = None
    cross_attentions: Optional[tuple] = None
    encoder_last_hidden_state: Array = None
    encoder_hidden_states: Optional[tuple] = None
    encoder_attentions: Optional[tuple] = None


@struct.dataclass
class FlaxSeq2SeqLMOutput(ModelOutput):
    loss: Array = None
    logits: Array = None
    past_key_values: Optional[dict] = None
    decoder_hidden_states: Optional[tuple] = None
    decoder_attentions: Optional[tuple] = None
    cross_attentions: Optional[tuple] = None
    encoder_last_hidden_state: Array = None
    encoder_hidden_states: Optional[tuple] = None
    encoder_attentions: Optional[tuple] = None


@struct.dataclass
class FlaxSeq2SeqSequenceClassifierOutput(ModelOutput):
    loss: Array = None
    logits: Array = None
    past_key_values: Optional[dict] = None
    decoder_hidden_states: Optional[tuple] = None
    decoder_attentions: Optional[tuple] = None
    cross_attentions: Optional[tuple] = None
    encoder_last_hidden_state: Array = None
    encoder_hidden_states: Optional[tuple] = None
    encoder_attentions: Optional[tuple] = None


@struct.dataclass
class FlaxSeq2SeqQuestionAnsweringModelOutput(ModelOutput):
    loss: Array = None
    start_logits: Array = None
    end_logits: Array = None
    past_key_values: Optional[dict] = None
    decoder_hidden_states: Optional[tuple] = None
    decoder_attentions: Optional[tuple] = None
    cross_attentions: Optional[tuple] = None
    encoder_last_hidden_state: Array = None
    encoder_hidden_states: Optional[tuple] = None
    encoder_attentions: Optional[tuple] = None
