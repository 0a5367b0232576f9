"""The parity run report: data model, ``report.json`` I/O and the Markdown summary.

A :class:`RunReport` holds one :class:`Column` per dtype x Flax device x
PyTorch device; each column lists its tensor results in forward order. The
first failing result of a column is its ``first_failure``. Writers are atomic
(temporary file in the same folder, then rename): a crash never leaves a
half-written report that looks whole. HTML and JUnit rendering live in
``parity.report_html`` and ``parity.report_junit``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from parity.metrics import TensorMetrics
from parity.schema import (
    REPORT_KIND, SCHEMA_VERSION, ReportError, ReportSchemaError, decode_number,
    encode_floats, validate_report,
)
from parity.tolerance import DEFAULT_POLICY, METRIC_WORDS, Policy, Verdict, judge, normalize_dtype

__all__ = [
    "Column", "Environment", "FirstFailure", "ReportError", "ReportSchemaError", "RunReport",
    "TensorResult", "checkpoint_hash", "config_hash", "describe_location", "format_value", "load_report",
    "render_markdown", "validate_report", "write_html", "write_json", "write_junit",
    "write_markdown", "write_reports",
]

GROUPS = ("encoder", "decoder", "heads", "cached_decoding", "generate")
PADDING_NOTE = (
    "Padded positions are excluded from every metric: outputs there carry no meaning "
    "(PyTorch's own eager and sdpa attention disagree on fully padded rows)."
)
FILE_NAMES = {"json": "report.json", "md": "report.md", "html": "report.html", "junit": "junit.xml"}


@dataclass(frozen=True)
class Environment:
    python: str
    platform: str
    jax: str | None = None
    flax: str | None = None
    torch: str | None = None
    numpy: str | None = None
    devices: tuple[str, ...] = ()
    matmul_precision: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def collect(cls, *, devices: Iterable[Any] | None = None, matmul_precision: str | None = None,
                extra: Mapping[str, Any] | None = None) -> "Environment":
        """Versions from package metadata (nothing is imported); devices as given.

        When ``devices`` or ``matmul_precision`` is None and JAX is already
        imported, they are read from it; JAX is never imported here.
        """
        jax = sys.modules.get("jax")
        if devices is None:
            devices = jax.devices() if jax is not None else ()
        if matmul_precision is None and jax is not None:
            value = getattr(jax.config, "jax_default_matmul_precision", None)
            matmul_precision = "default" if value is None else str(value)
        return cls(
            python=platform.python_version(), platform=platform.platform(),
            jax=_version("jax"), flax=_version("flax"), torch=_version("torch"), numpy=_version("numpy"),
            devices=tuple(str(d) for d in devices), matmul_precision=matmul_precision,
            extra=dict(extra or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        out = {"python": self.python, "jax": self.jax, "flax": self.flax, "torch": self.torch,
               "numpy": self.numpy, "platform": self.platform, "devices": list(self.devices),
               "matmul_precision": self.matmul_precision}
        clash = set(self.extra) & set(out)
        if clash:
            raise ValueError(f"Environment.extra: keys {sorted(clash)} clash with standard fields")
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Environment":
        known = {"python", "jax", "flax", "torch", "numpy", "platform", "devices", "matmul_precision"}
        return cls(python=data["python"], platform=data["platform"], jax=data["jax"], flax=data["flax"],
                   torch=data["torch"], numpy=data["numpy"], devices=tuple(data["devices"]),
                   matmul_precision=data["matmul_precision"],
                   extra={k: v for k, v in data.items() if k not in known})


@dataclass(frozen=True)
class TensorResult:
    name: str
    group: str
    layer: int | None
    metrics: TensorMetrics
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "layer": self.layer,
                "metrics": self.metrics.to_dict(), "verdict": self.verdict.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TensorResult":
        metrics = {k: v if k in ("name", "kind") else decode_number(v) for k, v in data["metrics"].items()}
        verdict = {k: v if k in ("metric", "rule") else decode_number(v) for k, v in data["verdict"].items()}
        return cls(name=data["name"], group=data["group"], layer=data["layer"],
                   metrics=TensorMetrics.from_dict(metrics), verdict=Verdict.from_dict(verdict))


@dataclass(frozen=True)
class FirstFailure:
    column: str
    name: str
    group: str
    layer: int | None
    metric: str
    value: float
    tolerance: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def sentence(self, column_title: str, failed: int, total: int) -> str:
        words = METRIC_WORDS.get(self.metric, self.metric)
        return (
            f"**{column_title}**: the first tensor out of tolerance in forward order is at "
            f"{describe_location(self.group, self.layer)} (`{self.name}`): {words} is "
            f"{format_value(self.value)}, tolerance {format_value(self.tolerance)}; {failed} of {total} tensors fail."
        )


@dataclass
class Column:
    """One dtype x Flax device x PyTorch device combination and its results in forward order."""

    dtype: str
    flax_device: str
    torch_device: str
    results: list[TensorResult] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.dtype}/{self.flax_device}/{self.torch_device}"

    @property
    def title(self) -> str:
        return f"{self.dtype}, Flax {self.flax_device} vs PyTorch {self.torch_device}"

    @property
    def failures(self) -> list[TensorResult]:
        return [r for r in self.results if not r.verdict.passed]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def first_failure(self) -> FirstFailure | None:
        failures = self.failures
        if not failures:
            return None
        r = failures[0]
        return FirstFailure(self.key, r.name, r.group, r.layer, r.verdict.metric,
                            r.verdict.value, r.verdict.tolerance)

    def groups(self) -> list[str]:
        """Output groups in order of first appearance."""
        return list(dict.fromkeys(r.group for r in self.results))

    def to_dict(self) -> dict[str, Any]:
        first = self.first_failure
        return {"key": self.key, "dtype": self.dtype, "flax_device": self.flax_device,
                "torch_device": self.torch_device, "passed": self.passed,
                "counts": {"total": len(self.results), "failed": len(self.failures)},
                "first_failure": None if first is None else first.to_dict(),
                "results": [r.to_dict() for r in self.results]}


@dataclass
class RunReport:
    run_name: str
    environment: Environment
    policy: Policy = DEFAULT_POLICY
    config_hash: str | None = None
    checkpoint_hash: str | None = None
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    notes: list[str] = field(default_factory=lambda: [PADDING_NOTE])
    columns: list[Column] = field(default_factory=list)
    machine: Mapping[str, Any] | None = None  # parity.machine.collect(): what the numbers depend on
    baseline: Mapping[str, Any] | None = None  # RegressionResult.to_dict() + "path", once compared
    error: str | None = None  # bad input found while running (the outcome is then ERROR)
    timings: Mapping[str, Any] | None = None  # where the time went (parity.timing)

    @property
    def status(self) -> str:
        """PASS / FAIL / REGRESSION / ERROR: the one verdict every report and the exit code state."""
        from parity.outcome import status
        return status(self)

    @property
    def headline(self) -> str:
        from parity.outcome import headline
        return headline(self)

    def column(self, dtype: Any, flax_device: str = "cpu", torch_device: str = "cpu") -> Column:
        """The column for this combination, created (in call order) on first use."""
        dtype = normalize_dtype(dtype)
        for col in self.columns:
            if (col.dtype, col.flax_device, col.torch_device) == (dtype, flax_device, torch_device):
                return col
        col = Column(dtype, flax_device, torch_device)
        self.columns.append(col)
        return col

    def add(self, metrics: TensorMetrics, *, group: str, layer: int | None = None, dtype: Any = "float32",
            flax_device: str = "cpu", torch_device: str = "cpu", verdict: Verdict | None = None) -> TensorResult:
        """Append one tensor (call in forward order); judged with ``self.policy`` unless given."""
        if not group:
            raise ValueError(f"{metrics.name}: group must be a non-empty string (e.g. one of {GROUPS})")
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 0):
            raise ValueError(f"{metrics.name}: layer must be a non-negative int or None, got {layer!r}")
        col = self.column(dtype, flax_device, torch_device)
        if any(r.name == metrics.name for r in col.results):
            raise ValueError(f"{metrics.name}: already recorded in column {col.key}")
        if verdict is None:
            verdict = judge(metrics, col.dtype, self.policy)
        result = TensorResult(metrics.name, group, layer, metrics, verdict)
        col.results.append(result)
        return result

    @property
    def passed(self) -> bool:
        return all(col.passed for col in self.columns)

    def first_failures(self) -> dict[str, FirstFailure]:
        return {col.key: col.first_failure for col in self.columns if not col.passed}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (non-finite floats encoded as strings), valid under the schema."""
        return encode_floats({
            "schema_version": SCHEMA_VERSION, "kind": REPORT_KIND, "run_name": self.run_name,
            "created": self.created, "passed": self.passed,
            "environment": self.environment.to_dict(), "config_hash": self.config_hash,
            "checkpoint_hash": self.checkpoint_hash, "policy": self.policy.to_dict(),
            "notes": list(self.notes), "columns": [c.to_dict() for c in self.columns],
            "machine": None if self.machine is None else dict(self.machine),
            "baseline": None if self.baseline is None else dict(self.baseline), "error": self.error,
            "timings": None if self.timings is None else dict(self.timings),
            "outcome": {"status": self.status, "headline": self.headline, "exit_code": _exit_code(self.status)},
        })

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunReport":
        """Validate ``data`` against the schema, then build the report."""
        validate_report(data)
        policy_data = data["policy"]
        try:
            policy = Policy.from_dict({
                "rtol": decode_number(policy_data["rtol"]), "k": decode_number(policy_data["k"]),
                "floor_ulps": {d: decode_number(u) for d, u in policy_data["floor_ulps"].items()}})
        except ValueError as exc:
            raise ReportSchemaError("report.policy", str(exc)) from None
        columns = [
            Column(c["dtype"], c["flax_device"], c["torch_device"],
                   [TensorResult.from_dict(r) for r in c["results"]])
            for c in data["columns"]
        ]
        return cls(
            run_name=data["run_name"], environment=Environment.from_dict(data["environment"]),
            policy=policy,
            config_hash=data["config_hash"], checkpoint_hash=data["checkpoint_hash"],
            created=data["created"], notes=list(data["notes"]), columns=columns,
            machine=data.get("machine"), baseline=data.get("baseline"), error=data.get("error"),
            timings=data.get("timings"),
        )


