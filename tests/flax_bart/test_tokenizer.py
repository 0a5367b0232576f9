"""flax_bart.BartTokenizer against transformers' BART tokenizer on the same (tiny, trained-in-test) files."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from flax_bart.tokenizer import BartTokenizer, BatchEncoding
from tests.tokenizer_utils import ALL_FILES, write_bart_tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello world",
    " leading space and trailing space ",
    "Paris is the capital of France.",
    "Don't stop: it's 3.14159, isn't it?!",
    "Café naïve résumé — 東京 🙂👍🏽 ß",
    "tabs\tand\nnew lines\r\n  double  spaces",
    "fill the <mask> here and <mask>there",
    "<s> literal special tokens </s><pad><unk>",
    "",
    " ",
    "x",
    "unseen wordsqq zzzz Ωmega ∑ ∫",
    " ".join(["The Eiffel Tower was completed in 1889 for the World's Fair."] * 12),
]
PAIRS = [(TEXTS[i], TEXTS[-1 - i]) for i in range(len(TEXTS))]
LAYOUTS = {
    "all_files": ALL_FILES,
    "tokenizer_json": ("tokenizer.json",),
    "vocab_merges": ("vocab.json", "merges.txt"),
    "vocab_merges_config": ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"),
}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def both(request, tmp_path_factory):
    """(ours, transformers') loaded from the same directory."""
    d = write_bart_tokenizer(tmp_path_factory.mktemp(request.param), files=LAYOUTS[request.param])
    return BartTokenizer.from_pretrained(d), transformers.BartTokenizer.from_pretrained(d)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return write_bart_tokenizer(tmp_path_factory.mktemp("tok"))


def _same(ours, theirs):
    assert set(ours) == set(theirs), (sorted(ours), sorted(theirs))
    for key in ours:
        a, b = ours[key], theirs[key]
        a = a.tolist() if hasattr(a, "tolist") else a
        b = b.tolist() if hasattr(b, "tolist") else b
        if key == "offset_mapping":
            a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))
        assert a == b, f"{key} differs:\nours   {a}\ntheirs {b}"


def test_single_texts_ids_masks_offsets(both):
    ours, hf = both
    for text in TEXTS:
        _same(ours(text, return_offsets_mapping=True), hf(text, return_offsets_mapping=True))
        assert ours.encode(text) == hf.encode(text)
        assert ours.tokenize(text) == hf.tokenize(text)


def test_pairs(both):
    ours, hf = both
    for a, b in PAIRS:
        _same(ours(a, b, return_offsets_mapping=True), hf(a, b, return_offsets_mapping=True))
    ids = ours("q", "c")["input_ids"]
    assert ids[0] == ours.bos_token_id and ids.count(ours.eos_token_id) == 3 and ids[-1] == ours.eos_token_id


@pytest.mark.parametrize("kwargs", [
    dict(padding=True),
    dict(padding="longest", return_tensors="np"),
    dict(padding="max_length", max_length=40, truncation=True, return_tensors="np"),
    dict(truncation=True, max_length=12),
    dict(max_length=9),  # truncation=None with max_length truncates, as in transformers
    dict(padding=True, truncation="longest_first", max_length=16, pad_to_multiple_of=8, return_tensors="np"),
    dict(padding=True, return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="np"),
    dict(padding=True, return_attention_mask=False),
])
def test_batches_padding_truncation(both, kwargs):
    ours, hf = both
    _same(ours(TEXTS, **kwargs), hf(TEXTS, **kwargs))


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
def test_pair_batches_truncation_strategies(both, strategy):
    ours, hf = both
    pairs = [("short question?", TEXTS[-1]), (TEXTS[-1], "short context"), ("who?", "Paris.")]
    firsts, seconds = [p[0] for p in pairs], [p[1] for p in pairs]
    if strategy == "only_first":
        pairs, firsts, seconds = pairs[1:2], firsts[1:2], seconds[1:2]
    if strategy == "only_second":
        pairs, firsts, seconds = pairs[::2], firsts[::2], seconds[::2]
    kw = dict(truncation=strategy, max_length=24, padding=True, return_offsets_mapping=True, return_tensors="np")
    _same(ours(firsts, seconds, **kw), hf(firsts, seconds, **kw))
    _same(ours(pairs, **kw), hf(pairs, **kw))


