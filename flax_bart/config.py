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
import logging
import itertools
import math
import os
import stat
from typing import Any, Mapping

from flax_bart.activations import ACTIVATIONS

logger = logging.getLogger("flax_bart")

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


# What `problem_type` may say (a standard transformers config field): the sequence-classification loss.
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


class ConfigError(ValueError):
    """A config.json value this implementation cannot honour."""


_INT_FIELDS = (
    "vocab_size", "max_position_embeddings", "d_model", "encoder_layers", "decoder_layers",
    "encoder_ffn_dim", "decoder_ffn_dim", "encoder_attention_heads", "decoder_attention_heads",
)
_PROB_FIELDS = (
    "dropout", "attention_dropout", "activation_dropout", "classifier_dropout",
    "encoder_layerdrop", "decoder_layerdrop",
)
_BOOL_FIELDS = (
    "scale_embedding", "separate_input_embeddings", "use_cache", "tie_word_embeddings", "is_encoder_decoder", "output_attentions",
    "output_hidden_states", "return_dict",
)

# Ceilings on what a config.json can make this code build. They sit far above any BART (large: 406M
# parameters, 12 + 12 layers) and exist for untrusted configs: a model is laid out from the config
# alone (parameter shape trees, conversion plans, traced programs) before any weight is read, so a
# config must not be able to ask for unbounded work or memory. Loaders also check every size against
# the weights' actual shapes; these are the backstop where there are no weights yet.
MAX_DIM = 2**31 - 1          # sizes index int32 arrays (token ids, positions) in JAX
MAX_LAYERS = 1024            # layers are unrolled: trees, plans and traced programs grow per layer
MAX_LABELS = 2**16           # id2label is built in memory
MAX_PARAMETERS = 2**40       # every tensor of every head, counted in closed form
MAX_JSON_BYTES = 16 * 2**20  # config.json and index files (hub configs are a few KB)
MAX_JSON_DEPTH = 64          # nesting of JSON objects/arrays accepted from a file


class _DuplicateKey(ValueError):
    pass


def _unique_pairs(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise _DuplicateKey(k)
        seen[k] = v
    return seen


def parse_json(raw: bytes, where: str, what: str = "JSON", error: type[Exception] = None,
               unique_keys: bool = False) -> Any:
    """JSON from untrusted bytes: UTF-8, at most MAX_JSON_DEPTH levels deep (and, with `unique_keys`,
    no key twice in an object: Python's json keeps the last silently); anything else raises `error`
    (default ConfigError) naming `where` and `what`. Python's own json module would raise
    RecursionError or a bare ValueError (e.g. for integers of more than 4300 digits)."""
    error = error or ConfigError
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{where}: {what} is not valid UTF-8 JSON (not UTF-8 text: {e})") from None
    too_deep = f"{where}: {what} nests JSON deeper than {MAX_JSON_DEPTH} levels"
    try:
        value = json.loads(text, object_pairs_hook=_unique_pairs if unique_keys else None)
    except RecursionError:
        raise error(too_deep) from None
    except _DuplicateKey as e:
        raise error(f"{where}: {what} holds the key {e.args[0]!r} twice") from None
    except ValueError as e:  # JSONDecodeError, and e.g. the 4300-digit limit on integers
        raise error(f"{where}: {what} is not valid UTF-8 JSON (not valid JSON: {e})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise error(too_deep)
    return value


def _depth(value) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            if d > MAX_JSON_DEPTH:
                break
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node)
                         if isinstance(v, (dict, list)))   # (not a tuple per number of a long list)
    return deepest


