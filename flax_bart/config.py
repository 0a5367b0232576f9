"""BartConfig: reads and writes a Hugging Face BART `config.json`.

The config is frozen: make variants with `config.replace(...)`. Keys this class does not model are
kept in `extra` and written back unchanged, so a hub config survives a load/save round trip. Legacy
fields that would change the architecture into something this implementation does not build
(pre-LayerNorm, sinusoidal positions, ...) are refused with an error naming the field.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any, Mapping

from flax_bart.activations import ACTIVATIONS

CONFIG_NAME = "config.json"

# Legacy fields: value this implementation honours (anything else is refused), and why.
_LEGACY_REQUIRED = {
    "normalize_before": (False, "pre-LayerNorm blocks (mBART style) are not BART"),
    "add_final_layer_norm": (False, "a final encoder/decoder LayerNorm is not part of BART"),
    "normalize_embedding": (True, "BART always applies layernorm_embedding"),
    "static_position_embeddings": (False, "sinusoidal positions are not BART's learned positions"),
    "extra_pos_embeddings": (2, "BART's learned positions are offset by exactly 2"),
    "add_bias_logits": (False, "an extra logits bias layer is not part of BART"),
}

_INT_FIELDS = (
    "vocab_size", "max_position_embeddings", "d_model", "encoder_layers", "decoder_layers",
    "encoder_ffn_dim", "decoder_ffn_dim", "encoder_attention_heads", "decoder_attention_heads",
)
_PROB_FIELDS = (
    "dropout", "attention_dropout", "activation_dropout", "classifier_dropout",
    "encoder_layerdrop", "decoder_layerdrop",
)


class ConfigError(ValueError):
    """A config.json value this implementation cannot honour."""


@dataclasses.dataclass(frozen=True)
class BartConfig:
    vocab_size: int = 50265
    max_position_embeddings: int = 1024
    d_model: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 12
    encoder_ffn_dim: int = 4096
    decoder_ffn_dim: int = 4096
    encoder_attention_heads: int = 16
    decoder_attention_heads: int = 16
    encoder_layerdrop: float = 0.0
    decoder_layerdrop: float = 0.0
    activation_function: str = "gelu"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    classifier_dropout: float = 0.0
    init_std: float = 0.02
    scale_embedding: bool = False
    use_cache: bool = True
    tie_word_embeddings: bool = True
    is_encoder_decoder: bool = True
    pad_token_id: int | None = 1
    bos_token_id: int | None = 0
    eos_token_id: int | list | None = 2
    decoder_start_token_id: int | None = 2
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | list | None = 2
    output_attentions: bool = False
    output_hidden_states: bool = False
    return_dict: bool = True
    id2label: Mapping[int, str] | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        id2label = self.id2label
        if id2label is None:
            n = int(self.extra.get("num_labels", 3))
            id2label = {i: f"LABEL_{i}" for i in range(n)}
        else:
            try:
                id2label = {int(k): str(v) for k, v in dict(id2label).items()}
            except (TypeError, ValueError) as e:
                raise ConfigError(f"id2label: keys must be integers, got {dict(id2label)!r}") from e
        object.__setattr__(self, "id2label", id2label)
        object.__setattr__(self, "extra", dict(self.extra))
        self._validate()

    # ---- validation -------------------------------------------------------------------------
    def _validate(self):
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"config field {name!r} must be a positive integer, got {v!r}")
        for side in ("encoder", "decoder"):
            heads = getattr(self, f"{side}_attention_heads")
            if self.d_model % heads:
                raise ConfigError(
                    f"d_model={self.d_model} is not divisible by {side}_attention_heads={heads}"
                )
        for name in _PROB_FIELDS:
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ConfigError(f"config field {name!r} must be a probability in [0, 1], got {v!r}")
        if self.activation_function not in ACTIVATIONS:
            raise ConfigError(
                f"config field 'activation_function'={self.activation_function!r} is not supported; "
                f"supported: {sorted(ACTIVATIONS)}"
            )
        for name in ("pad_token_id", "bos_token_id", "decoder_start_token_id", "forced_bos_token_id"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < self.vocab_size):
                raise ConfigError(
                    f"config field {name!r}={v!r} is not a token id in [0, vocab_size={self.vocab_size})"
                )
        for name in ("eos_token_id", "forced_eos_token_id"):
            v = getattr(self, name)
            ids = v if isinstance(v, (list, tuple)) else [v]
            for i in ids:
                if i is not None and (isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size):
                    raise ConfigError(
                        f"config field {name!r}={v!r} is not a token id in [0, vocab_size={self.vocab_size})"
                    )
        for name, (required, why) in _LEGACY_REQUIRED.items():
            if name in self.extra and self.extra[name] is not None and self.extra[name] != required:
                raise ConfigError(
                    f"config field {name!r}={self.extra[name]!r} is not supported (only {required!r})"
                    + (f": {why}" if why else "")
                )
        if self.extra.get("model_type", "bart") != "bart":
            raise ConfigError(f"config field 'model_type'={self.extra['model_type']!r}: expected 'bart'")

    # ---- derived ----------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_hidden_layers(self) -> int:
        return self.encoder_layers

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        v = self.eos_token_id
        if v is None:
            return ()
        return tuple(v) if isinstance(v, (list, tuple)) else (v,)

    def replace(self, **changes) -> "BartConfig":
        """A copy with `changes`; unknown names go to `extra`."""
        known = {f.name for f in dataclasses.fields(self)}
        extra = dict(self.extra)
        kw = {}
        for k, v in changes.items():
            if k == "num_labels":
                kw["id2label"] = {i: f"LABEL_{i}" for i in range(int(v))}
            elif k in known:
                kw[k] = v
            else:
                extra[k] = v
        kw.setdefault("extra", extra)
        return dataclasses.replace(self, **kw)

    def __hash__(self):
        return hash(self.to_json_string())

    # ---- (de)serialisation ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides) -> "BartConfig":
        if not isinstance(d, Mapping):
            raise ConfigError(f"a BART config must be a JSON object, got {type(d).__name__}")
        d = copy.deepcopy(dict(d))
        d.update(overrides)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: d.pop(k) for k in list(d) if k in known}
        label2id = d.pop("label2id", None)
        num_labels = d.pop("num_labels", None)
        if kwargs.get("id2label") is None and num_labels is not None:
            kwargs["id2label"] = {i: f"LABEL_{i}" for i in range(int(num_labels))}
        if label2id is not None and kwargs.get("id2label") is not None:
            inv = {str(v): int(k) for k, v in dict(kwargs["id2label"]).items()}
            if {str(k): int(v) for k, v in dict(label2id).items()} != inv:
                raise ConfigError(f"label2id {label2id!r} does not invert id2label {kwargs['id2label']!r}")
        return cls(**kwargs, extra=d)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "BartConfig":
        try:
            with open(path, "rb") as f:
                raw = f.read()
            d = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: config is not UTF-8 text ({e})") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        except TypeError as e:
            raise ConfigError(f"{path}: {e}") from None

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **kwargs) -> "BartConfig":
        from flax_bart.hub import resolve_checkpoint_dir

        directory = resolve_checkpoint_dir(path_or_id, **kwargs)
        return cls.from_json_file(os.path.join(directory, CONFIG_NAME))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "id2label"):
                continue
            out[f.name] = copy.deepcopy(getattr(self, f.name))
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = {v: k for k, v in self.id2label.items()}
        out.update(copy.deepcopy(self.extra))
        out.setdefault("model_type", "bart")
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        from flax_bart.io_utils import atomic_write_text

        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CONFIG_NAME)
        atomic_write_text(path, self.to_json_string())
        return path
