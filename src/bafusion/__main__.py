"""``python -m bafusion``: the ``bafusion`` command, for environments without its script on PATH."""

import sys

from bafusion.cli.app import main

sys.exit(main())