def test_overflowing_windows_with_stride(both):
    ours, hf = both
    kw = dict(truncation="only_second", max_length=30, stride=7, return_overflowing_tokens=True,
              return_offsets_mapping=True, padding=True)
    mine, theirs = ours("Who built it?", TEXTS[-1], **kw), hf("Who built it?", TEXTS[-1], **kw)
    _same(mine, theirs)
    assert len(mine["input_ids"]) > 2 and set(mine["overflow_to_sample_mapping"]) == {0}
    for i in range(len(mine["input_ids"])):
        assert mine.sequence_ids(i) == theirs.sequence_ids(i)
    batch = [("Who?", TEXTS[-1]), ("When?", TEXTS[2])]
    _same(ours(batch, **kw, return_tensors="np"), hf(batch, **kw, return_tensors="np"))


def test_decode_and_tokens(both):
    ours, hf = both
    ids = hf(TEXTS, padding=True)["input_ids"]
    for row in ids:
        for skip in (False, True):
            assert ours.decode(row, skip_special_tokens=skip) == hf.decode(row, skip_special_tokens=skip)
        assert ours.convert_ids_to_tokens(row) == hf.convert_ids_to_tokens(row)
    assert ours.batch_decode(np.asarray(ids), skip_special_tokens=True) == hf.batch_decode(ids, skip_special_tokens=True)
    assert ours.decode(jnp.asarray(ids[2])) == hf.decode(ids[2])
    assert ours.decode(ours.encode(TEXTS[4]), skip_special_tokens=True) == TEXTS[4]
    assert ours.decode([ours.encode("a b .")[1], 9999]) == "a"  # out-of-vocab ids are dropped, as in transformers
    assert ours.decode(ours.encode("Hi , there ."), skip_special_tokens=True, clean_up_tokenization_spaces=True) == "Hi, there."


def test_special_tokens_and_sizes(both):
    ours, hf = both
    for name in ("bos", "eos", "pad", "unk", "sep", "cls", "mask"):
        assert getattr(ours, f"{name}_token") == getattr(hf, f"{name}_token")
        assert getattr(ours, f"{name}_token_id") == getattr(hf, f"{name}_token_id")
    assert (ours.bos_token_id, ours.pad_token_id, ours.eos_token_id, ours.unk_token_id) == (0, 1, 2, 3)
    assert ours.mask_token_id == len(ours) - 1
    assert ours.vocab_size == hf.vocab_size and len(ours) == len(hf)
    assert ours.get_vocab() == hf.get_vocab()
    assert ours.num_special_tokens_to_add(pair=True) == 4 and ours.num_special_tokens_to_add() == 2


def test_batch_encoding_interface(tok_dir):
    tok = BartTokenizer.from_pretrained(tok_dir)
    inputs = tok(["one", "two three"], padding=True, return_tensors="jax")
    assert isinstance(inputs, BatchEncoding) and isinstance(inputs.input_ids, jnp.ndarray)
    width = len(tok.encode("two three"))
    assert inputs.input_ids.shape == inputs.attention_mask.shape == (2, width)
    assert inputs.attention_mask[0].sum() == len(tok.encode("one"))

    def model(input_ids, attention_mask):
        return input_ids * attention_mask

    assert model(**inputs).shape == (2, width)
    with pytest.raises(AttributeError, match="token_type_ids"):
        inputs.token_type_ids
    single = tok("one", return_tensors="np")
    assert single.input_ids.shape == (1, len(tok.encode("one"))) and single.input_ids.dtype == np.int64
    assert tok("one").input_ids == [0, *tok.encode("one", add_special_tokens=False), 2]


def test_model_max_length_from_config(tmp_path):
    d = write_bart_tokenizer(tmp_path, model_max_length=8)
    tok = BartTokenizer.from_pretrained(d)
    assert tok.model_max_length == 8
    assert len(tok(TEXTS[-1], truncation=True)["input_ids"]) == 8
    assert len(tok(TEXTS[-1])["input_ids"]) > 8  # no truncation unless asked
    assert tok("hi", padding="max_length").input_ids[-1] == tok.pad_token_id
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    for value, expected in ((int(1e30), None), (-3, "model_max_length must be a positive int, got -3")):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": value}))
        if expected is None:
            assert BartTokenizer.from_pretrained(d).model_max_length is None  # transformers' "no limit" sentinel
        else:
            with pytest.raises(ValueError, match=expected):
                BartTokenizer.from_pretrained(d)


