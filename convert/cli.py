"""`flax-bart convert SRC DST --to flax|pytorch ...` (also `python -m convert`).

Exit codes: 0 converted; 2 bad input (checkpoint, config, arguments, or an output that cannot be
written) with a one-paragraph error; 3 an unexpected internal error (a bug; 3 in every flax-bart command,
never confused with a verdict); 130 interrupted. No traceback unless --debug.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import traceback
import warnings

from convert.errors import ConversionError
from convert.rules import HEADS

EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 2, 3, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # report through main() (exit code 2) instead of sys.exit
        self.print_usage(sys.stderr)
        raise _BadArgs(message)


class _BadArgs(Exception):
    pass


def build_parser(prog: str = "flax-bart convert") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Convert a BART checkpoint between PyTorch and Flax formats.")
    p.add_argument("src", metavar="SRC", help="checkpoint directory, weights/index file, or hub id (offline cache)")
    p.add_argument("dst", metavar="DST", help="output directory (created; must not exist unless --overwrite)")
    p.add_argument("--to", required=True, choices=["flax", "pytorch", "orbax"],
                   help="target: flax, pytorch, or orbax (an orbax-checkpoint directory for training stacks); "
                        "SRC may itself be an orbax directory written by --to orbax")
    p.add_argument("--format", choices=["msgpack", "safetensors", "bin"],
                   help="weights format (default: msgpack for flax, safetensors for pytorch)")
    p.add_argument("--head", choices=HEADS, help="model class of the output (default: that of SRC)")
    p.add_argument("--dtype", help="cast floating tensors: float32, float16 or bfloat16 (default: keep)")
    p.add_argument("--max-shard-size", help="split weights into shards of at most this size, e.g. 2GB, 500MiB")
    p.add_argument("--config", help="config.json to use (default: the one beside SRC)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--allow-unexpected", action="store_true", help="drop (and report) keys that are not BART tensors")
    p.add_argument("--allow-missing-head", action="store_true",
                   help="accept a source without the parameters only --head has (they are left out)")
    p.add_argument("--cache-dir", help="huggingface_hub cache for hub ids")
    p.add_argument("--revision", help="hub revision for hub ids")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary line")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None, prog: str = "flax-bart convert") -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        args = build_parser(prog).parse_args(argv)
    except _BadArgs as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SystemExit as e:  # --help
        return int(e.code or 0)
    from convert.api import SUMMARY_NAME, convert_checkpoint
    from convert.staging import interrupts_recorded

    try:
        with interrupts_recorded():
            if args.to == "orbax" or _is_orbax_dir(args.src):
                return _orbax(args, prog)
            summary = convert_checkpoint(
                args.src, args.dst, to=args.to, format=args.format, head=args.head, dtype=args.dtype,
                max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                allow_unexpected=args.allow_unexpected, allow_missing_head=args.allow_missing_head,
                config=args.config, quiet=args.quiet, cache_dir=args.cache_dir, revision=args.revision,
            )
    except (ConversionError, ValueError, OSError) as e:
        if debug:
            traceback.print_exc()
        kind = "cannot write the output" if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) else "error"
        print(f"{prog}: {kind}: {e}", file=sys.stderr)
        print("DST was left as it was; the source was not modified.", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        from convert.staging import PUBLISHED

        if PUBLISHED:   # Ctrl-C after the output was published: it is complete, say so
            print(f"{prog}: interrupted after {args.dst} was written in full.", file=sys.stderr)
        else:
            print(f"{prog}: interrupted; nothing was written to DST.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug: say so, briefly
        if debug:
            traceback.print_exc()
        print(f"{prog}: internal error ({type(e).__name__}: {e}); rerun with --debug for a traceback",
              file=sys.stderr)
        return EXIT_INTERNAL
    if not args.quiet:
        print(f"converted {args.src} -> {args.dst}: {summary.one_line()}")
        print(f"summary: {args.dst}/{SUMMARY_NAME}")
    return EXIT_OK


def _is_orbax_dir(src: str) -> bool:
    return os.path.isfile(os.path.join(src, "flax_bart_orbax.json"))


def _orbax(args, prog: str) -> int:
    """--to orbax, or an orbax SRC: through flax_bart.orbax_io (imports jax + orbax only here)."""
    import logging

    from flax_bart.orbax_io import OrbaxError, convert_from_orbax, convert_to_orbax

    # orbax logs a failed write (e.g. a full disk) with its thread's traceback through absl, and
    # tensorstore's callbacks print more from C++ once orbax's event loop is closed; the error itself
    # reaches this command, which says it in one paragraph (--debug keeps all of it)
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    if not args.debug:
        absl_logger.setLevel(logging.CRITICAL + 1)
    try:
        with _stderr_held_back(args.debug):
            try:
                return _orbax_run(args, convert_from_orbax, convert_to_orbax)
            except BaseException:
                if not args.debug:
                    _quiet_orbax_leftovers()
                raise
    except OrbaxError as e:
        raise ConversionError(str(e)) from None
    finally:
        absl_logger.setLevel(level)


class _UnretrievedFutures:
    """Drops asyncio's "... exception was never retrieved" records: after a failed orbax call, the futures
    of orbax's closed event loop hold the same error this command reports, and asyncio logs them when they
    are collected, which may be at interpreter exit (after the one-paragraph message)."""

    def filter(self, record) -> bool:
        return not record.getMessage().partition("\n")[0].endswith("exception was never retrieved")


def _quiet_orbax_leftovers() -> None:
    """Called while fd 2 is still held back: the asyncio filter is installed once (process-wide; it drops
    only unretrieved-future records), so is a warnings filter for never-awaited coroutines, and the
    collectable futures are collected now, inside the window."""
    import gc
    import logging

    asyncio_logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _UnretrievedFutures) for f in asyncio_logger.filters):
        asyncio_logger.addFilter(_UnretrievedFutures())
    # the write coroutines the failure left unstarted warn when collected, which may be after this command
    warnings.filterwarnings("ignore", message=r"coroutine '.*' was never awaited", category=RuntimeWarning)
    gc.collect()


@contextlib.contextmanager
def _stderr_held_back(keep: bool):
    """File descriptor 2 (where C++ libraries print) goes to a temporary file while the block runs: its
    text is written out when the block succeeds, and dropped when it fails (the failure is reported
    in one paragraph)."""
    if keep:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    ok = False
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                held.seek(0)
                for chunk in iter(lambda: held.read(1 << 16), b""):
                    os.write(2, chunk)


def _orbax_run(args, convert_from_orbax, convert_to_orbax) -> int:
    """The conversion itself (an orbax source, or --to orbax)."""
    if args.to == "orbax":
        if _is_orbax_dir(args.src):
            raise ConversionError(f"{args.src} is already an orbax directory")
        if args.allow_missing_head:   # an orbax tree holds every param of its head
            raise ConversionError("--allow-missing-head with --to orbax: an orbax checkpoint holds every "
                                  "parameter of its head; convert to flax first (where the head's missing "
                                  "weights may be left out), or pick a --head the checkpoint holds")
        info = convert_to_orbax(args.src, args.dst, head=args.head, config=args.config, dtype=args.dtype,
                                overwrite=args.overwrite, cache_dir=args.cache_dir, revision=args.revision,
                                allow_unexpected=args.allow_unexpected)
        done = f"{info.get('head', '')} params as orbax"
    else:
        summary = convert_from_orbax(args.src, args.dst, to=args.to, format=args.format, dtype=args.dtype,
                                     max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                                     quiet=args.quiet, head=args.head, config=args.config,
                                     allow_missing_head=args.allow_missing_head)
        done = summary.one_line()
    if not args.quiet:
        print(f"converted {args.src} -> {args.dst}: {done}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
