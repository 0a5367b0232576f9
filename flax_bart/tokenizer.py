"""BART's byte-level BPE tokenizer on the `tokenizers` library, without `transformers`.

Loads `tokenizer.json`, or `vocab.json` + `merges.txt`, from a checkpoint directory or the Hugging Face
hub cache, and encodes like `transformers`' BART tokenizer on the same files: `<s> a </s>` for a single
text, `<s> a </s></s> b </s>` for a pair, right padding with `<pad>`, no prefix space by default.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from tokenizers import AddedToken, Encoding, Tokenizer, decoders, models, pre_tokenizers, processors

from .io_utils import atomic_write_text

from .hub import TOKENIZER, resolve_checkpoint_dir

TOKENIZER_FILE, VOCAB_FILE, MERGES_FILE = "tokenizer.json", "vocab.json", "merges.txt"
CONFIG_FILE, SPECIAL_TOKENS_FILE = "tokenizer_config.json", "special_tokens_map.json"
_SPECIAL_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                     "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
_PADDING = {False: None, "do_not_pad": None, True: "longest", "longest": "longest", "max_length": "max_length"}
_TRUNCATION = {None: None, False: None, "do_not_truncate": None, True: "longest_first",
               "longest_first": "longest_first", "only_first": "only_first", "only_second": "only_second"}


class BatchEncoding(dict):
    """The tokenizer's output: a dict (so `model(**inputs)` works) with attribute access (`inputs.input_ids`).

    `encodings` holds the `tokenizers.Encoding` of each row (overflowing windows are rows of their own).
    """

    def __init__(self, data: dict[str, Any], encodings: list[Encoding] | None = None):
        super().__init__(data)
        self._encodings = encodings

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}; fields: {sorted(self)}") from None

    @property
    def encodings(self) -> list[Encoding] | None:
        return self._encodings

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        """Per token of row `batch_index`: 0 for the first text, 1 for the pair's second, None for special/pad."""
        if not self._encodings:
            raise ValueError("sequence_ids needs the row encodings, which this BatchEncoding does not hold")
        return self._encodings[batch_index].sequence_ids


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid UTF-8 JSON ({e})") from e


def _token_spec(value: Any, field: str, source: str) -> AddedToken:
    if isinstance(value, str):
        return AddedToken(value, special=True, normalized=False)
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return AddedToken(value["content"], single_word=bool(value.get("single_word", False)),
                          lstrip=bool(value.get("lstrip", False)), rstrip=bool(value.get("rstrip", False)),
                          normalized=bool(value.get("normalized", False)), special=True)
    raise ValueError(f"{source}: {field} must be a string or an object with 'content', got {value!r}")


def _bpe_from_files(vocab_path: str, merges_path: str) -> Tokenizer:
    vocab = _read_json(vocab_path)
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise ValueError(f"{vocab_path}: expected a JSON object mapping tokens to integer ids")
    merges = []
    with open(merges_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise ValueError(f"{merges_path}:{lineno}: expected two tokens separated by a space, got {line!r}")
            merges.append((parts[0], parts[1]))
    return Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                                end_of_word_suffix="", fuse_unk=False))


