"""``bafusion.metrics``: the fusion metrics, :mod:`bafusion.evaluation.metrics` itself.

``import bafusion.metrics`` and ``from bafusion.metrics import qg`` give that module (this file
puts it in its place in :data:`sys.modules`), as ``from bafusion import metrics`` does:
``bafusion.metrics is bafusion.evaluation.metrics``. See that module for the metrics.
"""

import sys
from typing import TYPE_CHECKING

from bafusion.evaluation import metrics as _metrics

if TYPE_CHECKING:  # what type checkers see of ``from bafusion.metrics import qg``: the module's API
    from bafusion.evaluation.metrics import *  # noqa: F403

sys.modules[__name__] = _metrics
