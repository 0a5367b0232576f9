"""The one exception type for bad checkpoints and bad arguments (the CLI maps it to exit code 2)."""

from __future__ import annotations


class ConversionError(ValueError):
    """A checkpoint, index, config or argument that cannot be converted as asked.

    The message names the file / key / argument and the expected vs actual value. Several problems
    found in one pass are reported together, one per line.
    """

    @classmethod
    def collect(cls, problems: list[str], what: str) -> "ConversionError":
        head = f"{what}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"
        shown = problems[:50]
        more = [f"  ... and {len(problems) - 50} more"] if len(problems) > 50 else []
        return cls("\n".join([head] + [f"  - {p}" for p in shown] + more))
