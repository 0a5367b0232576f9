"""docs/reliability.md states the figures of this suite; they must be the ones the code has."""

from __future__ import annotations

import os
import re

from figures import figures

DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "reliability.md")
HEADLINE = ("hostile cases", "hostile runs (case x entry point)", "hostile runs under an address-space limit",
            "property-test examples", "fault-injection points", "fault points: sigkill")


def test_the_document_states_the_current_figures():
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    got = figures()
    stale = [f"| {k} | {got[k]} |" for k in HEADLINE if f"| {k} | {got[k]} |" not in text]
    assert not stale, f"update docs/reliability.md (python tests/robustness/figures.py): {stale}"
    for key, value in got.items():  # the per-scenario and per-property rows too
        if key.startswith("fault points: ") and key != "fault points: sigkill":
            assert re.search(rf"\| {value} \|", text), f"docs/reliability.md lacks the {key} figure {value}"
