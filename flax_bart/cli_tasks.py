"""`flax-bart qa` and `flax-bart generate`: the end-to-end tasks on a checkpoint with a tokenizer."""

from __future__ import annotations

import argparse
import json
import os

from flax_bart import compile_cache
from flax_bart.validation import InputError


def _load_tokenizer(checkpoint: str, args):
    from flax_bart.tokenizer import BartTokenizer

    return BartTokenizer.from_pretrained(checkpoint, cache_dir=args.cache_dir, revision=args.revision,
                                         local_files_only=args.local_files_only or None)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory or hub id (fetched from the hub, or taken from the local hub cache "
                                       "when HF_HUB_OFFLINE=1 or the hub cannot be reached)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--revision", default=None)
    p.add_argument("--local-files-only", action="store_true")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="compute dtype")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    compile_cache.add_arguments(p)


def _nonempty(name: str, value: str) -> str:
    if value is None or not value.strip():
        raise InputError(f"{name} is empty")
    return value


def qa_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="flax-bart qa", description="Extractive question answering.")
    _common(p)
    p.add_argument("--question", required=True)
    p.add_argument("--context", required=True, help="the context text, or @FILE to read it from a file")
    p.add_argument("--max-answer-len", type=int, default=15)
    p.add_argument("--max-length", type=int, default=384, help="tokens per window")
    p.add_argument("--stride", type=int, default=128, help="overlap between windows, in tokens")
    p.add_argument("--top-k", type=int, default=1)
    args = p.parse_args(argv)
    compile_cache.setup(args.compile_cache, args.no_compile_cache)
    import jax.numpy as jnp

    from flax_bart.models import FlaxBartForQuestionAnswering
    from flax_bart.qa import answer_question

    context = args.context
    if context.startswith("@"):
        with open(context[1:], encoding="utf-8") as f:
            context = f.read()
    _nonempty("--question", args.question)
    _nonempty("--context", context)
    tokenizer = _load_tokenizer(args.checkpoint, args)
    model = FlaxBartForQuestionAnswering.from_pretrained(
        args.checkpoint, dtype=getattr(jnp, args.dtype), cache_dir=args.cache_dir, revision=args.revision,
        local_files_only=args.local_files_only,
    )
    max_length = min(args.max_length, model.config.max_position_embeddings)
    result = answer_question(model, tokenizer, args.question, context, max_answer_len=args.max_answer_len,
                             max_length=max_length, stride=args.stride, top_k=args.top_k)
    results = result if isinstance(result, list) else [result]
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        for r in results:
            print(f"{r['answer']}\t(score {r['score']:.4f}, chars {r['start']}-{r['end']})")
    return 0


GEN_FLAGS = {
    # flag: (type, generate kwarg)
    "--max-new-tokens": (int, "max_new_tokens"),
    "--max-length": (int, "max_length"),
    "--min-length": (int, "min_length"),
    "--min-new-tokens": (int, "min_new_tokens"),
    "--num-beams": (int, "num_beams"),
    "--length-penalty": (float, "length_penalty"),
    "--no-repeat-ngram-size": (int, "no_repeat_ngram_size"),
    "--repetition-penalty": (float, "repetition_penalty"),
    "--num-return-sequences": (int, "num_return_sequences"),
    "--temperature": (float, "temperature"),
    "--top-k": (int, "top_k"),
    "--top-p": (float, "top_p"),
}


def _architecture(checkpoint_dir: str) -> str:
    path = os.path.join(checkpoint_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            arch = json.load(f).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return "lm"
    return "causal" if any("CausalLM" in a for a in arch) else "lm"


def generate_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="flax-bart generate", description="Generate text (summaries, ...).")
    _common(p)
    p.add_argument("--text", required=True, action="append",
                   help="input text (repeat for a batch), or @FILE to read one text from a file")
    for flag, (typ, _) in GEN_FLAGS.items():
        p.add_argument(flag, type=typ, default=None)
    p.add_argument("--early-stopping", choices=["true", "false", "never"], default=None)
    p.add_argument("--do-sample", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="PRNG seed for sampling")
    p.add_argument("--max-source-length", type=int, default=None, help="truncate inputs to this many tokens")
    args = p.parse_args(argv)
    compile_cache.setup(args.compile_cache, args.no_compile_cache)
    import jax
    import jax.numpy as jnp

    from flax_bart.hub import MODEL, resolve_checkpoint_dir
    from flax_bart.models import FlaxBartForCausalLM, FlaxBartForConditionalGeneration

    texts = []
    for t in args.text:
        if t.startswith("@"):
            with open(t[1:], encoding="utf-8") as f:
                t = f.read()
        texts.append(_nonempty("--text", t))
    directory = resolve_checkpoint_dir(args.checkpoint, cache_dir=args.cache_dir, revision=args.revision,
                                       local_files_only=args.local_files_only or None, files=MODEL)
    cls = FlaxBartForCausalLM if _architecture(directory) == "causal" else FlaxBartForConditionalGeneration
    tokenizer = _load_tokenizer(args.checkpoint, args)
    model = cls.from_pretrained(directory, dtype=getattr(jnp, args.dtype))
    max_src = args.max_source_length or model.config.max_position_embeddings
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_src, return_tensors="np")
    kwargs = {kw: getattr(args, flag[2:].replace("-", "_")) for flag, (_, kw) in GEN_FLAGS.items()}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if args.early_stopping is not None:
        kwargs["early_stopping"] = {"true": True, "false": False}.get(args.early_stopping, "never")
    if args.do_sample:
        kwargs["do_sample"] = True
        kwargs["prng_key"] = jax.random.PRNGKey(args.seed)
    out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs)
    decoded = tokenizer.batch_decode(jax.device_get(out.sequences).tolist(), skip_special_tokens=True)
    if args.json:
        print(json.dumps({"texts": decoded}, ensure_ascii=False))
    else:
        for d in decoded:
            print(d)
    return 0
