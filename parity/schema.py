"""The versioned schema of ``report.json``, written as data, and its validator.

``REPORT_SCHEMA`` uses a small subset of JSON Schema (type, properties,
required, additionalProperties, items, enum, const, anyOf, minimum, minLength)
so that tools with a full JSON Schema validator can check reports too; this
module validates it without one. Non-finite floats are stored as the strings
"NaN", "Infinity" and "-Infinity" so that the file stays strict JSON.
"""

from __future__ import annotations

import math
from typing import Any

from parity.metrics import KINDS

SCHEMA_VERSION = 2
# Versions this flax-bart reads: v1 reports (no machine fingerprint, baseline or outcome) stay valid.
READABLE_VERSIONS = (1, 2)
REPORT_KIND = "flax-bart-parity-report"
NONFINITE_STRINGS = ("NaN", "Infinity", "-Infinity")
DTYPES = ("float64", "float32", "float16", "bfloat16")


class ReportError(ValueError):
    """A report file or dict that cannot be used (missing, not JSON, invalid)."""


class ReportSchemaError(ReportError):
    """A report that breaks the schema; ``field`` is the dotted path of the culprit."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


_NUMBER = {"anyOf": [{"type": "number"}, {"enum": list(NONFINITE_STRINGS)}]}
_NUMBER_OR_NULL = {"anyOf": [{"type": "number"}, {"enum": list(NONFINITE_STRINGS)}, {"type": "null"}]}
_COUNT = {"type": "integer", "minimum": 0}
_COUNT_OR_NULL = {"type": ["integer", "null"], "minimum": 0}
_NAME = {"type": "string", "minLength": 1}
_STR_OR_NULL = {"type": ["string", "null"]}

_FLOAT_METRICS = (
    "ref_rms", "max_abs_err", "max_rel_err", "mean_abs_err", "cosine",
    "argmax_agreement", "top5_overlap", "mean_kl", "gold_rms", "gold_err_ref_max",
    "gold_err_ref_mean", "gold_err_cand_max", "gold_err_cand_mean", "gold_ratio",
    "match_fraction",
)
# Metrics that parity.metrics computes as magnitudes (errors, RMS, a clamped KL, a ratio of maxima): never
# below 0 ("NaN" where nothing could be measured, "Infinity" where a ratio has a zero denominator).
NONNEGATIVE_METRICS = (
    "ref_rms", "max_abs_err", "max_rel_err", "mean_abs_err", "mean_kl", "gold_rms", "gold_err_ref_max",
    "gold_err_ref_mean", "gold_err_cand_max", "gold_err_cand_mean", "gold_ratio",
)
# Metrics that are shares of positions or elements: in [0, 1] (or "NaN").
FRACTION_METRICS = ("argmax_agreement", "top5_overlap", "match_fraction")
# The metrics a verdict is decided on (parity.tolerance, parity.weights, parity.judge, parity.adamw; every
# flax-bart so far wrote these only). A verdict's value is >= 0, "NaN" or "Infinity"; its tolerance is a
# finite number >= 0 (every bound the gate computes is).
VERDICT_METRICS = (
    "count", "nonfinite", "mismatches", "max_rel_err", "mean_rel_err", "max_abs_err", "gold_err_cand_max",
    "err_at_grad_scale",
)


def _obj(properties: dict[str, Any], *, optional: tuple[str, ...] = (), extra: Any = False) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": [k for k in properties if k not in optional],
        "additionalProperties": extra,
    }


METRICS_SCHEMA = _obj({
    "name": _NAME,
    "kind": {"enum": list(KINDS)},
    "shape": {"type": "array", "items": _COUNT},
    "count": _COUNT,
    "nonfinite_ref": _COUNT,
    "nonfinite_cand": _COUNT,
    "nonfinite_gold": _COUNT_OR_NULL,
    "positions": _COUNT_OR_NULL,
    "mismatches": _COUNT_OR_NULL,
    **{name: _NUMBER_OR_NULL for name in _FLOAT_METRICS},
})

VERDICT_SCHEMA = _obj({
    "passed": {"type": "boolean"},
    "metric": {"enum": list(VERDICT_METRICS)},
    "value": _NUMBER,
    "tolerance": _NUMBER,
    "rule": {"type": "string"},
})

RESULT_SCHEMA = _obj({
    "name": _NAME,
    "group": _NAME,
    "layer": _COUNT_OR_NULL,
    "metrics": METRICS_SCHEMA,
    "verdict": VERDICT_SCHEMA,
})

FIRST_FAILURE_SCHEMA = _obj({
    "column": _NAME,
    "name": _NAME,
    "group": _NAME,
    "layer": _COUNT_OR_NULL,
    "metric": {"enum": list(VERDICT_METRICS)},
    "value": _NUMBER,
    "tolerance": _NUMBER,
})

COLUMN_SCHEMA = _obj({
    "key": _NAME,
    "dtype": {"enum": list(DTYPES)},
    "flax_device": _NAME,
    "torch_device": _NAME,
    "passed": {"type": "boolean"},
    "counts": _obj({"total": _COUNT, "failed": _COUNT}),
    "first_failure": {"anyOf": [{"type": "null"}, FIRST_FAILURE_SCHEMA]},
    "results": {"type": "array", "items": RESULT_SCHEMA},
})

ENVIRONMENT_SCHEMA = _obj({
    "python": _NAME,
    "jax": _STR_OR_NULL,
    "flax": _STR_OR_NULL,
    "torch": _STR_OR_NULL,
    "numpy": _STR_OR_NULL,
    "platform": _NAME,
    "devices": {"type": "array", "items": {"type": "string"}},
    "matmul_precision": _STR_OR_NULL,
}, extra={"type": ["string", "number", "boolean", "null"]})

MACHINE_SCHEMA = {"type": "object", "properties": {
    "cpu_model": {"type": "string"}, "isa_flags": {"type": "array", "items": {"type": "string"}},
    "isa_limits": {"type": "object", "additionalProperties": {"type": "string"}},
    "gpus": {"type": "array", "items": {"type": "string"}}, "id": {"type": "string"},
}, "required": ["cpu_model", "isa_flags", "id"], "additionalProperties": True}

_CHANGE = {"type": "object", "required": ["column", "name", "baseline_fraction", "current_fraction"],
           "additionalProperties": True}
BASELINE_SCHEMA = {"type": "object", "properties": {
    "path": {"type": "string"}, "passed": {"type": "boolean"}, "factor": _NUMBER, "floor": _NUMBER,
    "mode": {"enum": ["same machine", "different machine", "unknown machine"]}, "compared": _COUNT,
    "machine_line": {"type": "string"}, "worst": _STR_OR_NULL,
    "regressions": {"type": "array", "items": _CHANGE}, "improvements": {"type": "array", "items": _CHANGE},
    "newly_failing": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
}, "required": ["passed", "factor", "floor", "mode", "compared", "regressions", "newly_failing"],
    "additionalProperties": True}

OUTCOME_SCHEMA = _obj({
    "status": {"enum": ["PASS", "FAIL", "REGRESSION", "ERROR"]},
    "headline": _NAME,
    "exit_code": {"enum": [0, 1, 2]},
})

REPORT_SCHEMA = _obj({
    "schema_version": {"enum": list(READABLE_VERSIONS)},
    "kind": {"const": REPORT_KIND},
    "run_name": _NAME,
    "created": _NAME,
    "passed": {"type": "boolean"},
    "environment": ENVIRONMENT_SCHEMA,
    "config_hash": _STR_OR_NULL,
    "checkpoint_hash": _STR_OR_NULL,
    "policy": _obj({
        "rtol": _NUMBER,
        "k": _NUMBER,
        "floor_ulps": {"type": "object", "additionalProperties": _NUMBER},
    }),
    "notes": {"type": "array", "items": {"type": "string"}},
    "columns": {"type": "array", "items": COLUMN_SCHEMA},
    "machine": {"anyOf": [{"type": "null"}, MACHINE_SCHEMA]},
    "baseline": {"anyOf": [{"type": "null"}, BASELINE_SCHEMA]},
    "error": _STR_OR_NULL,
    "timings": {"type": ["object", "null"]},
    "outcome": OUTCOME_SCHEMA,
}, optional=("machine", "baseline", "error", "timings", "outcome"))


def json_schema() -> dict[str, Any]:
    """``REPORT_SCHEMA`` as a standalone JSON Schema document (for external validators)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"{REPORT_KIND} v{SCHEMA_VERSION}", **REPORT_SCHEMA}