def read_json_file(path: str | os.PathLike, what: str = "JSON file", error: type[Exception] = None,
                   max_bytes: int = MAX_JSON_BYTES, unique_keys: bool = False) -> Any:
    """`parse_json` of a regular file of at most `max_bytes` (checked before reading: a FIFO or a
    device would block or never end, a huge file would be read into memory)."""
    error = error or ConfigError
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # opening a FIFO must not wait
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: {what} is not a regular file")
        if st.st_size > max_bytes:
            raise error(f"{path}: {what} is {st.st_size} bytes, more than the {max_bytes}-byte limit")
        with os.fdopen(fd, "rb") as f:
            fd = None
            raw = f.read(max_bytes + 1)
    finally:
        if fd is not None:
            os.close(fd)
    if len(raw) > max_bytes:
        raise error(f"{path}: {what} is more than {max_bytes} bytes")
    return parse_json(raw, path, what, error, unique_keys)


def _default_labels(num_labels) -> dict[int, str]:
    """id2label for `num_labels` ("LABEL_0", ...), checked before anything is built."""
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or not 0 < num_labels <= MAX_LABELS:
        raise ConfigError(f"config field 'num_labels' must be an integer in [1, {MAX_LABELS}], got {num_labels!r}")
    return {i: f"LABEL_{i}" for i in range(num_labels)}


