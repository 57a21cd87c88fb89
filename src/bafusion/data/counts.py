"""How many pairs, patches and training samples a configuration makes (``bafusion count``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bafusion.data.patches import AUGMENTATION_FACTOR, BOUNDARY_SUBSET, PatchOptions, val_pair_count
from bafusion.data.sources import check_selection, dir_foregrounds, select
from bafusion.errors import UserError

__all__ = ["alphamatting_download_count", "count_samples"]


def alphamatting_download_count(params: Mapping[str, Any]) -> tuple[int, str] | None:
    """The foregrounds the ``download_alphamatting`` rule writes for ``data.source: web``.

    Parameters
    ----------
    params : Mapping
        The whole parameters (``download.alphamatting.from_dir`` is read).

    Returns
    -------
    tuple of (int, str) or None
        The number, and where they come from for a message: the alphamatting.com training
        set's :data:`bafusion.config.ALPHAMATTING_FOREGROUNDS` (``"of the alphamatting.com
        training set"``), or those of the extracted folder ``download.alphamatting.from_dir``
        names (copied whole). None where that folder cannot be read here (the download job
        says why).
    """
    from bafusion.config import ALPHAMATTING_FOREGROUNDS
    from bafusion.workspace import resolve

    from_dir = str(((params.get("download") or {}).get("alphamatting") or {}).get("from_dir") or "")
    if from_dir:
        src = resolve(from_dir)
        if (src / "input").is_dir() or (src / "gt").is_dir():  # an extracted copy, not the two archives
            try:
                return len(dir_foregrounds(src, shown=from_dir)), f"in download.alphamatting.from_dir {from_dir}"
            except (UserError, OSError):
                return None
    return ALPHAMATTING_FOREGROUNDS, "of the alphamatting.com training set"


def _web_available(params: Mapping[str, Any]) -> tuple[dict[str, int | None], str]:
    """The training foregrounds and backgrounds ``data.source: web`` gives prepare: what the
    download rules write (:func:`alphamatting_download_count`,
    :func:`bafusion.config.coco_download_count`, the ``download_coco`` rule's ``--count``) less
    the held-out ones; None where it cannot be known here. With the words saying so."""
    from bafusion.config import DEFAULT_COCO_COUNT, coco_download_count

    data = dict(params.get("data") or {})
    check_selection(data)
    am = alphamatting_download_count(params)
    coco = int(((params.get("download") or {}).get("coco") or {}).get("count") or 0)
    downloaded = {"foregrounds": am[0] if am else None, "backgrounds": coco_download_count(params)}
    where = {"foregrounds": am[1] if am else "", "backgrounds": (
        f"from COCO (download.coco.count {coco})" if coco else
        f"from COCO (download.coco.count 0: data.backgrounds, 0 = {DEFAULT_COCO_COUNT}, + data.holdout_backgrounds)")}
    available: dict[str, int | None] = {"foregrounds": None, "backgrounds": None}
    for k in ("foregrounds", "backgrounds"):
        n, holdout = downloaded[k], int(data.get(f"holdout_{k}") or 0)
        if n is None:
            continue
        if holdout >= n:
            raise UserError(f"data.holdout_{k}: cannot hold out {holdout} of the {n} {k} {where[k]} that "
                            "data.source: web downloads (nothing would be left to train on)")
        available[k] = n - holdout
    words = "; ".join(f"{downloaded[k]} {k} {where[k]}" for k in ("foregrounds", "backgrounds")
                      if downloaded[k] is not None)
    holdout = {k: int(data.get(f"holdout_{k}") or 0) for k in ("foregrounds", "backgrounds")}
    held = (f", less the {holdout['foregrounds']} foregrounds and {holdout['backgrounds']} backgrounds held out"
            if holdout["foregrounds"] else "")
    return available, f"counting the images it will download ({words}){held}"


def count_samples(params: Mapping[str, Any]) -> dict[str, Any]:
    """Pairs, base patches and effective (x12 augmented) samples that a configuration makes.

    Foreground and background numbers come from ``data.foregrounds``/``data.backgrounds``
    when set (> 0); otherwise from the source itself (all images it has, less held-out ones).
    ``available`` reports what the source really has (less the held-out), when it can be read;
    for ``data.source: web``, what the download rules will write (less the held-out):
    :func:`alphamatting_download_count` foregrounds and
    :func:`bafusion.config.coco_download_count` backgrounds. With
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
        # the pipeline downloads the images (workflow/rules/download.smk): nothing to read
        # here, but the download rules' counts are known from the parameters
        note_reason = "data.source 'web' downloads the images only when the pipeline runs"
        available, counted = _web_available(params)
        note = f"{note_reason}; {counted}"
        if None in available.values():
            note_reason += " (download.alphamatting.from_dir cannot be read here)"
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
            (f"{note}; " if note else "")
            + f"the source has fewer {' and '.join(short)} than configured "
            f"({'; '.join(f'{k}: {available[k]} available, {n_cfg[k]} configured' for k in short)}): "
            f"a run here would make {real:,} pairs"
        )
    return out

