"""``python -m lab``: the demo site."""

import sys

from lab.cli import main

sys.exit(main())