@dataclasses.dataclass
class BartConfig:
    """BART's config, as 4.x's `BartConfig` reads: `BartConfig(d_model=64, num_labels=5, is_decoder=True)`,
    `config.num_attention_heads`, `config.some_extra_key`, and assignments (`config.output_hidden_states =
    True`, `config.num_labels = 2`), each checked as config.json's values are (a bad value is refused and
    the config left as it was). Names that are no field live in `extra` and are written back to config.json.
    """
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
    # transformers v5 with tie_word_embeddings=False: `shared`, `encoder.embed_tokens` and
    # `decoder.embed_tokens` are three parameters. True: the Flax tree holds all three
    # (model/shared, model/encoder/embed_tokens, model/decoder/embed_tokens) and the encoder and decoder
    # read their own. Set by the loaders when a checkpoint's copies differ; written to config.json only
    # when True.
    separate_input_embeddings: bool = False
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
    # The sequence-classification loss; None picks it from num_labels and the labels' dtype per call
    # (`flax_bart.losses.problem_type_for`). Written to config.json only when set.
    problem_type: str | None = None
    id2label: Mapping[int, str] | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # False when the config named no labels at all (no num_labels, id2label or label2id: transformers
    # v5 drops them as defaults); loaders then take the label count from the classifier's weights
    # (`with_labels_from_weights`). Not serialised, not compared.
    labels_given: bool = dataclasses.field(default=True, compare=False, repr=False)

    def __post_init__(self):
        id2label = self.id2label
        if id2label is None:
            id2label = _default_labels(self.extra.get("num_labels", 3))
        else:
            try:
                id2label = {int(k): str(v) for k, v in dict(id2label).items()}
            except (TypeError, ValueError) as e:
                raise ConfigError(f"id2label: keys must be integers, got {dict(id2label)!r}") from e
        object.__setattr__(self, "id2label", id2label)
        object.__setattr__(self, "extra", dict(self.extra))
        self._validate()
        if self.extra.get("model_type") == "bart":   # what to_dict always writes: a JSON round trip is equal
            del self.extra["model_type"]
        object.__setattr__(self, "_serial", next(_SERIALS))
        object.__setattr__(self, "_ready", True)

    def __copy__(self) -> "BartConfig":   # a config of its own (its version too), not a view of this one
        return dataclasses.replace(self)

    def __deepcopy__(self, memo) -> "BartConfig":
        return dataclasses.replace(self, extra=copy.deepcopy(self.extra, memo))

    def __setattr__(self, name: str, value) -> None:
        if not self.__dict__.get("_ready"):   # the dataclass __init__ setting its fields
            object.__setattr__(self, name, value)
            return
        if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            value = value.item()   # a NumPy scalar, as 4.x took it
        target = _ALIASES.get(name, name)
        if isinstance(getattr(type(self), target, None), property) and target not in ("num_labels", "label2id"):
            raise AttributeError(f"BartConfig.{name} is read from other fields and cannot be set "
                                 f"(e.g. num_hidden_layers is encoder_layers)")
        changed = self.replace(**{target: value})   # validated like config.json
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, getattr(changed, f.name))
        # models holding this config drop the programs and shapes they built from the old values
        object.__setattr__(self, "_version", self.__dict__.get("_version", 0) + 1)

    @property
    def version(self) -> tuple[int, int]:
        """(this config's serial number, assignments so far): what a model's compiled programs were built
        from (a serial, not id(): a new config may reuse a collected one's id)."""
        return self.__dict__.get("_serial", 0), self.__dict__.get("_version", 0)

    def __getattr__(self, name: str):   # only names that are no field or property
        if name.startswith("__"):
            raise AttributeError(name)
        extra = self.__dict__.get("extra")
        if extra is not None and name in extra:
            return extra[name]
        if name in _ALIASES:
            return getattr(self, _ALIASES[name])
        if name in _PRETRAINED_DEFAULTS:
            return _PRETRAINED_DEFAULTS[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    # ---- validation -------------------------------------------------------------------------
    def _validate(self):
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"config field {name!r} must be a positive integer, got {v!r}")
            limit = MAX_LAYERS if name.endswith("_layers") else MAX_DIM
            if v > limit:
                raise ConfigError(f"config field {name!r}={v} is larger than this implementation builds (at most {limit})")
        for name in _BOOL_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise ConfigError(f"config field {name!r} must be true or false, got {v!r}")
        if isinstance(self.init_std, bool) or not isinstance(self.init_std, (int, float)) \
                or not math.isfinite(self.init_std) or self.init_std < 0:
            raise ConfigError(f"config field 'init_std' must be a finite number >= 0, got {self.init_std!r}")
        if self.separate_input_embeddings and self.tie_word_embeddings:
            raise ConfigError("config field 'separate_input_embeddings' is true, but 'tie_word_embeddings' is true "
                              "too: separate input embeddings are the untied layout of transformers v5")
        if self.num_labels > MAX_LABELS:
            raise ConfigError(f"config field 'id2label' has {self.num_labels} labels, more than {MAX_LABELS}")
        for side in ("encoder", "decoder"):
            heads = getattr(self, f"{side}_attention_heads")
            if self.d_model % heads:
                raise ConfigError(
                    f"d_model={self.d_model} is not divisible by {side}_attention_heads={heads}"
                )
        for name in _PROB_FIELDS:
            v = getattr(self, name)
            if v is None and name == "classifier_dropout":
                continue
            if v is None:   # a config.json null: no dropout (the model code needs a number)
                object.__setattr__(self, name, 0.0)
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ConfigError(f"config field {name!r} must be a probability in [0, 1], got {v!r}")
        if not isinstance(self.activation_function, str) or self.activation_function not in ACTIVATIONS:
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
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"config field 'problem_type'={self.problem_type!r} is not one of {list(PROBLEM_TYPES)} "
                              "or null")
        if self.extra.get("model_type", "bart") != "bart":
            raise ConfigError(f"config field 'model_type'={self.extra['model_type']!r}: expected 'bart'")
        total, parts = self._parameter_parts()
        if total > MAX_PARAMETERS:
            what, n = max(parts.items(), key=lambda kv: kv[1])
            raise ConfigError(
                f"config describes a model of {total:.3g} parameters, more than this implementation builds "
                f"({MAX_PARAMETERS:.3g}); the largest part is {what} = {n:.3g} parameters"
            )

    def _parameter_parts(self) -> tuple[int, dict[str, int]]:
        """Closed-form parameter counts (every tensor of every head) by the fields that set them."""
        d, v, p = self.d_model, self.vocab_size, self.max_position_embeddings

        def layers(side: str, attn: int) -> int:
            ffn = getattr(self, f"{side}_ffn_dim")
            per = attn * (4 * d * d + 6 * d) + 2 * d * ffn + ffn + 3 * d
            return getattr(self, f"{side}_layers") * per

        parts = {
            f"the word embedding (vocab_size={v} x d_model={d})": v * d * (1 if self.tie_word_embeddings else 2) + v,
            f"the position embeddings ((max_position_embeddings={p} + 2) x d_model={d}, twice)": 2 * (p + 2) * d + 4 * d,
            f"the encoder layers (encoder_layers={self.encoder_layers}, d_model={d}, "
            f"encoder_ffn_dim={self.encoder_ffn_dim})": layers("encoder", 1),
            f"the decoder layers (decoder_layers={self.decoder_layers}, d_model={d}, "
            f"decoder_ffn_dim={self.decoder_ffn_dim})": layers("decoder", 2),
            f"the heads (d_model={d}, num_labels={self.num_labels})": d * d + d + (d + 1) * self.num_labels + 2 * d + 2,
        }
        return sum(parts.values()), parts

    def num_parameters(self) -> int:
        """Parameters of every tensor any head of this config can have (an upper bound for one head)."""
        return self._parameter_parts()[0]

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

    def with_labels_from_weights(self, rows: int | None, where: str = "the checkpoint", *,
                                 log: bool = True) -> "BartConfig":
        """This config, or a copy with `num_labels=rows` when it named no labels and the classifier's
        `out_proj` has `rows` rows (logged in one line). Named labels always win: a real disagreement is
        left for the shape check to refuse."""
        if self.labels_given or rows is None or rows == self.num_labels:
            return self
        if isinstance(rows, bool) or not isinstance(rows, int) or not 0 < rows <= MAX_LABELS:
            return self  # the shape check reports it
        if log:
            logger.warning("config.json names no labels; %s's classification_head.out_proj has %d rows: num_labels=%d",
                           where, rows, rows)
        return self.replace(num_labels=rows)

    def replace(self, **changes) -> "BartConfig":
        """A copy with `changes`; 4.x's alias names (`hidden_size`, `num_attention_heads`) set their fields,
        unknown names go to `extra`."""
        known = {f.name for f in dataclasses.fields(self)}
        extra = dict(self.extra)
        kw = {}
        for k, v in _without_aliases(changes).items():
            if k in ("num_labels", "id2label", "label2id"):
                kw["labels_given"] = True
            if k == "num_labels":
                kw["id2label"] = _default_labels(v)
            elif k == "label2id":
                try:
                    kw["id2label"] = {int(i): str(label) for label, i in dict(v).items()}
                except (TypeError, ValueError) as e:
                    raise ConfigError(f"config field 'label2id' must map labels to integer ids, got {v!r}") from e
            elif k in known:
                kw[k] = v
            else:
                extra[k] = v
        kw.setdefault("extra", extra)
        return dataclasses.replace(self, **kw)

    def __hash__(self):   # of the compared values, consistent with ==: an assignment changes it
        return hash(frozen_value({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}))

    # ---- (de)serialisation ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides) -> "BartConfig":
        if not isinstance(d, Mapping):
            raise ConfigError(f"a BART config must be a JSON object, got {type(d).__name__}")
        if _depth(d) > MAX_JSON_DEPTH:
            raise ConfigError(f"a BART config may nest at most {MAX_JSON_DEPTH} levels deep")
        d = copy.deepcopy(dict(d))
        d.update(overrides)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra", "labels_given"}
        labels_given = any(k in d for k in ("num_labels", "id2label", "label2id"))
        kwargs = {k: d.pop(k) for k in list(d) if k in known}
        kwargs["labels_given"] = labels_given
        label2id = d.pop("label2id", None)
        num_labels = d.pop("num_labels", None)
        id2label = kwargs.get("id2label")
        if id2label is not None and not isinstance(id2label, Mapping):
            raise ConfigError(f"config field 'id2label' must be an object of id -> label, got {id2label!r}")
        if id2label is not None and len(id2label) > MAX_LABELS:
            raise ConfigError(f"config field 'id2label' has {len(id2label)} labels, more than {MAX_LABELS}")
        if id2label is None and num_labels is not None:
            kwargs["id2label"] = _default_labels(num_labels)
        elif id2label is None and isinstance(label2id, Mapping):   # label2id alone names the labels
            try:
                kwargs["id2label"] = {int(i): str(label) for label, i in label2id.items()}
            except (TypeError, ValueError) as e:
                raise ConfigError(f"config field 'label2id' must map labels to integer ids, got {label2id!r}") from e
        if label2id is not None and kwargs.get("id2label") is not None:
            try:
                inv = {str(v): int(k) for k, v in dict(kwargs["id2label"]).items()}
                given = {str(k): int(v) for k, v in dict(label2id).items()}
            except (TypeError, ValueError) as e:
                raise ConfigError(f"config fields 'id2label'/'label2id' must map ids and labels ({e})") from None
            if given != inv:
                raise ConfigError(f"label2id {label2id!r} does not invert id2label {kwargs['id2label']!r}")
        return cls(**kwargs, extra=d)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "BartConfig":
        d = read_json_file(path, "config")
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{path}: {type(e).__name__}: {e}") from None

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, cache_dir=None, force_download: bool = False,
                        local_files_only: bool = False, token=None, use_auth_token=None, revision=None,
                        subfolder: str = "", return_unused_kwargs: bool = False, **kwargs):
        """config.json of a checkpoint (a directory, a file's directory or a hub id). As 4.x: keywords naming
        a config attribute (`knows`) override it; the others are returned with `return_unused_kwargs=True`
        as `(config, unused)`, else ignored; 4.x's loader-only keywords (`proxies`, `_from_auto`, ...) too."""
        from flax_bart.hub import one_token, resolve_checkpoint_dir

        for name in _LOADER_ONLY:
            kwargs.pop(name, None)
        directory = resolve_checkpoint_dir(path_or_id, files=(CONFIG_NAME,), cache_dir=cache_dir,
                                           force_download=force_download, local_files_only=local_files_only or None,
                                           token=one_token(token, use_auth_token), revision=revision,
                                           subfolder=subfolder)
        config = cls.from_json_file(os.path.join(directory, CONFIG_NAME))
        known = {k: v for k, v in kwargs.items() if config.knows(k)}
        if known:
            config = config.replace(**known)
        unused = {k: v for k, v in kwargs.items() if k not in known}
        return (config, unused) if return_unused_kwargs else config

    def knows(self, name: str) -> bool:
        """Whether `name` is an attribute of this config as 4.x's `hasattr(config, name)` saw it: a field,
        an alias, a key of its config.json, or one of 4.x's PretrainedConfig attributes."""
        return (name in _FIELD_NAMES or name in _ALIASES or name in self.extra or name in _PRETRAINED_DEFAULTS
                or name in _PRETRAINED_ATTRIBUTES or isinstance(getattr(type(self), name, None), property))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("extra", "id2label", "labels_given"):
                continue
            out[f.name] = copy.deepcopy(getattr(self, f.name))
        if not self.separate_input_embeddings:  # the 4.x layout: config.json stays as 4.x/v5 write it
            del out["separate_input_embeddings"]
        if self.problem_type is None:  # as transformers writes a config that never set it
            del out["problem_type"]
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = {v: k for k, v in self.id2label.items()}
        out.update(copy.deepcopy(self.extra))
        out.setdefault("model_type", "bart")
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        from flax_bart.io_utils import save_text_file

        return save_text_file(directory, CONFIG_NAME, self.to_json_string())


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(BartConfig))
_SERIALS = itertools.count(1)


