"""Tiny synthetic patch sets in the format of ``bafusion patches`` (for the training tests).

A focused patch is high-contrast random texture, a defocused one the same texture blurred
towards its mean; label 1 means channel 0 (A) is the focused one. Separable by local contrast.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def toy_arrays(n: int, patch: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    tex = rng.integers(0, 256, size=(n, patch, patch)).astype(np.float32)
    blurred = 0.85 * tex.mean(axis=(1, 2), keepdims=True) + 0.15 * tex
    y = rng.integers(0, 2, size=n).astype(np.uint8)
    x = np.empty((n, 2, patch, patch), dtype=np.uint8)
    a_sharp = y == 1
    x[:, 0] = np.where(a_sharp[:, None, None], tex, blurred).round().clip(0, 255)
    x[:, 1] = np.where(a_sharp[:, None, None], blurred, tex).round().clip(0, 255)
    return x, y


def write_toy_patches(path: Path, n_train: int = 256, n_val: int = 128, patch: int = 16, seed: int = 0,
                      kind: str = "initial", context: int = 0) -> Path:
    """Write a patch set with groups ``train``/``val`` (datasets x, y, y_block, pair, centre) and root attributes
    (``context`` > 0: crops of side ``patch + 2 * context``, the texture filling the whole crop)."""
    import h5py

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs["patch"] = patch
        f.attrs["seed"] = seed
        f.attrs["kind"] = kind
        f.attrs["params"] = json.dumps({"patch": patch, "toy": True})
        f.attrs["code_version"] = "test"
        if context:
            f.attrs["context"] = context
        for split, n in (("train", n_train), ("val", n_val)):
            x, y = toy_arrays(n, patch + 2 * context, rng)
            g = f.create_group(split)
            g.create_dataset("x", data=x)
            g.create_dataset("y", data=y)
            g.create_dataset("y_block", data=np.broadcast_to(y[:, None, None], (n, 2, 2)).copy())  # one label per patch
            g.create_dataset("pair", data=rng.integers(0, 5, size=n).astype(np.int64))
            g.create_dataset("centre", data=rng.integers(0, 100, size=(n, 2)).astype(np.int32))
    return path