def baseline_lines(report: RunReport, *, bullet: str = "", limit: int = 10) -> list[str]:
    """The baseline comparison in a few lines (nothing when no baseline was compared)."""
    b = report.baseline
    if b is None:
        return []
    verdict = "no regression" if b["passed"] else "REGRESSION"
    lines = [f"{bullet}Baseline {md_code(str(b.get('path', '?')))}: {verdict} (factor {format_value(b['factor'])}, floor "
             f"{format_value(b['floor'])} of a tolerance, {b['compared']} tensors compared)."]
    if b.get("machine_line"):
        lines.append(f"{bullet}{b['machine_line'][0].upper()}{b['machine_line'][1:]}.")
    changed = [name for name, key in (("weights", "checkpoint_changed"), ("config", "config_changed")) if b.get(key)]
    if changed:
        lines.append(f"{bullet}The baseline was recorded on other {' and '.join(changed)} (its hash differs).")
    if b.get("policy_line"):
        lines.append(f"{bullet}{b['policy_line'][0].upper()}{b['policy_line'][1:]}.")
    if b.get("rescored"):
        lines.append(f"{bullet}{len(b['rescored'])} tensors were judged by another rule or policy in the baseline "
                     "(e.g. the float32 gold fallback): their baseline values are measured against this run's "
                     "tolerances.")
    if b.get("rule_changed"):
        lines.append(f"{bullet}{len(b['rule_changed'])} tensors were judged by another rule in the baseline, whose "
                     "metrics lack this run's (an older flax-bart's): checked for newly failing only.")
    shown = 0
    for column, name in b["newly_failing"][:limit]:
        lines.append(f"{bullet}newly failing: {column} `{name}`")
        shown += 1
    for c in sorted(b["regressions"], key=lambda c: -c["current_fraction"])[:limit]:
        lines.append(f"{bullet}worse: {c['column']} `{c['name']}`: {format_value(c['baseline_fraction'])} -> "
                     f"{format_value(c['current_fraction'])} of its tolerance")
        shown += 1
    for c in b.get("column_regressions", ()):
        lines.append(f"{bullet}column worse as a whole: {c['column']}: geometric mean share ratio "
                     f"{format_value(c['geomean'])} over {c['tensors']} tensors")
    hidden = len(b["newly_failing"]) + len(b["regressions"]) - shown
    if hidden > 0:
        lines.append(f"{bullet}... and {hidden} more (report.json lists all)")
    for key, words in (("missing", "in the baseline, not checked by this run"),
                       ("new", "checked by this run, not in the baseline")):
        items = b.get(key) or []
        if items:
            lines.append(f"{bullet}{len(items)} tensors {words} ({_by_column(items)}), e.g. `{items[0][1]}`.")
    return lines


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """`text` (a run name, a path) with its control characters, newlines included, written as \\xNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def md_code(text: str) -> str:
    """`text` (a run name, a path) as one Markdown code span: `one_line`, fenced by more backticks than the
    longest run inside it."""
    text = one_line(text)
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _by_column(items) -> str:
    counts: dict[str, int] = {}
    for column, _ in items:
        counts[column] = counts.get(column, 0) + 1
    return ", ".join(f"{n} in {c}" for c, n in counts.items())


def _exit_code(status: str) -> int:
    from parity.outcome import EXIT_CODES
    return EXIT_CODES[status]


def describe_location(group: str, layer: int | None) -> str:
    """'decoder layer 2', 'cached decoding', ... for sentences."""
    words = group.replace("_", " ")
    return words if layer is None else f"{words} layer {layer}"


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the config as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def checkpoint_hash(paths: Iterable[os.PathLike | str]) -> str:
    """sha256 over the files' names and bytes, in sorted name order (streamed)."""
    digest = hashlib.sha256()
    files = sorted(Path(p) for p in paths)
    if not files:
        raise ValueError("checkpoint_hash: no files given")
    for path in files:
        if not path.is_file():
            raise ReportError(f"checkpoint_hash: {path} is not a file")
        digest.update(path.name.encode("utf-8") + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def not_a_report_file(path: os.PathLike | str) -> str | None:
    """What `path` is when it cannot be a report.json, in words ("no such file", "a directory", ...); None
    for a regular file (or a link to one). Checked before reading: a FIFO would block."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except NotADirectoryError:
        return "no such file (a part of the path is not a directory)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))
    what = next((words for test, words in kinds if test(mode)), "not a regular file")
    return f"{what}, not a report.json file"


def load_report(path: os.PathLike | str) -> RunReport:
    """Read and validate a ``report.json``; every problem is a :class:`ReportError` naming the file."""
    path = Path(path)
    problem = not_a_report_file(path)
    if problem is not None:
        raise ReportError(f"{path}: {problem}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot read ({exc})") from None
    try:
        data = json.loads(text, parse_constant=_bare_constant)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # a bare NaN, an integer of thousands of digits, deep nesting
        raise ReportError(f"{path}: not a report: {type(exc).__name__}: {exc}"[:400]) from None
    try:
        return RunReport.from_dict(data)
    except ReportSchemaError as exc:
        raise ReportSchemaError(exc.field, f"{exc.message} (in {path})") from None
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
        raise ReportError(f"{path}: not a valid report: {type(exc).__name__}: {exc}"[:400]) from None


def _bare_constant(name: str):
    raise ValueError(f"bare {name} is not JSON (reports write it as the string \"{name}\")")


def render_markdown(report: RunReport) -> str:
    """A compact summary for a pull-request comment."""
    out = [f"## {report.headline.split(':', 1)[0]} · parity report {md_code(report.run_name)}", "",
           f"**{report.headline}**", ""]
    out += baseline_lines(report, bullet="- ")
    out += ["",
           "| dtype | Flax device | PyTorch device | tensors | failed | closest to tolerance "
           "| max err ratio flax/torch | result |",
           "|---|---|---|---:|---:|---|---:|---|"]
    for col in report.columns:
        worst = max(col.results, key=lambda r: r.verdict.headroom, default=None)
        worst_text = "-" if worst is None else f"`{worst.name}` at {format_value(worst.verdict.headroom)}x tol"
        ratios = [r.metrics.gold_ratio for r in col.results if r.metrics.gold_ratio is not None]
        ratio_text = format_value(max(ratios, key=lambda v: (v != v, v))) if ratios else "-"
        out.append(f"| {col.dtype} | {col.flax_device} | {col.torch_device} | {len(col.results)} | "
                   f"{len(col.failures)} | {worst_text} | {ratio_text} | {'pass' if col.passed else '**FAIL**'} |")
    groups = list(dict.fromkeys(g for col in report.columns for g in col.groups()))
    if groups:
        out += ["", "| group | " + " | ".join(c.key for c in report.columns) + " |",
                "|---|" + "---|" * len(report.columns)]
        for group in groups:
            cells = []
            for col in report.columns:
                rows = [r for r in col.results if r.group == group]
                ok = sum(r.verdict.passed for r in rows)
                cells.append("-" if not rows else f"{ok}/{len(rows)}" + ("" if ok == len(rows) else " **FAIL**"))
            out.append(f"| {group} | " + " | ".join(cells) + " |")
    for col in report.columns:
        if not col.passed:
            out += ["", col.first_failure.sentence(col.title, len(col.failures), len(col.results))]
    out += [""] + [f"_{note}_" for note in report.notes]
    out += ["", "Tolerances: " + "; ".join(report.policy.describe()) + "."]
    from parity.machine import describe as describe_machine

    out += ["", f"Machine: {describe_machine(report.machine)}."]
    if report.timings:
        from parity.timing import summary_line

        out += ["", f"Time: {summary_line(report.timings)} (per head and dtype: `timings` in report.json)."]
    env = report.environment
    parts = [f"python {env.python}"]
    parts += [f"{name} {getattr(env, name)}" for name in ("jax", "flax", "torch", "numpy") if getattr(env, name)]
    parts += [f"matmul precision {env.matmul_precision or 'unset'}", f"devices {', '.join(env.devices) or 'unknown'}"]
    out += ["", "Environment: " + " · ".join(parts) + ".",
            f"Config `{_short(report.config_hash)}` · checkpoint `{_short(report.checkpoint_hash)}`."]
    return "\n".join(out) + "\n"


def write_json(report: RunReport, path: os.PathLike | str) -> Path:
    data = report.to_dict()
    validate_report(data)
    # not ensure_ascii: a path's undecodable bytes would stay lone-surrogate escapes strict parsers refuse
    return _atomic_write(path, json.dumps(data, indent=2, allow_nan=False, ensure_ascii=False) + "\n")


def write_markdown(report: RunReport, path: os.PathLike | str) -> Path:
    return _atomic_write(path, render_markdown(report))


def write_html(report: RunReport, path: os.PathLike | str) -> Path:
    from parity.report_html import render_html
    return _atomic_write(path, render_html(report))


def write_junit(report: RunReport, path: os.PathLike | str) -> Path:
    from parity.report_junit import render_junit
    return _atomic_write(path, render_junit(report))


_WRITERS = {"json": write_json, "md": write_markdown, "html": write_html, "junit": write_junit}


def write_reports(report: RunReport, out_dir: os.PathLike | str,
                  formats: Iterable[str] = ("json", "md", "html", "junit")) -> dict[str, Path]:
    """Write the requested formats into ``out_dir`` (created); returns format -> path."""
    formats = list(formats)
    unknown = [f for f in formats if f not in _WRITERS]
    if unknown:
        raise ValueError(f"write_reports: unknown format(s) {unknown}; expected some of {list(_WRITERS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {fmt: _WRITERS[fmt](report, out / FILE_NAMES[fmt]) for fmt in formats}


def _atomic_write(path: os.PathLike | str, text: str) -> Path:
    from flax_bart.io_utils import atomic_write_text

    atomic_write_text(path, utf8_text(text))
    return Path(path)


_NOT_ESCAPE = re.compile("[\ud800-\udc7f\udd00-\udfff]")   # surrogates that are no undecoded byte


def utf8_text(text: str) -> str:
    """`text` as valid UTF-8 can hold it: a path's bytes that did not decode (Python keeps them as lone
    surrogates, U+DC80-U+DCFF) are decoded again, and what still is no character becomes U+FFFD."""
    text = _NOT_ESCAPE.sub("\ufffd", text)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _short(digest: str | None) -> str:
    if not digest:
        return "unknown"
    algo, _, hexdigest = digest.partition(":")
    return f"{algo}:{hexdigest[:12]}" if hexdigest else digest[:19]


def format_value(value: float) -> str:
    """Short human form: integers plainly, others with 3 significant digits, NaN/inf spelled."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    if float(value).is_integer() and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"