def frozen_value(value):
    """A hashable form of a JSON-like value whose hash agrees with ==  (1 == 1.0 hash alike; dicts and
    lists by content)."""
    if isinstance(value, Mapping):
        return tuple(sorted(((repr(k), frozen_value(v)) for k, v in value.items()), key=lambda kv: kv[0]))
    if isinstance(value, (list, tuple)):
        return tuple(frozen_value(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value
# 4.x BartConfig's attribute_map, and what 4.x's PretrainedConfig answered for attributes BART never set
_ALIASES = {"hidden_size": "d_model", "num_attention_heads": "encoder_attention_heads"}
_PRETRAINED_DEFAULTS = {"model_type": "bart", "is_decoder": False, "add_cross_attention": False,
                        "architectures": None, "torchscript": False, "tie_encoder_decoder": False}
# 4.x's PretrainedConfig also answered the global generation defaults (`config.max_length` is 20). They are
# read here only: not written to config.json, and so not taken into the generation config derived from
# the model config (whose unset fields keep generate's own defaults). A config.json or an assignment that
# sets one keeps it in `extra`, as before.
_PRETRAINED_DEFAULTS.update(
    max_length=20, min_length=0, do_sample=False, early_stopping=False, num_beams=1, temperature=1.0, top_k=50,
    top_p=1.0, typical_p=1.0, repetition_penalty=1.0, length_penalty=1.0, no_repeat_ngram_size=0,
    encoder_no_repeat_ngram_size=0, bad_words_ids=None, num_return_sequences=1, output_scores=False,
    return_dict_in_generate=False, remove_invalid_values=False, exponential_decay_length_penalty=None,
    suppress_tokens=None, begin_suppress_tokens=None, num_beam_groups=1, diversity_penalty=0.0,
)
# The other attributes 4.x's PretrainedConfig set on every config (transformers 4.57): from_pretrained's
# keywords naming one override it there, so they are config overrides here too (kept in `extra`).
_PRETRAINED_ATTRIBUTES = frozenset({
    "return_dict", "output_hidden_states", "output_attentions", "torch_dtype", "dtype", "use_bfloat16",
    "pruned_heads", "chunk_size_feed_forward", "is_encoder_decoder", "cross_attention_hidden_size",
    "finetuning_task", "tokenizer_class", "prefix", "sep_token_id", "task_specific_params", "tf_legacy_loss",
    "transformers_version", "_name_or_path", "name_or_path", "_attn_implementation",
    "forced_bos_token_id", "forced_eos_token_id",
})
# 4.x's loading-only keywords of BartConfig.from_pretrained (no config attribute, no effect here)
_LOADER_ONLY = ("proxies", "resume_download", "mirror", "trust_remote_code", "_from_auto", "_from_pipeline",
                "_commit_hash")
_dataclass_init = BartConfig.__init__


def _without_aliases(d: dict) -> dict:
    """`d` with 4.x's alias names (`hidden_size`, ...) under their fields' names (ConfigError if both disagree)."""
    d = dict(d)
    for alias, name in _ALIASES.items():
        if alias in d:
            value = d.pop(alias)
            if name in d and d[name] != value:
                raise ConfigError(f"BartConfig: {alias}={value!r} and {name}={d[name]!r} disagree ({alias} is {name})")
            d[name] = value
    return d


def _init(self, *args, **kwargs):
    """The dataclass's __init__ for its own fields; any other keyword (4.x's `num_labels`, `label2id`,
    `is_decoder`, `hidden_size`, a checkpoint's extra keys) is read as config.json's keys are."""
    if len(args) > len(_FIELD_NAMES):
        raise TypeError(f"BartConfig takes at most {len(_FIELD_NAMES)} positional arguments, got {len(args)}")
    if all(k in _FIELD_NAMES for k in kwargs):
        _dataclass_init(self, *args, **kwargs)
        return
    d = _without_aliases({**dict(zip(_FIELD_NAMES, args)), **kwargs})
    labels_given = d.pop("labels_given", True)   # built in code: its labels are the ones given, or 3
    built = BartConfig.from_dict({**dict(d.pop("extra", None) or {}), **d})
    for f in dataclasses.fields(BartConfig):
        object.__setattr__(self, f.name, getattr(built, f.name))
    object.__setattr__(self, "labels_given", bool(labels_given) or built.labels_given)
    object.__setattr__(self, "_ready", True)


BartConfig.__init__ = _init

