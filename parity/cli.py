"""`flax-bart parity` (also `python -m parity`): the CI gate; and `flax-bart demo`.

Exit codes: 0 every tensor within tolerance (and no baseline regression), 1 a parity failure or a
baseline regression (the reports are still written), 2 bad input: one paragraph on stderr, no traceback
unless --debug. Weights holding NaN are bad input: the reports are written (NaN metrics, failing) and
the exit code is 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from flax_bart import compile_cache
from parity.tolerance import add_cli_arguments

EXIT_PASS, EXIT_FAIL, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


MAX_SEED = 2**64 - 1   # numpy takes any integer >= 0, torch.Generator.manual_seed one below 2**64


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**64), got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**64), got {text!r}")
    return value


def _bad_input_errors() -> tuple:
    from convert.errors import ConversionError
    from flax_bart.config import ConfigError
    from flax_bart.validation import InputError
    from parity.checkpoint import ParityInputError
    from parity.reference import ReferenceLoadError
    from parity.schema import ReportError

    return (ParityInputError, ConversionError, ConfigError, InputError, ReferenceLoadError, ReportError,
            FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def guarded(fn, argv: Sequence[str], prog: str) -> int:
    """Run `fn(argv)`; bad input becomes one paragraph on stderr and exit code 2, any other error one
    line and exit code 3 (a traceback with --debug)."""
    debug = "--debug" in argv
    try:
        return int(fn(list(argv)))
    except SystemExit as e:  # argparse: 0 for --help, 2 for usage errors
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    except _bad_input_errors() as e:
        if debug:
            raise
        message = " ".join(str(e).split()) if "\n" not in str(e) else str(e)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not a verdict: exit 3, distinct from FAIL (1) and bad input (2)
        if debug:
            raise
        print(f"{prog}: internal error ({type(e).__name__}: {e}); rerun with --debug for a traceback",
              file=sys.stderr)
        return EXIT_INTERNAL


# The commands' compile cache (flax_bart.compile_cache), under the names this module has always had.
enable_compile_cache = compile_cache.enable
default_compile_cache = compile_cache.default_dir
setup_compile_cache = compile_cache.setup


def build_parser() -> argparse.ArgumentParser:
    from parity.regression import CROSS_MACHINE_FLOOR, SAME_MACHINE_FLOOR

    p = argparse.ArgumentParser(
        prog="flax-bart parity", allow_abbrev=False,
        description="Check Flax BART weights against the PyTorch reference on the same inputs, per tensor, dtype "
                    "and device. Exit 0: within tolerance; 1: parity failure or baseline regression; 2: bad input.")
    p.add_argument("checkpoint", help="checkpoint directory (or weights file) with the PyTorch weights and "
                                      "config.json; Flax weights next to them are checked as they are, otherwise "
                                      "the PyTorch weights are converted on the fly")
    p.add_argument("--flax", metavar="FLAX_CHECKPOINT", help="Flax checkpoint to check (default: the one in CHECKPOINT, "
                                                             "if any)")
    p.add_argument("--heads", type=_csv, default=None,
                   help="comma-separated heads among base,lm,cls,qa,causal (default: the checkpoint's own)")
    p.add_argument("--dtypes", type=_csv, default=("float32",),
                   help="comma-separated compute dtypes among float32,bfloat16,float16 (default float32)")
    p.add_argument("--steps", type=int, default=4, help="teacher-forced cached decoding steps and greedy new "
                                                        "tokens (default 4; 0 skips decoding)")
    p.add_argument("--cases", type=_csv, default=None,
                   help="input cases to run (default: all of right_padding, left_padding, fully_padded_row / "
                        "fully_masked_row, length_1, max_length, qa_pairs, classification)")
    p.add_argument("--max-length-dtypes", type=_csv, default=("float32",), metavar="DTYPES",
                   help="dtypes that also run the max_length case (one row of max_position_embeddings tokens, the "
                        "costliest): comma-separated, or 'all' (default float32; --cases max_length runs it in every "
                        "dtype)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows per generated input case (default 3, rounded up to a multiple of the mesh's dp x fsdp)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per generated row (default 12)")
    p.add_argument("--text", action="append", default=[], metavar="TEXT",
                   help="use this text as input (repeat for more rows); needs the checkpoint's tokenizer")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the generated inputs and drawn head weights "
                                                          "(an integer in [0, 2**64))")
    p.add_argument("--flax-device", type=_csv, default=("cpu",), help="cpu, gpu or tpu (comma-separated for several)")
    p.add_argument("--torch-device", type=_csv, default=("cpu",), help="cpu or cuda[:N] (comma-separated for several)")
    p.add_argument("--mesh", metavar="AXES", default=None,
                   help="run the Flax side sharded over a device mesh, e.g. dp=2,tp=4 (axes dp, fsdp, tp; default "
                        "partition rules); on CPU simulate devices with XLA_FLAGS=--xla_force_host_platform_device_"
                        "count=N")
    p.add_argument("--reference", choices=("builtin", "transformers"), default="builtin",
                   help="PyTorch reference: the built-in one (torch only) or transformers' BART")
    p.add_argument("--attention", choices=("auto", "explicit", "xla", "cudnn"), default="auto",
                   help="the Flax model's attention kernel (flax_bart.attention_kernels): auto (default: cuDNN's "
                        "fused attention on a GPU for float16/bfloat16, the explicit einsum path elsewhere), "
                        "explicit, xla (jax.nn.dot_product_attention's XLA path), cudnn")
    p.add_argument("--precision", choices=("highest", "default"), default="highest",
                   help="the Flax model's matmul precision: highest (default; as the gate pins JAX's default "
                        "matmul precision; on CPU float32 contractions are then summed in blocks as PyTorch's GEMM "
                        "sums them, flax_bart.chunked_dot), or default (XLA's own float32 dot)")
    p.add_argument("--no-scan-layers", action="store_true",
                   help="compile the Flax layer stacks unrolled, as the models run by default (slower to compile); "
                        "by default the gate compiles each layer stack, decoding steps included, as one lax.scan")
    p.add_argument("--compile-mode", choices=("auto", "fast", "optimized"), default="auto",
                   help="XLA's backend optimisation of the Flax programs: auto (default: off for shape buckets under "
                        "200 GFLOP a forward pass, i.e. the ordinary inputs of models up to about BART-base size, "
                        "where compiling costs more than running; on above, e.g. BART-base's max_length case), "
                        "fast (off everywhere: flax_bart.FAST_COMPILE), optimized (XLA's default everywhere)")
    p.add_argument("--flax-jobs", type=int, default=None, metavar="N",
                   help="Flax runs (the dtypes of a head) traced, compiled and run side by side in N threads while "
                        "PyTorch runs (default: the CPU cores, at most 4, where compiling dominates: a test-sized "
                        "model, or an accelerator; otherwise 1; always 1 with --mesh)")
    p.add_argument("--grads", action="store_true",
                   help="also compare dLoss/dParam of every parameter (a loss per head on labels drawn from --seed; "
                        "PyTorch autograd on the built-in reference vs jax.grad) and every parameter after 3 AdamW "
                        "steps (float32); report rows of kind grad and param")
    p.add_argument("--grad-heads", type=_csv, default=None, metavar="HEADS",
                   help="--grads for these of --heads only (comma-separated; implies --grads)")
    add_cli_arguments(p)
    p.add_argument("--baseline", metavar="PATH", help="earlier report.json: fail on a metric worse by more than "
                                                      "--baseline-factor, or newly out of tolerance")
    p.add_argument("--baseline-factor", type=float, default=2.0,
                   help="allowed growth of a tensor's share of its tolerance (default 2)")
    p.add_argument("--baseline-floor", "--baseline-noise", dest="baseline_floor", type=float, default=None,
                   metavar="FRACTION",
                   help="a tensor's growth counts only once it uses this share of its tolerance (default: "
                        f"{SAME_MACHINE_FLOOR:g} when the baseline's machine fingerprint equals this machine's, "
                        f"{CROSS_MACHINE_FLOOR:g} = only crossing the tolerance otherwise)")
    p.add_argument("--out", metavar="DIR", help="report directory (default reports/parity-<checkpoint name>)")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--compile-cache", metavar="DIR", help="keep compiled XLA programs in DIR for later runs "
                                                              "(JAX's persistent compilation cache; default "
                                                              "$FLAX_BART_CACHE/jax-compile/<CPU ISA and jax key>, "
                                                              "FLAX_BART_CACHE defaulting to ~/.cache/flax-bart); "
                                                              "a DIR that is not a directory and cannot be made "
                                                              "one is bad input")
    cache.add_argument("--no-compile-cache", action="store_true", help="compile from scratch and keep nothing")
    p.add_argument("--quiet", action="store_true", help="print only the verdict line")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def options_from_args(args: argparse.Namespace, run_name: str):
    from parity.options import Options
    from parity.tolerance import Policy

    return Options(heads=args.heads, dtypes=args.dtypes, steps=args.steps, seed=args.seed,
                   batch_size=args.batch_size, seq_len=args.seq_len, cases=args.cases,
                   flax_devices=args.flax_device, torch_devices=args.torch_device, reference=args.reference,
                   texts=tuple(args.text), policy=Policy.from_namespace(args), run_name=run_name, mesh=args.mesh,
                   grads=args.grads or args.grad_heads is not None, grad_heads=args.grad_heads,
                   attention=args.attention, scan_layers=not args.no_scan_layers, compile_mode=args.compile_mode,
                   flax_jobs=args.flax_jobs, precision=args.precision,
                   max_length_dtypes=None if tuple(args.max_length_dtypes) == ("all",) else args.max_length_dtypes)


def run_gate(checkpoint, flax, opts, out_dir, *, baseline=None, baseline_factor=2.0, baseline_floor=None,
             quiet=False, state: dict | None = None) -> int:
    """Run the harness, write the four reports, check the baseline, print; returns the exit code.

    The exit code, the reports' first lines and the last line printed state one outcome
    (parity.outcome): PASS 0, FAIL 1, REGRESSION 1, ERROR 2."""
    from parity.harness import print_progress, run_parity
    from parity.outcome import EXIT_CODES
    from parity.regression import check_baseline, check_overlap, format_diff
    from parity.report import load_report, not_a_report_file, one_line, utf8_text, write_reports
    from parity.schema import ReportError
    from parity.summary import render_table

    base_report = None
    if baseline is not None:  # a bad baseline is bad input: say so before spending minutes on the run
        problem = not_a_report_file(baseline)
        if problem is not None:
            from parity.checkpoint import ParityInputError

            raise ParityInputError(f"--baseline {baseline}: {problem}")
        base_report = load_report(baseline)
    outcome = run_parity(checkpoint, flax, opts, log=None if quiet else print_progress)
    report = outcome.report
    regression = None
    nan = outcome.nan_weights
    if nan:
        report.error = ("the checkpoint's weights hold NaN (" + "; ".join(nan[:5]) +
                        (f"; and {len(nan) - 5} more" if len(nan) > 5 else "") + "): parity cannot be judged")
    elif base_report is not None:
        regression = check_baseline(base_report, report, baseline_factor, baseline_floor)
        report.baseline = {"path": str(baseline), **regression.to_dict()}
        try:   # a baseline sharing no tensor with the run proved nothing: bad input, not a PASS
            check_overlap(regression, baseline)
        except ReportError as e:
            report.error = str(e)
    try:
        paths = write_reports(report, out_dir)
        if state is not None:
            state["written"] = True   # a failure from here on leaves these reports as they are
    except OSError as e:
        from parity.checkpoint import ParityInputError

        raise ParityInputError(f"--out {out_dir}: cannot write the reports ({e})") from None
    if not quiet:   # paths are printed as the reports hold them (utf8_text): stdout may refuse their bytes
        print(utf8_text(render_table(outcome)))
        if regression is not None:
            print(utf8_text(format_diff(regression, baseline_label=str(baseline), current_label="this run")), end="")
    if report.error:
        print(f"flax-bart parity: error: {report.error}", file=sys.stderr)
    where = f"reports in {one_line(str(out_dir))}: " + " ".join(p.name for p in paths.values())
    print(utf8_text(f"{report.headline} ({outcome.seconds:.0f} s; {where})"))
    return EXIT_CODES[report.status]


def tune_allocator_for(flax_devices, checkpoint=None, test_sized: bool | None = None) -> None:
    """A gate whose Flax side runs on the CPU keeps XLA:CPU's buffers between calls
    (`flax_bart.host_memory`; both frameworks share the process's allocator), set before JAX starts;
    `FLAX_BART_TUNE_ALLOCATOR=0` leaves the C library's settings as they are. The report's environment
    says which (`host_allocator`).

    The one arena only for a model whose gate is not compile-bound: `test_sized` False, or, by default,
    `parity.options.compile_bound` of the sizes in the checkpoint's config.json. A test-sized model's
    temporaries are far below the 64 MiB that the one arena is for, and its lock slowed the side-by-side
    compiling and PyTorch runs (`gate_bench --matrix quick4x3 --allocators default,tuned`, 2-core Zen 4
    EPYC: cold 13.4-15.1 s against 15.5-15.9 s, PyTorch 4.6-5.1 s against 7.1-8.3 s), while the
    BART-base default gate ran 143 -> 116 s."""
    if os.environ.get("FLAX_BART_TUNE_ALLOCATOR", "1").strip() == "0":
        return
    if not flax_devices or any(str(d).split(":")[0].strip().lower() != "cpu" for d in flax_devices):
        return
    from flax_bart.config import read_json_file
    from flax_bart.host_memory import tune_host_allocator
    from parity.options import compile_bound, estimated_params

    one_arena = True if test_sized is None else not test_sized
    if test_sized is None and checkpoint is not None:
        path = Path(checkpoint)
        config = (path if path.is_dir() else path.parent) / "config.json"
        try:   # the guarded reader: a FIFO, a device or a huge file is refused, never read
            one_arena = not compile_bound(estimated_params(read_json_file(config, "config.json")))
        except Exception:   # noqa: BLE001 - any bad config is the gate's to report, with its name
            pass
    tune_host_allocator(one_arena=one_arena)


def _main(argv: list[str], notes: list[str] | None = None) -> int:
    """The gate; `notes` collects what is printed after the error paragraph (an --out left as it is)."""
    out = _explicit_out(argv)   # known before parsing: a usage error must not leave an earlier run's reports
    state = {"written": False, "keep_out": False}
    try:
        args = build_parser().parse_args(argv)
        out = args.out or os.path.join("reports",
                                       "parity-" + (Path(os.path.abspath(args.checkpoint)).name or "checkpoint"))
        return _gate(args, out, state)
    except BaseException as e:   # stopped before the reports were written: none of an earlier run may stay
        if out is not None and not state["written"] and not state["keep_out"]:
            _error_reports(e, out, notes)
        raise


def _error_reports(e: BaseException, out: str, notes: list[str] | None) -> None:
    """The early-stop reports (parity.report_error) in `out`, where it is empty or an earlier run's; a
    note says why an existing folder of other files was left as it is."""
    from parity.report_error import earlier_output_problem, replace_with_error

    if isinstance(e, SystemExit):   # argparse: usage errors (2); --help (0) changes nothing
        if e.code in (0, None):
            return
        code, message = EXIT_BAD_INPUT, "bad command-line arguments (the usage message says which)"
    else:
        code = (EXIT_BAD_INPUT if isinstance(e, _bad_input_errors())
                else 130 if isinstance(e, KeyboardInterrupt) else EXIT_INTERNAL)
        message = " ".join(str(e).split()) or type(e).__name__
    if str(out).strip() and os.path.isdir(out):
        problem = earlier_output_problem(out)
        if problem is not None:
            if notes is not None:
                notes.append(f"--out {out}: {problem}; no error report was written there and nothing in it "
                             "was removed")
            return
    replace_with_error(out, Path(os.path.abspath(out)).name, code, message)


def _check_out_apart(out: str, explicit: bool, checkpoint: str, flax: str | None) -> None:
    """The reports never go into a checkpoint: an --out (or the default report directory) equal to or
    inside the checkpoint's directory (or --flax's) is bad input, before anything is written."""
    from parity.checkpoint import ParityInputError

    target = os.path.realpath(out)
    for option, given in (("CHECKPOINT", checkpoint), ("--flax", flax)):
        if not given or not os.path.exists(given):
            continue   # a missing checkpoint is reported by the gate itself
        where = os.path.realpath(given)
        if not os.path.isdir(where):
            where = os.path.dirname(where)   # a weights file: its folder holds config.json
        if target == where:
            relation = "is"
        elif target.startswith(where.rstrip(os.sep) + os.sep):
            relation = "is inside"
        else:   # (an --out holding the checkpoint in a subfolder leaves it alone: the reports are top-level files)
            continue
        what = "--out" if explicit else "the default report directory"
        raise ParityInputError(
            f"{what} {out} {relation} the {option} directory {where}: the reports (report.json, report.md, "
            f"report.html, junit.xml; an early stop replaces or removes them) need a folder apart from the "
            f"checkpoint; name {'another' if explicit else 'one'} with --out")


def _explicit_out(argv: list[str]) -> str | None:
    """The --out argument as argparse will read it (the last one given; the parser takes no abbreviation),
    or None when absent, empty or unreadable."""
    found = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--out" and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith("--out="):
            found = arg[len("--out="):]
    return found if found and found.strip() else None


def _gate(args, out: str, state: dict) -> int:
    try:
        _check_out_apart(out, args.out is not None, args.checkpoint, args.flax)
    except Exception:
        state["keep_out"] = True   # the checkpoint's folder: no error report there either
        raise
    # the ranges parity.regression.compare_to_baseline takes, checked before the run
    if not (math.isfinite(args.baseline_factor) and args.baseline_factor >= 1):
        from parity.checkpoint import ParityInputError

        raise ParityInputError(f"--baseline-factor {args.baseline_factor:g}: expected a finite number >= 1")
    if args.baseline_floor is not None and not 0 <= args.baseline_floor <= 1:
        from parity.checkpoint import ParityInputError

        raise ParityInputError(f"--baseline-floor {args.baseline_floor:g}: expected a fraction in [0, 1]")
    opts = options_from_args(args, Path(os.path.abspath(out)).name)
    tune_allocator_for(opts.flax_devices, args.checkpoint)
    _setup_compile_cache(args.compile_cache, args.no_compile_cache)
    return run_gate(args.checkpoint, args.flax, opts, out, baseline=args.baseline,
                    baseline_factor=args.baseline_factor, baseline_floor=args.baseline_floor, quiet=args.quiet,
                    state=state)


def _setup_compile_cache(directory: str | None, disabled: bool) -> None:
    """`--compile-cache DIR` that is not a directory and cannot be made one is bad input, named: the run
    would compile everything again, each time, while the user believes it cached (a mistyped CI path). The
    default cache folder failing does not stop the gate: a warning, and the run compiles without one."""
    from parity.checkpoint import ParityInputError

    if directory is not None and not disabled:
        if not str(directory).strip():
            raise ParityInputError("--compile-cache: empty path; expected a directory (or --no-compile-cache)")
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise ParityInputError(f"--compile-cache {directory}: not a directory; expected a directory to keep "
                                   f"compiled XLA programs in (or --no-compile-cache)")
    try:
        setup_compile_cache(directory, disabled)
    except OSError as e:
        if directory is not None:
            raise ParityInputError(f"--compile-cache {directory}: cannot be used as the compile cache "
                                   f"({e.strerror or e}); expected a directory that can be created and "
                                   f"written (or --no-compile-cache)") from None
        print(f"flax-bart parity: warning: the default compile cache {default_compile_cache()} cannot be used "
              f"({e.strerror or e}); compiling without one (--compile-cache DIR or --no-compile-cache)",
              file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """`flax-bart parity ...`; returns the exit code."""
    notes: list[str] = []
    try:
        return guarded(lambda args: _main(args, notes), sys.argv[1:] if argv is None else argv, "flax-bart parity")
    finally:
        for note in notes:   # after the error paragraph (argparse's usage message comes first)
            print(f"flax-bart parity: note: {note}", file=sys.stderr)


def demo_main(argv: Sequence[str] | None = None) -> int:
    """`flax-bart demo ...`; returns the exit code."""
    from parity.demo import demo_cli

    return guarded(demo_cli, sys.argv[1:] if argv is None else argv, "flax-bart demo")
