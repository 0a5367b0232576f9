"""The account of a conversion: what every source tensor became."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter


@dataclasses.dataclass
class Summary:
    head: str
    source_head: str
    source: dict = dataclasses.field(default_factory=dict)   # framework, format, files, tensors, bytes
    target: dict = dataclasses.field(default_factory=dict)   # framework, format, files, tensors, bytes
    rules: Counter = dataclasses.field(default_factory=Counter)   # rule name -> tensors mapped by it
    tied: dict = dataclasses.field(default_factory=dict)     # target name -> source copies checked equal
    copies: dict = dataclasses.field(default_factory=dict)   # target name -> extra target keys written
    casts: Counter = dataclasses.field(default_factory=Counter)   # "float32->bfloat16" -> count
    missing: list = dataclasses.field(default_factory=list)  # target names absent from the source
    unused: list = dataclasses.field(default_factory=list)   # BART tensors the target head has no use for
    unexpected: list = dataclasses.field(default_factory=list)   # source names that are not BART tensors
    nonfinite: dict = dataclasses.field(default_factory=dict)    # target name -> {"nan": n, "inf": m}
    seconds: float = 0.0

    @property
    def nan_total(self) -> int:
        return sum(v["nan"] for v in self.nonfinite.values())

    @property
    def inf_total(self) -> int:
        return sum(v["inf"] for v in self.nonfinite.values())

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rules"], d["casts"] = dict(sorted(self.rules.items())), dict(sorted(self.casts.items()))
        d["nan_total"], d["inf_total"] = self.nan_total, self.inf_total
        d["seconds"] = round(self.seconds, 3)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def one_line(self) -> str:
        s, t = self.source, self.target
        parts = [
            f"{t.get('tensors', 0)} tensors {s.get('framework')}/{s.get('format')} ({self.source_head}) "
            f"-> {t.get('framework')}/{t.get('format')} ({self.head}) in {self.seconds:.1f} s",
            f"tied copies checked: {sum(len(v) for v in self.tied.values())}",
        ]
        if self.casts:
            parts.append("casts: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.casts.items())))
        for name in ("missing", "unused", "unexpected"):
            if getattr(self, name):
                parts.append(f"{name}: {len(getattr(self, name))}")
        if self.nonfinite:
            parts.append(f"non-finite values: {self.nan_total} NaN, {self.inf_total} Inf in {len(self.nonfinite)} tensors")
        return "; ".join(parts)
