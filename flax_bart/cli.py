"""`flax-bart` command: dispatches to convert, parity, demo, report, qa, generate, bench and finetune.

Exit codes: 0 success, 1 a check failed (parity, regression), 2 bad input (one paragraph, no
traceback unless --debug), 3 an unexpected internal error (a bug, never a verdict), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

USAGE = """usage: flax-bart COMMAND [ARGS...]

commands:
  demo       build a BART-base-shaped random checkpoint, convert it, run the parity matrix, write reports
  convert    convert a checkpoint between PyTorch and Flax formats
  parity     check a Flax conversion against the PyTorch reference (CI gate)
  report     report tools: `flax-bart report diff BASELINE.json CURRENT.json`
  qa         answer a question from a context with a QA checkpoint
  generate   generate text (e.g. a summary) with a seq2seq or causal checkpoint
  bench      run the benchmark suite (`--quick` for a smoke run)
  finetune   fine-tune a seq2seq model on a synthetic task (training smoke test; checkpoints to --out)

Run `flax-bart COMMAND --help` for a command's options. Add --debug for tracebacks.
"""

# Exceptions that mean "bad input": reported in one paragraph with exit code 2.
def _input_errors() -> tuple:
    from flax_bart.config import ConfigError
    from flax_bart.hub import CheckpointNotFoundError
    from flax_bart.validation import InputError

    # ValueError too: in these commands it means an argument or file the tools refused with a message.
    errors = [ConfigError, CheckpointNotFoundError, InputError, FileNotFoundError, NotADirectoryError,
              IsADirectoryError, PermissionError, ValueError]
    try:
        from convert.errors import ConversionError

        errors.append(ConversionError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def run_guarded(fn, argv: list[str]) -> int:
    """Run `fn(argv)`; bad input becomes a one-paragraph message and exit code 2, any other error one
    line and exit code 3 (a traceback with --debug): 1 is a verdict (`report diff`: a regression)."""
    debug = "--debug" in argv
    try:
        return int(fn(argv) or 0)
    except SystemExit as e:  # argparse: 2 for usage errors
        return e.code if isinstance(e.code, int) else 2
    except _input_errors() as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line, exit 3, the traceback with --debug
        if debug:
            raise
        print(f"internal error ({type(e).__name__}: {e}); rerun with --debug for a traceback", file=sys.stderr)
        return 3


def _qa(argv: list[str]) -> int:
    from flax_bart.cli_tasks import qa_main
    from flax_bart.host_memory import tune_host_allocator

    tune_host_allocator()  # an inference process: keep XLA:CPU's buffers (flax_bart.host_memory)
    return qa_main(argv)


def _generate(argv: list[str]) -> int:
    from flax_bart.cli_tasks import generate_main
    from flax_bart.host_memory import tune_host_allocator

    tune_host_allocator()
    return generate_main(argv)


def _convert(argv: list[str]) -> int:
    from convert.cli import main

    return main(argv)


def _parity(argv: list[str]) -> int:
    from parity.cli import main

    return main(argv)


def _demo(argv: list[str]) -> int:
    from parity.cli import demo_main

    return demo_main(argv)


def _report(argv: list[str]) -> int:
    if not argv or argv[0] != "diff":
        p = argparse.ArgumentParser(prog="flax-bart report")
        p.add_argument("action", choices=["diff"])
        p.parse_args(argv[:1] or ["--help"])
    from parity.regression import main_diff

    return main_diff(argv[1:])


def _finetune(argv: list[str]) -> int:
    from flax_bart.finetune import finetune_main

    return finetune_main(argv)


def _bench(argv: list[str]) -> int:
    from benchmarks.__main__ import main

    return main(argv)


COMMANDS = {
    "demo": _demo, "convert": _convert, "parity": _parity, "report": _report, "qa": _qa,
    "generate": _generate, "bench": _bench, "finetune": _finetune,
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from flax_bart import __version__

        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; expected one of {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    # Subcommands that own their own guard (convert, parity) return their exit codes themselves;
    # the guard here is harmless for them and catches errors of the others.
    return run_guarded(COMMANDS[command], rest)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