class BartTokenizer:
    """Byte-level BPE tokenizer of BART with the call interface of `transformers`' tokenizers.

    Not thread-safe: each call sets the backend's truncation and padding for that call.
    """

    padding_side = "right"
    truncation_side = "right"

    def __init__(self, tokenizer: Tokenizer, *, special_tokens: dict[str, AddedToken] | None = None,
                 model_max_length: int | None = None, name_or_path: str = "",
                 clean_up_tokenization_spaces: bool = False, add_prefix_space: bool = False,
                 trim_offsets: bool = True):
        self._tok = tokenizer
        self._tok.no_truncation()
        self._tok.no_padding()
        specs = {k: AddedToken(v, special=True, normalized=False) for k, v in _SPECIAL_DEFAULTS.items()}
        specs.update(special_tokens or {})
        self._special = specs
        present = {t.content for t in self._tok.get_added_tokens_decoder().values()}
        missing = [s for s in specs.values() if s.content not in present]
        if missing:
            self._tok.add_special_tokens(list({s.content: s for s in missing}.values()))
        self.model_max_length = model_max_length
        self.name_or_path = name_or_path
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.add_prefix_space = add_prefix_space
        self.trim_offsets = trim_offsets

    # ---------------------------------------------------------------- loading and saving
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                        revision: str | None = None, local_files_only: bool | None = None, *,
                        add_prefix_space: bool | None = None, model_max_length: int | None = None,
                        subfolder: str = "", token: str | bool | None = None) -> BartTokenizer:
        """Load from a directory or a hub id (`tokenizer.json` first, else `vocab.json` + `merges.txt`).

        `tokenizer_config.json` and `special_tokens_map.json` supply the special tokens (e.g. `<mask>` with
        `lstrip`), `model_max_length` and `add_prefix_space` when present.
        """
        path = os.fspath(path_or_hub_id)
        directory = resolve_checkpoint_dir(path, cache_dir=cache_dir, revision=revision,
                                           local_files_only=local_files_only, subfolder=subfolder, token=token,
                                           files=TOKENIZER)
        files = {n: os.path.join(directory, n) for n in (TOKENIZER_FILE, VOCAB_FILE, MERGES_FILE, CONFIG_FILE,
                                                          SPECIAL_TOKENS_FILE)}
        have = {n for n, p in files.items() if os.path.isfile(p)}
        config = _read_json(files[CONFIG_FILE]) if CONFIG_FILE in have else {}
        smap = _read_json(files[SPECIAL_TOKENS_FILE]) if SPECIAL_TOKENS_FILE in have else {}
        for name, obj in ((CONFIG_FILE, config), (SPECIAL_TOKENS_FILE, smap)):
            if not isinstance(obj, dict):
                raise ValueError(f"{files[name]}: expected a JSON object, got {type(obj).__name__}")
        special = {}
        for source, obj in ((files[CONFIG_FILE], config), (files[SPECIAL_TOKENS_FILE], smap)):
            for key in _SPECIAL_DEFAULTS:
                if obj.get(key) is not None:
                    special[key] = _token_spec(obj[key], key, source)
        prefix = add_prefix_space if add_prefix_space is not None else config.get("add_prefix_space")
        trim = bool(config.get("trim_offsets", True))
        if TOKENIZER_FILE in have:
            try:
                tok = Tokenizer.from_file(files[TOKENIZER_FILE])
            except Exception as e:  # the Rust side raises a bare Exception
                raise ValueError(f"{files[TOKENIZER_FILE]}: cannot be read as a tokenizers file ({e})") from e
        elif {VOCAB_FILE, MERGES_FILE} <= have:
            tok = _bpe_from_files(files[VOCAB_FILE], files[MERGES_FILE])
        else:
            found = sorted(have & {VOCAB_FILE, MERGES_FILE})
            raise FileNotFoundError(
                f"no tokenizer files in {directory}: looked for {TOKENIZER_FILE}, or {VOCAB_FILE} + {MERGES_FILE}"
                f" (found: {', '.join(found) if found else 'none of them'})")
        # vocab/merges, or a prefix-space setting from the caller or the config: build BART's pipeline around the
        # BPE model; otherwise tokenizer.json's own pipeline stands.
        rebuild = prefix is not None or TOKENIZER_FILE not in have
        if rebuild:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(prefix), trim_offsets=trim)
            tok.decoder = decoders.ByteLevel()
        else:
            prefix = getattr(tok.pre_tokenizer, "add_prefix_space", False)
        max_len = model_max_length if model_max_length is not None else config.get("model_max_length")
        if isinstance(max_len, (int, float)) and not isinstance(max_len, bool) and max_len >= 10**12:
            max_len = None  # transformers writes a huge sentinel for "no limit"
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len <= 0):
            raise ValueError(f"model_max_length must be a positive int, got {max_len!r} "
                             f"(from {'the argument' if model_max_length is not None else files[CONFIG_FILE]})")
        self = cls(tok, special_tokens=special, model_max_length=max_len, name_or_path=path,
                   add_prefix_space=bool(prefix), trim_offsets=trim)
        for side in ("padding_side", "truncation_side"):
            if side in config:
                if config[side] not in ("left", "right"):
                    raise ValueError(f"{files[CONFIG_FILE]}: {side} must be 'left' or 'right', got {config[side]!r}")
                setattr(self, side, config[side])
        if rebuild:
            self._tok.post_processor = processors.RobertaProcessing(
                (self.sep_token, self.sep_token_id), (self.cls_token, self.cls_token_id), trim, bool(prefix))
        return self

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write `tokenizer.json`, `vocab.json`, `merges.txt`, `special_tokens_map.json`, `tokenizer_config.json`."""
        directory = os.fspath(save_directory)
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise NotADirectoryError(f"save_directory {directory!r} exists and is not a directory")
        os.makedirs(directory, exist_ok=True)
        state = json.loads(self._tok.to_str())
        out = {TOKENIZER_FILE: self._tok.to_str(pretty=True)}
        model = state.get("model", {})
        if model.get("type") == "BPE":
            vocab = dict(model["vocab"])
            for tid, tok in self._tok.get_added_tokens_decoder().items():
                vocab.setdefault(tok.content, tid)
            merges = [m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"]]
            out[VOCAB_FILE] = json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1])), ensure_ascii=False)
            out[MERGES_FILE] = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
        smap = {}
        for key, tok in self._special.items():
            smap[key] = {"content": tok.content, "single_word": tok.single_word, "lstrip": tok.lstrip,
                         "rstrip": tok.rstrip, "normalized": tok.normalized}
        out[SPECIAL_TOKENS_FILE] = json.dumps(smap, indent=2, ensure_ascii=False)
        config = {"tokenizer_class": "BartTokenizer", "add_prefix_space": self.add_prefix_space,
                  "trim_offsets": self.trim_offsets, "errors": "replace",
                  "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
                  "padding_side": self.padding_side, "truncation_side": self.truncation_side, **smap}
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        out[CONFIG_FILE] = json.dumps(config, indent=2, ensure_ascii=False)
        paths = []
        for name, text in out.items():
            atomic_write_text(os.path.join(directory, name), text)
            paths.append(os.path.join(directory, name))
        return tuple(paths)

    # ---------------------------------------------------------------- vocabulary and special tokens
    @property
    def vocab_size(self) -> int:
        """Size of the base vocabulary (added tokens not in it are not counted), as in `transformers`."""
        return self._tok.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    @property
    def backend_tokenizer(self) -> Tokenizer:
        return self._tok

    def _special_token(self, key: str) -> str:
        return self._special[key].content

    def _special_id(self, key: str) -> int:
        tid = self._tok.token_to_id(self._special[key].content)
        if tid is None:  # cannot happen: __init__ registers every special token
            raise KeyError(f"{key} {self._special[key].content!r} is not in the vocabulary")
        return tid

    bos_token = property(lambda self: self._special_token("bos_token"))
    eos_token = property(lambda self: self._special_token("eos_token"))
    unk_token = property(lambda self: self._special_token("unk_token"))
    sep_token = property(lambda self: self._special_token("sep_token"))
    pad_token = property(lambda self: self._special_token("pad_token"))
    cls_token = property(lambda self: self._special_token("cls_token"))
    mask_token = property(lambda self: self._special_token("mask_token"))
    bos_token_id = property(lambda self: self._special_id("bos_token"))
    eos_token_id = property(lambda self: self._special_id("eos_token"))
    unk_token_id = property(lambda self: self._special_id("unk_token"))
    sep_token_id = property(lambda self: self._special_id("sep_token"))
    pad_token_id = property(lambda self: self._special_id("pad_token"))
    cls_token_id = property(lambda self: self._special_id("cls_token"))
    mask_token_id = property(lambda self: self._special_id("mask_token"))

    @property
    def all_special_ids(self) -> list[int]:
        return sorted({self._special_id(k) for k in self._special})

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """How many special tokens encoding adds: 2 for a single text, 4 for a pair."""
        post = self._tok.post_processor
        return post.num_special_tokens_to_add(pair) if post is not None else 0

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False):
        """Token strings (byte-level alphabet) for ids; an id outside the vocabulary gives None."""
        if isinstance(ids, (int, np.integer)):
            return self._tok.id_to_token(int(ids))
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tok.id_to_token(int(i)) for i in _as_id_list(ids, "ids") if int(i) not in special]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]):
        """Ids for token strings; a token outside the vocabulary gives `unk_token_id`."""
        if isinstance(tokens, str):
            tid = self._tok.token_to_id(tokens)
            return self.unk_token_id if tid is None else tid
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def tokenize(self, text: str, text_pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        return self._tok.encode(text, text_pair, add_special_tokens=add_special_tokens).tokens

    # ---------------------------------------------------------------- encoding
    def __call__(self, text, text_pair=None, *, add_special_tokens: bool = True, padding=False, truncation=None,
                 max_length: int | None = None, stride: int = 0, pad_to_multiple_of: int | None = None,
                 return_tensors: str | None = None, return_attention_mask: bool = True,
                 return_offsets_mapping: bool = False, return_overflowing_tokens: bool = False,
                 return_special_tokens_mask: bool = False) -> BatchEncoding:
        """Encode a text, a pair, or a batch of either.

        `padding`: False, True/"longest", "max_length". `truncation`: False, True/"longest_first", "only_first",
        "only_second"; None (default) means no truncation unless `max_length` is given without padding, as in
        `transformers`. As there, an empty `text_pair` next to a single text counts as no pair. `stride` with `return_overflowing_tokens=True` returns every overlapping window as a
        row of its own, plus `overflow_to_sample_mapping`. `return_tensors`: None (lists), "np" or "jax".
        """
        batched, inputs = _normalise_inputs(text, text_pair)
        pad_mode = _lookup(_PADDING, padding, "padding")
        if truncation is None and max_length is not None and pad_mode is None:
            truncation = True
        trunc_mode = _lookup(_TRUNCATION, truncation, "truncation")
        if return_tensors not in (None, "np", "jax"):
            raise ValueError(f"return_tensors must be None, 'np' or 'jax', got {return_tensors!r}")
        for name, value in (("max_length", max_length), ("pad_to_multiple_of", pad_to_multiple_of)):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if not isinstance(stride, int) or stride < 0:
            raise ValueError(f"stride must be a non-negative int, got {stride!r}")
        limit = max_length if max_length is not None else self.model_max_length
        if trunc_mode is not None and limit is not None:
            if stride >= limit:
                raise ValueError(f"stride ({stride}) must be smaller than max_length ({limit})")
            self._tok.enable_truncation(limit, stride=stride, strategy=trunc_mode, direction=self.truncation_side)
        else:
            self._tok.no_truncation()
        if pad_mode is not None:
            if pad_mode == "max_length" and limit is None:
                raise ValueError("padding='max_length' needs max_length (the tokenizer has no model_max_length)")
            self._tok.enable_padding(direction=self.padding_side, pad_id=self.pad_token_id, pad_token=self.pad_token,
                                     length=limit if pad_mode == "max_length" else None,
                                     pad_to_multiple_of=pad_to_multiple_of)
        else:
            self._tok.no_padding()
        try:
            encodings = self._tok.encode_batch(inputs, add_special_tokens=add_special_tokens)
        except Exception as e:  # the Rust side raises a bare Exception, e.g. on impossible truncation
            raise ValueError(f"cannot encode with truncation={truncation!r}, max_length={limit}, stride={stride}: {e}") from e
        finally:
            self._tok.no_truncation()
            self._tok.no_padding()
        rows, sample = [], []
        for i, enc in enumerate(encodings):
            group = [enc] + (list(enc.overflowing) if return_overflowing_tokens else [])
            rows += group
            sample += [i] * len(group)
        data: dict[str, Any] = {"input_ids": [e.ids for e in rows]}
        if return_attention_mask:
            data["attention_mask"] = [e.attention_mask for e in rows]
        if return_special_tokens_mask:
            data["special_tokens_mask"] = [e.special_tokens_mask for e in rows]
        if return_offsets_mapping:
            data["offset_mapping"] = [[tuple(o) for o in e.offsets] for e in rows]
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = sample
        if return_tensors is not None:
            data = {k: _to_tensor(k, v, return_tensors) for k, v in data.items()}
        elif not batched and not return_overflowing_tokens:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data, rows)

    def encode(self, text: str, text_pair: str | None = None, **kwargs) -> list[int]:
        """The `input_ids` of one text or pair (keywords as for `__call__`)."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes one text (str), got {type(text).__name__}; call the tokenizer for batches")
        return self(text, text_pair, **kwargs)["input_ids"]

    # ---------------------------------------------------------------- decoding
    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None) -> str:
        """Text of one sequence of ids. Ids outside the vocabulary are dropped (as the `tokenizers` decoder does).

        `clean_up_tokenization_spaces` (default: the tokenizer's attribute, False) removes the space before
        punctuation and contractions like 4.x tokenizers did; `transformers` v5 ignores it for BPE tokenizers.
        """
        id_list = _as_id_list(ids, "ids")
        text = self._tok.decode(id_list, skip_special_tokens=skip_special_tokens)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return _clean_up_spaces(text) if clean else text

    def batch_decode(self, sequences, skip_special_tokens: bool = False,
                     clean_up_tokenization_spaces: bool | None = None) -> list[str]:
        arr = sequences.tolist() if hasattr(sequences, "tolist") else list(sequences)
        return [self.decode(s, skip_special_tokens, clean_up_tokenization_spaces) for s in arr]

    def __repr__(self) -> str:
        return (f"BartTokenizer(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
                f"len={len(self)}, model_max_length={self.model_max_length})")


