"""``python -m vtsched.core.cli``: the same as the ``vtsched`` console script."""

import sys

from vtsched.core.cli import main

sys.exit(main())
