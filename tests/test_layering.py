"""A direction of dependency of ../shared/ARCHITECTURE.md, read off the sources: `flax_bart` never
imports `parity` (its `flax-bart` command only dispatches to `parity.cli`)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DISPATCH = {"flax_bart/cli.py"}   # the `flax-bart` command: one entry point for every subcommand


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _offenders(package: str, banned) -> list[str]:
    found = []
    for path in sorted((ROOT / package).glob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in DISPATCH:
            continue
        found += [f"{rel}: {name}" for name in sorted(_imports(path)) if banned(name)]
    return found


def test_flax_bart_never_imports_parity():
    assert _offenders("flax_bart", lambda n: n == "parity" or n.startswith("parity.")) == []


def test_the_check_sees_an_import():
    """The scanner itself: an import inside a function counts."""
    probe = ROOT / "tests" / "_layering_probe.py"
    probe.write_text("def f():\n    from parity.mesh import parse_mesh\n", encoding="utf-8")
    try:
        assert "parity.mesh" in _imports(probe)
    finally:
        probe.unlink()
