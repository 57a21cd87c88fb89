"""The small metric files DVC versions in git (``metrics/``): numbers only, no settings.

DVC shows every number of a metrics file as a column of ``dvc exp show`` and compares it in
``dvc metrics diff``; settings belong in ``params.yaml`` (DVC's params), and per-pair detail
stays in the data folders (``data/fused/accuracy.json``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

#: The per-pair numbers of ``fuse-set``'s report that are averaged into ``metrics/fuse.json``.
FUSE_KEYS = (
    "dm_accuracy",
    "dm_accuracy_raw",
    "dm_accuracy_initial",
    "band8_accuracy",
    "band8_accuracy_initial",
    "near_boundary_fraction",
)


def fuse_metrics(report: Mapping[str, Any]) -> dict[str, float | int]:
    """The DVC metrics of a ``fuse-set`` report: means over the pairs, and the pair count.

    Parameters
    ----------
    report
        ``fuse-set``'s report: ``{"pairs": {name: {key: value}}, "params": ..., ...}``.

    Returns
    -------
    dict
        ``pairs`` and ``mean_<key>`` for each key of :data:`FUSE_KEYS` that some pair has
        (pairs without a true map have no accuracies). Settings, device and model paths are
        left out.

    Examples
    --------
    >>> fuse_metrics({"params": {"l": 8}, "pairs": {"a": {"dm_accuracy": 0.5}, "b": {"dm_accuracy": 1.0}}})
    {'pairs': 2, 'mean_dm_accuracy': 0.75}
    """
    pairs = report.get("pairs") or {}
    out: dict[str, float | int] = {"pairs": len(pairs)}
    for key in FUSE_KEYS:
        values = [float(e[key]) for e in pairs.values() if isinstance(e.get(key), (int, float))]
        values = [v for v in values if not math.isnan(v)]
        if values:
            out[f"mean_{key}"] = sum(values) / len(values)
    return out
