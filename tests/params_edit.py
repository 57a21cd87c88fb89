"""Test helper: a copy of a nested params mapping with dotted keys removed."""

from __future__ import annotations

import copy


def without_keys(params: dict, *keys: str) -> dict:
    """A deep copy of ``params`` without the dotted ``keys`` (``"fuse.tile"`` deletes ``params["fuse"]["tile"]``)."""
    params = copy.deepcopy(params)
    for key in keys:
        *parents, last = key.split(".")
        node = params
        for part in parents:
            node = node[part]
        del node[last]
    return params
