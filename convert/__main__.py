"""`python -m convert SRC DST --to flax|pytorch ...`"""

import sys

from convert.cli import main

sys.exit(main())
