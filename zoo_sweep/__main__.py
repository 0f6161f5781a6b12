"""`python -m zoo_sweep ...` is `zoo-sweep ...` (Ray Jobs use it: the console script may not be on PATH)."""

import sys

from zoo_sweep.cli import main

sys.exit(main())
