"""`flax-bart` dispatcher and the `qa` task end to end on a tiny checkpoint with a trained tokenizer."""

import json
import shutil

import numpy as np
import pytest

from flax_bart.cli import main
from tests.bart_helpers import torch_model
from tests.tokenizer_utils import write_bart_tokenizer

CONTEXT = "The quick brown fox jumps over the lazy dog near the river bank."


def _checkpoint_with_tokenizer(tmp_path_factory, head, seed):
    """A tiny transformers-written checkpoint of `head` beside a tokenizer trained in the test."""
    from flax_bart import BartTokenizer

    d = tmp_path_factory.mktemp(head)
    write_bart_tokenizer(d)
    vocab = len(BartTokenizer.from_pretrained(d))
    torch_model(head, seed=seed, vocab_size=vocab, max_position_embeddings=64).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def qa_ckpt(tmp_path_factory):
    return _checkpoint_with_tokenizer(tmp_path_factory, "qa", seed=1)


def test_qa_cli_answers_with_a_span_of_the_context(qa_ckpt, capsys):
    code = main(["qa", str(qa_ckpt), "--question", "Who jumps?", "--context", CONTEXT, "--json",
                 "--max-length", "48", "--stride", "8"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert CONTEXT[out["start"]:out["end"]] == out["answer"] and out["answer"]
    assert 0.0 < out["score"] <= 1.0
    # Same answer as the Python API on the same checkpoint.
    from flax_bart import BartTokenizer, FlaxBartForQuestionAnswering, answer_question

    model = FlaxBartForQuestionAnswering.from_pretrained(qa_ckpt)
    api = answer_question(model, BartTokenizer.from_pretrained(qa_ckpt), "Who jumps?", CONTEXT,
                          max_length=48, stride=8)
    assert (api["start"], api["end"], api["answer"]) == (out["start"], out["end"], out["answer"])
    np.testing.assert_allclose(api["score"], out["score"], rtol=1e-5)


def test_qa_cli_bad_inputs_exit_2_without_traceback(qa_ckpt, tmp_path, capsys):
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(qa_ckpt / f, no_tok)
    cases = [
        (["qa", str(tmp_path / "missing"), "--question", "q", "--context", "c"], "missing"),
        (["qa", str(no_tok), "--question", "q", "--context", CONTEXT], "tokenizer"),
        (["qa", str(qa_ckpt), "--question", "  ", "--context", CONTEXT], "--question is empty"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err


def test_dispatcher_usage_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    assert "commands:" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main(["qa", "--bogus-flag"]) == 2


@pytest.fixture(scope="module")
def lm_ckpt(tmp_path_factory):
    return _checkpoint_with_tokenizer(tmp_path_factory, "lm", seed=2)


def test_generate_cli_prints_the_decoded_generation(lm_ckpt, capsys):
    text = "The quick brown fox jumps over the lazy dog."
    code = main(["generate", str(lm_ckpt), "--text", text, "--max-new-tokens", "6", "--num-beams", "2", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)["texts"]
    from flax_bart import BartTokenizer, FlaxBartForConditionalGeneration

    tok = BartTokenizer.from_pretrained(lm_ckpt)
    model = FlaxBartForConditionalGeneration.from_pretrained(lm_ckpt)
    enc = tok([text], return_tensors="np")
    ids = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=6,
                         num_beams=2).sequences
    assert printed == tok.batch_decode(np.asarray(ids).tolist(), skip_special_tokens=True)


def test_generate_cli_bad_flags_exit_2(lm_ckpt, capsys):
    assert main(["generate", str(lm_ckpt), "--text", "hi", "--max-length", "500"]) == 2
    err = capsys.readouterr().err
    assert "max_length" in err and "Traceback" not in err
    assert main(["generate", str(lm_ckpt), "--text", ""]) == 2
    assert "--text is empty" in capsys.readouterr().err


def test_generate_cli_keeps_compiled_programs_in_the_default_cache(lm_ckpt, tmp_path):
    """A fresh process (no cache configured): `flax-bart generate` fills $FLAX_BART_CACHE/jax-compile/<key>;
    `--no-compile-cache` keeps nothing; the two cache flags together are a usage error (exit 2)."""
    import os
    import subprocess
    import sys

    from flax_bart.compile_cache import compile_key

    def run(root, *flags):
        env = dict(os.environ, FLAX_BART_CACHE=str(root), JAX_PLATFORMS="cpu")
        args = [sys.executable, "-m", "flax_bart.cli", "generate", str(lm_ckpt), "--text", "hello there",
                "--max-new-tokens", "2", *flags]
        return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)

    done = run(tmp_path / "on")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "on" / "jax-compile" / compile_key()
    assert folder.is_dir() and any(folder.iterdir())
    done = run(tmp_path / "off", "--no-compile-cache")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "off").exists()
    mine = tmp_path / "mine"
    done = run(tmp_path / "unused", "--compile-cache", str(mine), "--no-compile-cache")
    assert done.returncode == 2 and "not allowed with" in done.stderr and "Traceback" not in done.stderr


def test_unexpected_errors_are_one_line_and_exit_3(capsys):
    from flax_bart.cli import run_guarded

    def broken(argv):
        raise KeyError("a bug")

    assert run_guarded(broken, []) == 3
    err = capsys.readouterr().err
    assert "internal error (KeyError: 'a bug'); rerun with --debug" in err and "Traceback" not in err
    with pytest.raises(KeyError):
        run_guarded(broken, ["--debug"])
