"""Test helper: a tiny byte-level BPE tokenizer laid out like a BART hub repository.

`write_bart_tokenizer(directory)` trains a byte-level BPE with the `tokenizers` library on a small
built-in corpus (no network) and writes `vocab.json`, `merges.txt`, `tokenizer.json`,
`special_tokens_map.json` and `tokenizer_config.json`. The ids follow BART's layout: `<s>`=0,
`<pad>`=1, `</s>`=2, `<unk>`=3, the learned tokens, and `<mask>` last (with `lstrip`, as in BART).
The QA and generate CLI tests reuse it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, PAD, EOS, UNK, MASK = "<s>", "<pad>", "</s>", "<unk>", "<mask>"
ALL_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json")

CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital and most populous city of France.",
    "The Eiffel Tower was completed in 1889 for the World's Fair.",
    "BART is a denoising autoencoder for pretraining sequence-to-sequence models.",
    "It is trained by corrupting text with an arbitrary noising function, and learning to reconstruct it.",
    "Question answering extracts a span of the context that answers the question.",
    "Who wrote the report? The committee wrote it in March, 2021.",
    "Numbers like 3.14159, 42 and 1,000,000 appear in text too!",
    "Don't forget: it's what we're doing, isn't it? They've said so.",
    "Café, naïve, résumé — accents and dashes; emoji 🙂 and CJK 東京 also occur.",
    "Tabs\tand  double  spaces,\nnew lines and trailing spaces   ",
    "Summaries are short; articles are long. The model reads the article and writes a summary.",
)


def _train(corpus: Iterable[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=[BOS, PAD, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    return dict(state["vocab"]), merges


def build_bart_tokenizer(corpus: Iterable[str] = CORPUS, vocab_size: int = 400) -> Tokenizer:
    """A `tokenizers.Tokenizer` with BART's pipeline (byte-level BPE, Roberta post-processor)."""
    vocab, merges = _train(corpus, vocab_size)
    for i, tok in enumerate((BOS, PAD, EOS, UNK)):
        if vocab.get(tok) != i:
            raise AssertionError(f"special token {tok!r} got id {vocab.get(tok)}, expected {i}")
    vocab[MASK] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing((EOS, 2), (BOS, 0), trim_offsets=True, add_prefix_space=False)
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (BOS, PAD, EOS, UNK)]
        + [AddedToken(MASK, lstrip=True, rstrip=False, special=True, normalized=False)]
    )
    return tok


def write_bart_tokenizer(
    directory: str | os.PathLike,
    *,
    files: Sequence[str] = ALL_FILES,
    corpus: Iterable[str] = CORPUS,
    vocab_size: int = 400,
    model_max_length: int | None = 1024,
) -> str:
    """Train the tiny tokenizer and write the chosen files of a BART hub repo into `directory`."""
    unknown = set(files) - set(ALL_FILES)
    if unknown:
        raise ValueError(f"files: unknown names {sorted(unknown)}, expected a subset of {ALL_FILES}")
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tok = build_bart_tokenizer(corpus, vocab_size)
    state = json.loads(tok.to_str())["model"]
    merges = [m.split(" ", 1) if isinstance(m, str) else m for m in state["merges"]]
    mask_entry = {"content": MASK, "single_word": False, "lstrip": True, "rstrip": False, "normalized": False}
    contents = {
        "tokenizer.json": tok.to_str(pretty=True),
        "vocab.json": json.dumps(state["vocab"], ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
        "special_tokens_map.json": json.dumps(
            {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "sep_token": EOS,
             "pad_token": PAD, "cls_token": BOS, "mask_token": mask_entry}, indent=2),
        "tokenizer_config.json": json.dumps(
            {"tokenizer_class": "BartTokenizer", "add_prefix_space": False, "errors": "replace", "trim_offsets": True,
             **({"model_max_length": model_max_length} if model_max_length is not None else {})}, indent=2),
    }
    for name in files:
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(contents[name])
    return directory
