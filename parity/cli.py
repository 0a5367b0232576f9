"""`flax-bart parity` (also `python -m parity`): the CI gate; and `flax-bart demo`.

Exit codes: 0 every tensor within tolerance (and no baseline regression), 1 a parity failure or a
baseline regression (the reports are still written), 2 bad input: one paragraph on stderr, no traceback
unless --debug. Weights holding NaN are bad input: the reports are written (NaN metrics, failing) and
the exit code is 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

from parity.tolerance import add_cli_arguments

EXIT_PASS, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


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
    """Run `fn(argv)`; bad input becomes one paragraph on stderr and exit code 2 (traceback with --debug)."""
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


def enable_compile_cache(directory) -> None:
    """Keep XLA executables on disk (JAX's persistent compilation cache), so that a later run of the same
    shapes skips compiling. Process-wide: call it from a command's entry point, before anything compiles."""
    import jax

    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.fspath(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flax-bart parity",
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
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows per generated input case (default 3, rounded up to a multiple of the mesh's dp x fsdp)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per generated row (default 12)")
    p.add_argument("--text", action="append", default=[], metavar="TEXT",
                   help="use this text as input (repeat for more rows); needs the checkpoint's tokenizer")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated inputs and drawn head weights")
    p.add_argument("--flax-device", type=_csv, default=("cpu",), help="cpu, gpu or tpu (comma-separated for several)")
    p.add_argument("--torch-device", type=_csv, default=("cpu",), help="cpu or cuda[:N] (comma-separated for several)")
    p.add_argument("--mesh", metavar="AXES", default=None,
                   help="run the Flax side sharded over a device mesh, e.g. dp=2,tp=4 (axes dp, fsdp, tp; default "
                        "partition rules); on CPU simulate devices with XLA_FLAGS=--xla_force_host_platform_device_"
                        "count=N")
    p.add_argument("--reference", choices=("builtin", "transformers"), default="builtin",
                   help="PyTorch reference: the built-in one (torch only) or transformers' BART")
    add_cli_arguments(p)
    p.add_argument("--baseline", metavar="PATH", help="earlier report.json: fail on a metric worse by more than "
                                                      "--baseline-factor, or newly out of tolerance")
    p.add_argument("--baseline-factor", type=float, default=2.0, help="allowed worsening factor (default 2)")
    p.add_argument("--baseline-noise", type=float, default=0.0, metavar="FRACTION",
                   help="ignore worsening on tensors still under FRACTION of their tolerance (default 0: strict; "
                        "e.g. 0.1 for a baseline recorded on another CPU type)")
    p.add_argument("--out", metavar="DIR", help="report directory (default reports/parity-<checkpoint name>)")
    p.add_argument("--compile-cache", metavar="DIR", help="keep compiled XLA programs in DIR for later runs "
                                                          "(JAX's persistent compilation cache)")
    p.add_argument("--quiet", action="store_true", help="print only the verdict line")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def options_from_args(args: argparse.Namespace, run_name: str):
    from parity.options import Options
    from parity.tolerance import Policy

    return Options(heads=args.heads, dtypes=args.dtypes, steps=args.steps, seed=args.seed,
                   batch_size=args.batch_size, seq_len=args.seq_len, cases=args.cases,
                   flax_devices=args.flax_device, torch_devices=args.torch_device, reference=args.reference,
                   texts=tuple(args.text), policy=Policy.from_namespace(args), run_name=run_name, mesh=args.mesh)


def run_gate(checkpoint, flax, opts, out_dir, *, baseline=None, baseline_factor=2.0, baseline_noise=0.0,
             quiet=False) -> int:
    """Run the harness, write the four reports, check the baseline, print; returns the exit code."""
    from parity.harness import print_progress, run_parity
    from parity.regression import check_baseline, format_diff
    from parity.report import write_reports
    from parity.summary import render_table

    if baseline is not None and not Path(baseline).is_file():
        from parity.checkpoint import ParityInputError

        raise ParityInputError(f"--baseline {baseline}: no such file")
    outcome = run_parity(checkpoint, flax, opts, log=None if quiet else print_progress)
    report = outcome.report
    regression = None
    if baseline is not None:
        regression = check_baseline(baseline, report, baseline_factor, baseline_noise)
        verdict = "no regression" if regression.passed else "REGRESSION"
        noise = f", ignoring changes under {baseline_noise:g} of a tolerance" if baseline_noise else ""
        report.notes.append(f"Baseline {baseline}: {verdict} (factor {baseline_factor:g}{noise}, {regression.compared} "
                            f"tensors compared, {len(regression.regressions)} worse, "
                            f"{len(regression.newly_failing)} newly failing).")
    try:
        with warnings.catch_warnings():  # a crowded per-layer plot is still a plot
            warnings.filterwarnings("ignore", message="Tight layout not applied", category=UserWarning)
            paths = write_reports(report, out_dir)
    except OSError as e:
        from parity.checkpoint import ParityInputError

        raise ParityInputError(f"--out {out_dir}: cannot write the reports ({e})") from None
    if not quiet:
        print(render_table(outcome))
        if regression is not None:
            print(format_diff(regression, baseline_label=str(baseline), current_label="this run"), end="")
    nan = outcome.nan_weights
    ok = report.passed and (regression is None or regression.passed)
    where = f"reports in {out_dir}: " + " ".join(p.name for p in paths.values())
    if nan:
        print(f"{'FAIL':4} NaN metrics; {where}")
        print("flax-bart parity: error: the checkpoint's weights hold NaN (" + "; ".join(nan[:5]) +
              (f"; and {len(nan) - 5} more" if len(nan) > 5 else "") + "): parity cannot be judged", file=sys.stderr)
        return EXIT_BAD_INPUT
    status = "PASS" if ok else "FAIL"
    reasons = []
    if not report.passed:
        reasons.append("parity failure: " + "; ".join(
            f"{k}: {f.name} ({f.metric} {f.value:.3g} > {f.tolerance:.3g})" for k, f in report.first_failures().items()))
    if regression is not None and not regression.passed:
        reasons.append(f"baseline regression ({len(regression.regressions)} worse, "
                       f"{len(regression.newly_failing)} newly failing)")
    print(f"{status} in {outcome.seconds:.0f} s; " + ("; ".join(reasons) + "; " if reasons else "") + where)
    return EXIT_PASS if ok else EXIT_FAIL


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.baseline_factor >= 1:
        from parity.checkpoint import ParityInputError

        raise ParityInputError(f"--baseline-factor {args.baseline_factor:g}: expected a number >= 1")
    if not 0 <= args.baseline_noise < 1:
        from parity.checkpoint import ParityInputError

        raise ParityInputError(f"--baseline-noise {args.baseline_noise:g}: expected a fraction in [0, 1)")
    out = args.out or os.path.join("reports", "parity-" + (Path(os.path.abspath(args.checkpoint)).name or "checkpoint"))
    opts = options_from_args(args, Path(os.path.abspath(out)).name)
    if args.compile_cache:
        enable_compile_cache(args.compile_cache)
    return run_gate(args.checkpoint, args.flax, opts, out, baseline=args.baseline,
                    baseline_factor=args.baseline_factor, baseline_noise=args.baseline_noise, quiet=args.quiet)


def main(argv: Sequence[str] | None = None) -> int:
    """`flax-bart parity ...`; returns the exit code."""
    return guarded(_main, sys.argv[1:] if argv is None else argv, "flax-bart parity")


def demo_main(argv: Sequence[str] | None = None) -> int:
    """`flax-bart demo ...`; returns the exit code."""
    from parity.demo import demo_cli

    return guarded(demo_cli, sys.argv[1:] if argv is None else argv, "flax-bart demo")