def _lookup(table: dict, value: Any, name: str):
    try:
        return table[value]
    except (KeyError, TypeError):
        allowed = ", ".join(repr(k) for k in table)
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}") from None


def _normalise_inputs(text, text_pair) -> tuple[bool, list]:
    def is_pair_tuple(x):
        return isinstance(x, (tuple, list)) and len(x) == 2 and all(isinstance(s, str) for s in x)

    if isinstance(text, str):
        if text_pair is not None and not isinstance(text_pair, str):
            raise TypeError(f"text is a str, so text_pair must be a str or None, got {type(text_pair).__name__}")
        return False, [(text, text_pair) if text_pair else text]  # "" counts as no pair, as in transformers
    if not isinstance(text, (list, tuple)) or not text:
        raise TypeError(f"text must be a str, or a non-empty list of str or of (str, str) pairs; got {text!r:.80}")
    if text_pair is not None:
        if not isinstance(text_pair, (list, tuple)) or len(text_pair) != len(text):
            raise ValueError(f"text_pair must be a list as long as text ({len(text)}), got {text_pair!r:.80}")
        if not all(isinstance(s, str) for s in list(text) + list(text_pair)):
            raise TypeError("text and text_pair must hold only str")
        return True, list(zip(text, text_pair))
    if all(isinstance(s, str) for s in text):
        return True, list(text)
    if all(is_pair_tuple(s) for s in text):
        return True, [tuple(s) for s in text]
    raise TypeError("text must be a list of str or a list of (str, str) pairs, not a mix")


def _as_id_list(ids, name: str) -> list[int]:
    if isinstance(ids, (int, np.integer)):
        return [int(ids)]
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a 1-D sequence of ints, got shape {arr.shape} dtype {arr.dtype}"
                         " (use batch_decode for a batch)")
    return [int(i) for i in arr.tolist()]


def _to_tensor(key: str, rows: list, kind: str):
    lengths = {len(r) for r in rows} if key != "overflow_to_sample_mapping" else {0}
    if len(lengths) > 1:
        raise ValueError(f"cannot make a {kind} array of {key}: rows have lengths {sorted(lengths)};"
                         " pass padding=True (or truncation) for equal lengths")
    arr = np.asarray(rows, dtype=np.int64)
    if key == "offset_mapping":
        arr = arr.reshape(len(rows), lengths.pop(), 2)
    if kind == "jax":
        import jax.numpy as jnp
        return jnp.asarray(arr)
    return arr


def _clean_up_spaces(text: str) -> str:
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text
