"""The whole hostile-input corpus: importing the case modules registers their cases in `CASES`."""

import hostile_files  # noqa: F401  (registers)
import hostile_layout  # noqa: F401  (registers)
from hostile import CASES, ENTRIES

__all__ = ["CASES", "ENTRIES"]
