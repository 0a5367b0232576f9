"""GenerationConfig: the settings of `generate`, read from and written to `generation_config.json`.

Fields left at None are "unset": `generate` fills them from the model's generation config, then
from the global defaults (PyTorch transformers' values), in that order. Keys this class does not
model are kept in `extra` and written back. Known transformers settings that `generate` cannot
honour are refused when they hold a non-default value, naming the field.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any, Mapping

GENERATION_CONFIG_NAME = "generation_config.json"

# The global defaults PyTorch transformers applies to settings nobody set.
DEFAULTS: dict[str, Any] = dict(
    max_length=20, min_length=0, do_sample=False, early_stopping=False, num_beams=1, temperature=1.0,
    top_k=50, top_p=1.0, repetition_penalty=1.0, length_penalty=1.0, no_repeat_ngram_size=0,
    num_return_sequences=1, output_scores=False, return_dict_in_generate=False, use_cache=True,
)

# transformers settings that `generate` does not implement, with the value that means "off".
UNSUPPORTED: dict[str, Any] = dict(
    num_beam_groups=1, diversity_penalty=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, min_p=None,
    top_h=None, encoder_repetition_penalty=1.0, encoder_no_repeat_ngram_size=0,
    exponential_decay_length_penalty=None, remove_invalid_values=False, renormalize_logits=False,
    sequence_bias=None, guidance_scale=None, penalty_alpha=None, constraints=None, force_words_ids=None,
    forced_decoder_ids=None, stop_strings=None, max_time=None, output_attentions=False,
    output_hidden_states=False, output_logits=None, low_memory=None, watermarking_config=None,
    prompt_lookup_num_tokens=None, token_healing=False, dola_layers=None,
)
# Values equivalent to "off" beside the one above (hub files write either).
_ALSO_OFF = {"guidance_scale": (1.0,), "output_logits": (False,), "low_memory": (False,)}


def unsupported_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `values` that ask for a transformers feature this `generate` lacks."""
    return {k: v for k, v in values.items()
            if k in UNSUPPORTED and v != UNSUPPORTED[k] and v not in _ALSO_OFF.get(k, ())}


