"""``python -m bafusion.cli``: the ``bafusion`` command (used by the multi-process training launch)."""

import sys

from bafusion.cli.app import main

sys.exit(main())