def encode_floats(value: Any) -> Any:
    """A copy of ``value`` with NaN/inf floats replaced by their schema strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: encode_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_floats(v) for v in value]
    return value


def decode_number(value: Any) -> Any:
    """Inverse of :func:`encode_floats` for one value (None and numbers pass through)."""
    if isinstance(value, str) and value in NONFINITE_STRINGS:
        return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[value]
    return value


def validate_report(data: Any) -> None:
    """Raise :class:`ReportSchemaError` naming the first offending field; return None if valid."""
    if isinstance(data, dict) and "schema_version" in data and data["schema_version"] not in READABLE_VERSIONS:
        raise ReportSchemaError(
            "schema_version",
            f"unsupported version {data['schema_version']!r} (this flax-bart reads "
            f"{', '.join(map(str, READABLE_VERSIONS))})",
        )
    _check(data, REPORT_SCHEMA, "report")
    _check_consistency(data)


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _finite(value: int | float) -> bool:
    """A JSON number a float holds: not 1e999 (read as inf) nor an integer past the float range (those
    are written as the strings "Infinity"/"-Infinity" when meant)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _check(value: Any, schema: dict[str, Any], path: str) -> None:
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                _check(value, option, path)
                return
            except ReportSchemaError as exc:
                errors.append(exc)
        # A wrong value inside an object option is more useful than "matches none".
        deeper = [e for e in errors if e.field != path]
        if deeper:
            raise deeper[0]
        raise ReportSchemaError(path, f"expected {_expected(schema)}, got {_describe(value)}")
    if "const" in schema and (value != schema["const"] or type(value) is not type(schema["const"])):
        raise ReportSchemaError(path, f"expected {schema['const']!r}, got {_describe(value)}")
    if "enum" in schema and value not in schema["enum"]:
        raise ReportSchemaError(path, f"expected one of {schema['enum']}, got {_describe(value)}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            raise ReportSchemaError(path, f"expected {' or '.join(types)}, got {_describe(value)}")
    if "minimum" in schema and _TYPES["number"](value) and value < schema["minimum"]:
        raise ReportSchemaError(path, f"expected a value >= {schema['minimum']}, got {value!r}")
    if "minLength" in schema and isinstance(value, str) and len(value) < schema["minLength"]:
        raise ReportSchemaError(path, "expected a non-empty string")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                raise ReportSchemaError(f"{path}.{key}", "required field is missing")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                _check(item, props[key], f"{path}.{key}")
            elif extra is False:
                raise ReportSchemaError(f"{path}.{key}", "unexpected field")
            elif isinstance(extra, dict):
                _check(item, extra, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{i}]")


def _expected(schema: dict[str, Any]) -> str:
    parts = []
    for option in schema["anyOf"]:
        if "type" in option:
            parts.append(option["type"] if isinstance(option["type"], str) else "/".join(option["type"]))
        elif "enum" in option:
            parts.append("one of " + ", ".join(map(str, option["enum"])))
        else:
            parts.append("object")
    return " or ".join(parts)


def _check_verdict(verdict: dict[str, Any], where: str) -> None:
    """A tolerance is a finite number >= 0, a value is >= 0 ("NaN" and "Infinity" allowed), and a passing
    verdict's value is within its tolerance (parity.tolerance decides every verdict so): a baseline that
    says otherwise would switch its tensors' regression check off (a NaN or infinite tolerance with
    `passed: true`) or make its shares meaningless (a negative value)."""
    value, tolerance = decode_number(verdict["value"]), decode_number(verdict["tolerance"])
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ReportSchemaError(f"{where}.tolerance", f"expected a finite number >= 0, got "
                                                      f"{verdict['tolerance']!r}")
    if value < 0:   # False for NaN
        raise ReportSchemaError(f"{where}.value", f"expected a number >= 0 (or \"NaN\" or \"Infinity\"), got "
                                                  f"{verdict['value']!r}")
    if verdict["passed"] and not value <= tolerance:
        raise ReportSchemaError(f"{where}.passed", f"true, but its value {verdict['value']!r} is not within its "
                                                   f"tolerance {verdict['tolerance']!r}")


def _check_metric_values(metrics: dict[str, Any], where: str) -> None:
    """Magnitudes are >= 0 and shares in [0, 1] ("NaN" allowed in both; "Infinity" for magnitudes)."""
    for name in NONNEGATIVE_METRICS:
        raw = metrics.get(name)
        if raw is not None and decode_number(raw) < 0:
            raise ReportSchemaError(f"{where}.{name}", f"expected a number >= 0 (or \"NaN\" or \"Infinity\"), "
                                                       f"got {raw!r}")
    for name in FRACTION_METRICS:
        raw = metrics.get(name)
        if raw is not None and not math.isnan(decode_number(raw)) and not 0 <= decode_number(raw) <= 1:
            raise ReportSchemaError(f"{where}.{name}", f"expected a share in [0, 1] (or \"NaN\"), got {raw!r}")


def _check_consistency(data: dict[str, Any]) -> None:
    """Cross-field rules the schema cannot state."""
    seen_keys: set[str] = set()
    for ci, col in enumerate(data["columns"]):
        where = f"report.columns[{ci}]"
        key = f"{col['dtype']}/{col['flax_device']}/{col['torch_device']}"
        if col["key"] != key:
            raise ReportSchemaError(f"{where}.key", f"expected {key!r}, got {col['key']!r}")
        if key in seen_keys:
            raise ReportSchemaError(f"{where}.key", f"duplicate column {key!r}")
        seen_keys.add(key)
        names: set[str] = set()
        failing = []
        for ri, res in enumerate(col["results"]):
            _check_verdict(res["verdict"], f"{where}.results[{ri}].verdict")
            if res["name"] in names:
                raise ReportSchemaError(f"{where}.results[{ri}].name", f"duplicate tensor {res['name']!r}")
            names.add(res["name"])
            if res["metrics"]["name"] != res["name"]:
                raise ReportSchemaError(f"{where}.results[{ri}].metrics.name",
                                        f"expected {res['name']!r}, got {res['metrics']['name']!r}")
            _check_metric_values(res["metrics"], f"{where}.results[{ri}].metrics")
            if not res["verdict"]["passed"]:
                failing.append(res)
        counts = {"total": len(col["results"]), "failed": len(failing)}
        if col["counts"] != counts:
            raise ReportSchemaError(f"{where}.counts", f"expected {counts}, got {col['counts']}")
        if col["passed"] != (not failing):
            raise ReportSchemaError(f"{where}.passed", f"expected {not failing}, got {col['passed']}")
        first = col["first_failure"]
        if failing and (first is None or first["name"] != failing[0]["name"] or first["column"] != key):
            raise ReportSchemaError(f"{where}.first_failure",
                                    f"expected the first failing tensor {failing[0]['name']!r}, got {first!r}")
        if not failing and first is not None:
            raise ReportSchemaError(f"{where}.first_failure", "expected null for a passing column")
    overall = all(col["passed"] for col in data["columns"])
    if data["passed"] != overall:
        raise ReportSchemaError("report.passed", f"expected {overall}, got {data['passed']}")
    from parity.outcome import check_consistency

    check_consistency(data)