@dataclasses.dataclass
class GenerationConfig:
    """Generation settings, None where unset (`generate` fills those from the model's config, then from
    transformers' defaults). Mutable like 4.x's: `model.generation_config.max_length = 7` holds; a
    name that is no field goes to `extra`, as it would to a 4.x config's attributes."""

    max_length: int | None = None
    max_new_tokens: int | None = None
    min_length: int | None = None
    min_new_tokens: int | None = None
    early_stopping: bool | str | None = None
    do_sample: bool | None = None
    num_beams: int | None = None
    num_return_sequences: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    length_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    bad_words_ids: list | None = None
    suppress_tokens: list | None = None
    begin_suppress_tokens: list | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | list | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None
    pad_token_id: int | None = None
    decoder_start_token_id: int | None = None
    output_scores: bool | None = None
    return_dict_in_generate: bool | None = None
    use_cache: bool | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "extra", dict(self.extra))

    def __hash__(self):   # of the values, consistent with == (as BartConfig's): an assignment changes it
        from flax_bart.config import frozen_value

        return hash(frozen_value(self.to_dict()))

    def __copy__(self) -> "GenerationConfig":   # its own `extra`, not the original's
        return type(self).from_dict(self.to_dict())

    def update_from(self, other: "GenerationConfig") -> None:
        """Take every value of `other` in place (a held reference sees them)."""
        for name in self.field_names():
            object.__setattr__(self, name, copy.deepcopy(getattr(other, name)))
        object.__setattr__(self, "extra", copy.deepcopy(dict(other.extra)))

    def __setattr__(self, name: str, value) -> None:
        if name in _FIELDS or name == "extra" or "extra" not in self.__dict__:   # fields, and __init__
            object.__setattr__(self, name, value)
        else:
            self.extra[name] = value

    def __getattr__(self, name: str):   # only for names that are no field: 4.x read extra keys as attributes
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides) -> "GenerationConfig":
        if not isinstance(d, Mapping):
            raise TypeError(f"a generation config must be a mapping, got {type(d).__name__}")
        d = {**copy.deepcopy(dict(d)), **overrides}
        known = set(cls.field_names())
        return cls(**{k: v for k, v in d.items() if k in known}, extra={k: v for k, v in d.items() if k not in known})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "GenerationConfig":
        try:
            with open(path, "rb") as f:
                d = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a valid JSON generation config ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: a generation config must be a JSON object, got {type(d).__name__}")
        return cls.from_dict(d)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, **hub_kwargs) -> "GenerationConfig":
        """Read `generation_config.json` from a checkpoint directory, a file path, or a cached hub id."""
        path = os.fspath(path_or_id)
        if os.path.isfile(path):
            return cls.from_json_file(path)
        from flax_bart.hub import resolve_checkpoint_dir

        directory = resolve_checkpoint_dir(path, files=(GENERATION_CONFIG_NAME,), **hub_kwargs)
        file = os.path.join(directory, GENERATION_CONFIG_NAME)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{directory}: no {GENERATION_CONFIG_NAME}")
        return cls.from_json_file(file)

    @classmethod
    def from_model_config(cls, config, task: str | None = None) -> "GenerationConfig":
        """The generation settings a model config carries (special tokens, and the generation keys old
        hub `config.json` files hold at top level); with `task`, `task_specific_params[task]` on top."""
        d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        # output_attentions/output_hidden_states there are about the forward pass, not generation
        wanted = (set(cls.field_names()) | set(UNSUPPORTED)) - {"output_attentions", "output_hidden_states"}
        values = {k: v for k, v in d.items() if k in wanted and v is not None}
        if task is not None:
            specific = (d.get("task_specific_params") or {})
            if task not in specific:
                raise KeyError(f"task {task!r} not in the config's task_specific_params {sorted(specific)}")
            values.update(specific[task])
        return cls.from_dict(values)

    # ---- combination ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {k: copy.deepcopy(getattr(self, k)) for k in self.field_names() if getattr(self, k) is not None}
        out.update(copy.deepcopy(self.extra))
        return dict(sorted(out.items()))

    def to_diff_dict(self) -> dict[str, Any]:
        """As 4.x's: the settings whose value differs from a default `GenerationConfig()`'s, where the
        default of a setting is transformers' global default (`DEFAULTS`; "off" for the unsupported ones;
        None for the rest). Unlike `to_dict`, a setting set to its default (`max_length=20`) is left out."""
        def default(k):
            return DEFAULTS.get(k, UNSUPPORTED.get(k))
        return {k: v for k, v in self.to_dict().items()
                if not (k in _FIELDS or k in UNSUPPORTED) or v != default(k)}

    def replace(self, **changes) -> "GenerationConfig":
        """A copy with `changes` (unknown names go to `extra`)."""
        return self.from_dict(self.to_dict(), **changes)

    def merged_over(self, base: "GenerationConfig | None") -> "GenerationConfig":
        """Self's set values, with `base` filling what self leaves unset (extra keys too)."""
        if base is None:
            return self
        d = base.to_dict()
        d.update(self.to_dict())
        return self.from_dict(d)

    def with_defaults(self) -> "GenerationConfig":
        return self.merged_over(GenerationConfig.from_dict(DEFAULTS))

    # ---- files ------------------------------------------------------------------------------
    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        from flax_bart.io_utils import save_text_file

        return save_text_file(directory, GENERATION_CONFIG_NAME, self.to_json_string())


_FIELDS = frozenset(GenerationConfig.field_names())
_dataclass_init = GenerationConfig.__init__


def _init(self, *args, extra=None, **kwargs):
    """The dataclass's __init__; a keyword that is no setting goes to `extra` (4.x kept it as an attribute)."""
    unknown = {k: kwargs.pop(k) for k in list(kwargs) if k not in _FIELDS}
    _dataclass_init(self, *args, extra={**dict(extra or {}), **unknown}, **kwargs)


GenerationConfig.__init__ = _init
