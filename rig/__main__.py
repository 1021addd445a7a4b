"""`python -m rig`: the same as the `rig` console script."""

import sys

from .cli import main

sys.exit(main())
