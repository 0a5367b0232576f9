"""`python -m parity CHECKPOINT ...`: the same gate as `flax-bart parity`."""

import sys

from parity.cli import main

if __name__ == "__main__":
    sys.exit(main())