def test_save_pretrained_round_trip(tok_dir, tmp_path):
    tok = BartTokenizer.from_pretrained(tok_dir)
    written = tok.save_pretrained(tmp_path / "saved")
    assert sorted(os.path.basename(p) for p in written) == sorted(ALL_FILES)
    for loaded in (BartTokenizer.from_pretrained(tmp_path / "saved"),
                   transformers.BartTokenizer.from_pretrained(str(tmp_path / "saved"))):
        for a, b in PAIRS:
            assert loaded(a, b)["input_ids"] == tok(a, b)["input_ids"]
        assert loaded.model_max_length == 1024
    # vocab.json + merges.txt alone reproduce the same ids
    only = tmp_path / "only_vocab"
    only.mkdir()
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
        (only / name).write_bytes((tmp_path / "saved" / name).read_bytes())
    again = BartTokenizer.from_pretrained(only)
    assert [again.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        BartTokenizer.from_pretrained(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "tokenizer.json" in msg and "vocab.json" in msg and "merges.txt" in msg
    write_bart_tokenizer(tmp_path, files=("vocab.json",))
    with pytest.raises(FileNotFoundError, match="found: vocab.json"):
        BartTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json"):
        BartTokenizer.from_pretrained(tmp_path)
    with pytest.raises(OSError, match="nope"):
        BartTokenizer.from_pretrained(tmp_path / "nope" / "deeper")


def test_hub_cache_resolution(tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--tiny-org--tiny-bart"
    write_bart_tokenizer(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    tok = BartTokenizer.from_pretrained("tiny-org/tiny-bart", cache_dir=tmp_path / "cache", local_files_only=True)
    assert tok.encode("Hello world") == BartTokenizer.from_pretrained(repo / "snapshots" / commit).encode("Hello world")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert len(BartTokenizer.from_pretrained("tiny-org/tiny-bart", cache_dir=tmp_path / "cache")) == len(tok)
    with pytest.raises(OSError, match="tiny-org/absent"):
        BartTokenizer.from_pretrained("tiny-org/absent", cache_dir=tmp_path / "cache", local_files_only=True)


def test_bad_arguments(tok_dir):
    tok = BartTokenizer.from_pretrained(tok_dir)
    with pytest.raises(ValueError, match="padding"):
        tok("a", padding="sideways")
    with pytest.raises(ValueError, match="truncation"):
        tok("a", truncation="middle")
    with pytest.raises(ValueError, match="return_tensors"):
        tok("a", return_tensors="pt")
    with pytest.raises(ValueError, match="padding=True"):
        tok(["a", "a b c d"], return_tensors="np")
    with pytest.raises(ValueError, match="stride"):
        tok("a", "b c", truncation="only_second", max_length=4, stride=4)
    with pytest.raises(ValueError, match="max_length"):
        tok("a b c d e f", "g", truncation="only_second", max_length=5)
    with pytest.raises(TypeError, match="text"):
        tok(3)
    with pytest.raises(ValueError, match="text_pair"):
        tok(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="batch_decode"):
        tok.decode([[1, 2], [3, 4]])


@pytest.mark.parametrize("layout", ["all_files", "vocab_merges"])
def test_add_prefix_space_and_left_padding(layout, tmp_path):
    d = write_bart_tokenizer(tmp_path, files=LAYOUTS[layout])
    ours = BartTokenizer.from_pretrained(d, add_prefix_space=True)
    hf = transformers.BartTokenizer.from_pretrained(d, add_prefix_space=True)
    kw = dict(padding=True, return_offsets_mapping=True)
    _same(ours(TEXTS, **kw), hf(TEXTS, **kw))
    _same(ours(PAIRS, **kw), hf(PAIRS, **kw))
    ours.padding_side = hf.padding_side = "left"
    _same(ours(TEXTS, **kw), hf(TEXTS, **kw))
    assert ours(["a", "a b c"], padding=True).input_ids[0][0] == ours.pad_token_id
