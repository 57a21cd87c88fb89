"""How many pairs, patches and training samples a configuration makes (``bafusion count``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bafusion.data.patches import AUGMENTATION_FACTOR, BOUNDARY_SUBSET, PatchOptions, val_pair_count
from bafusion.data.sources import select
from bafusion.errors import UserError

__all__ = ["count_samples"]


def count_samples(params: Mapping[str, Any]) -> dict[str, Any]:
    """Pairs, base patches and effective (x12 augmented) samples that a configuration makes.

    Foreground and background numbers come from ``data.foregrounds``/``data.backgrounds``
    when set (> 0); otherwise from the source itself (all images it has, less held-out ones;
    for ``data.source: web``, what the download keeps: the 27 alphamatting.com foregrounds and
    :func:`bafusion.config.coco_download_count` COCO backgrounds, less the held-out ones).
    ``available`` reports what the source really has, when it can be read. With
    ``patches.boundary_per_pair: subset`` the boundary patches are the random ones that pass
    the boundary test: at most the base patches (``boundary_subset`` is then true).
    ``effective_samples`` counts every pair; the training loader sees only the pairs that
    ``patches.val_fraction`` does not hold out (``train_pairs``, ``train_effective_samples``:
    an epoch of the initial net with ``train.samples_per_epoch`` 0); the held-out pairs'
    ``val_patches`` are scored without augmentation.
    """
    data = params.get("data", {}) or {}
    pat = params.get("patches", {}) or {}
    default = PatchOptions()  # a key the params lack: what `bafusion patches` takes then
    n_cfg = {"foregrounds": int(data.get("foregrounds", 0) or 0), "backgrounds": int(data.get("backgrounds", 0) or 0)}
    available: dict[str, int | None] = {"foregrounds": None, "backgrounds": None}
    note = None
    note_reason = ""
    if data.get("source") == "web":
        # the pipeline downloads the images (workflow/rules/download.smk): nothing to read here,
        # but what it downloads is known (a download.alphamatting.from_dir copy's foregrounds are not)
        note_reason = "data.source 'web' downloads the images only when the pipeline runs"
        note = f"{note_reason}; counting from the configured numbers"
        web_total = _web_downloads(params)
        for k in ("foregrounds", "backgrounds"):
            left = None if web_total[k] is None else web_total[k] - int(data.get(f"holdout_{k}", 0) or 0)
            if not n_cfg[k] and left is not None and left > 0:
                n_cfg[k] = left  # 0 = all the download keeps but the held-out ones
                note = (f"{note_reason}; counting from the configured numbers (0: all that the download keeps "
                        "less the held-out ones)")
    else:
        try:
            unlimited = dict(data, foregrounds=0, backgrounds=0)
            sel = select(unlimited, int(params.get("seed", 0)))
            available = {"foregrounds": len(sel.train_foregrounds), "backgrounds": len(sel.train_backgrounds)}
        except UserError as e:
            note_reason = str(e)  # e.g. "foregrounds: cannot hold out 27 of 27 (...)"
            note = f"source not readable here ({e}); counting from the configured numbers"
    unknown = [k for k in ("foregrounds", "backgrounds") if not n_cfg[k] and available[k] is None]
    if unknown:
        # the source's own problem first (it was "data.foregrounds is 0 (= all) and the source
        # cannot be read (<the background folder>)", blaming the count)
        keys = " and ".join(f"data.{k}" for k in unknown)
        raise UserError(f"{note_reason}: cannot count {keys} (0 = all the source has); "
                        f"set {'them' if len(unknown) > 1 else 'it'} to count from the configured numbers")
    n = {k: n_cfg[k] or int(available[k])  # type: ignore[arg-type]
         for k in ("foregrounds", "backgrounds")}
    pairs = n["foregrounds"] * n["backgrounds"]
    per_pair = int(pat.get("per_pair", default.per_pair))
    base = pairs * per_pair
    val_pairs = val_pair_count(pairs, float(pat.get("val_fraction", default.val_fraction)))
    boundary_per_pair = pat.get("boundary_per_pair", default.boundary_per_pair)
    subset = boundary_per_pair == BOUNDARY_SUBSET  # the random patches that pass the boundary test
    boundary_max = base if subset else pairs * int(boundary_per_pair)
    out: dict[str, Any] = {
        "foregrounds": n["foregrounds"],
        "backgrounds": n["backgrounds"],
        "available": available,
        "pairs": pairs,
        "patches_per_pair": per_pair,
        "base_patches": base,
        "augmentation_factor": AUGMENTATION_FACTOR,
        "effective_samples": base * AUGMENTATION_FACTOR,
        "train_pairs": pairs - val_pairs,
        "val_pairs": val_pairs,
        "train_effective_samples": (pairs - val_pairs) * per_pair * AUGMENTATION_FACTOR,
        "val_patches": val_pairs * per_pair,
        "boundary_patches_at_most": boundary_max,
        "boundary_effective_samples_at_most": boundary_max * AUGMENTATION_FACTOR,
    }
    if subset:
        out.update(boundary_subset=True, boundary_min_focused=float(pat.get("min_focused", default.min_focused)),
                   boundary_min_defocused=float(pat.get("min_defocused", default.min_defocused)))
    if note:
        out["note"] = note
    short = [k for k in ("foregrounds", "backgrounds") if available[k] is not None and n_cfg[k] > int(available[k] or 0)]
    if short:
        real = 1
        for k in ("foregrounds", "backgrounds"):
            real *= min(n[k], int(available[k])) if available[k] is not None else n[k]
        out["note"] = (
            f"the source has fewer {' and '.join(short)} than configured "
            f"({'; '.join(f'{k}: {available[k]} available, {n_cfg[k]} configured' for k in short)}): "
            f"a run here would make {real:,} pairs"
        )
    return out


def _web_downloads(params: Mapping[str, Any]) -> dict[str, int | None]:
    """The foregrounds and backgrounds ``data.source: web`` downloads: the alphamatting.com
    training set's :data:`bafusion.config.ALPHAMATTING_FOREGROUNDS` (None with a
    ``download.alphamatting.from_dir``, whose folder may hold others) and
    :func:`bafusion.config.coco_download_count` COCO backgrounds."""
    from bafusion.config import ALPHAMATTING_FOREGROUNDS, coco_download_count

    from_dir = ((params.get("download") or {}).get("alphamatting") or {}).get("from_dir")
    return {"foregrounds": None if from_dir else ALPHAMATTING_FOREGROUNDS, "backgrounds": coco_download_count(params)}
