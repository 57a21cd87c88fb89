"""The ``prepare`` step: resize foregrounds and mattes (the paper halves the alphamatting
images, which are larger than COCO's), check and normalise backgrounds, write a manifest.

Output folder (written under a temporary name, renamed when complete)::

    manifest.json            what follows, with sizes, origins and train/test split
    fg/<id>.png              foreground, RGB, resized by ``scale`` (antialiased)
    matte/<id>.png           its alpha matte, gray, resized the same way
    bg/<id>.png|.jpg         background, RGB (a plain RGB JPEG is copied byte for byte)
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bafusion.atomic import atomic_dir
from bafusion.data.mattes import matte_warning
from bafusion.data.sources import Background, Foreground, check_foreground, select
from bafusion.errors import InputFileError, UserError, json_loads
from bafusion.io import resize, scaled_size, write_image
from bafusion.io.formats import pillow_open
from bafusion.progress import bar_options

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PrepareOptions:
    scale: float = 0.5
    min_background_side: int = 64


def prepare_foreground(fg: Foreground, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Load, check and resize one foreground and its matte with the same antialiased filter.
    A matte almost all background or all foreground is warned about on stderr."""
    img, matte = check_foreground(fg)
    warn = matte_warning(matte)
    if warn:
        print(f"{fg.matte_origin or fg.origin}: warning: {warn}", file=sys.stderr)
    if scale != 1.0:
        size = scaled_size(img.shape, scale)
        img, matte = resize(img, size), resize(matte, size)
    return img, matte


def _plain_rgb_jpeg(path: Path) -> bool:
    try:
        with pillow_open(path) as im:
            return im.format == "JPEG" and im.mode == "RGB" and im.getexif().get(0x0112, 1) == 1
    except OSError:
        return False


def prepare_background(bg: Background, out_dir: Path, min_side: int) -> dict[str, Any]:
    img = bg.load_image()
    h, w = img.shape[:2]
    if min(h, w) < min_side:
        raise InputFileError(bg.origin, f"background is {w}x{h}, smaller than prepare.min_background_side={min_side}")
    if bg.path is not None and _plain_rgb_jpeg(bg.path):
        name = f"{bg.id}.jpg"
        shutil.copyfile(bg.path, out_dir / name)
    else:
        name = f"{bg.id}.png"
        write_image(out_dir / name, img)
    return {"id": bg.id, "image": f"bg/{name}", "height": h, "width": w, "origin": bg.origin}


def check_background_sizes(bgs: list[Background], min_side: int) -> None:
    """Refuse, before any image is prepared, the backgrounds of files whose shorter side (from
    their headers) is below ``min_side``, naming them all (the first five, and a count);
    backgrounds without a file (builtin) are checked when read (:func:`prepare_background`).

    Parameters
    ----------
    bgs : list of Background
        The backgrounds to prepare.
    min_side : int
        ``prepare.min_background_side``.

    Raises
    ------
    InputFileError
        Naming the file where one background is small.
    UserError
        Naming each small background and its size where several are.
    """
    from bafusion.io import image_info

    small: list[tuple[str, int, int]] = []
    for bg in bgs:
        if bg.path is None:
            continue
        info = image_info(bg.path)
        if min(info.width, info.height) < min_side:
            small.append((bg.origin, info.width, info.height))
    if len(small) == 1:
        origin, w, h = small[0]
        raise InputFileError(origin, f"background is {w}x{h}, smaller than prepare.min_background_side={min_side}")
    if small:
        named = ", ".join(f"{o} ({w}x{h})" for o, w, h in small[:5]) + (", ..." if len(small) > 5 else "")
        raise UserError(f"{len(small)} backgrounds are smaller than prepare.min_background_side={min_side}: {named}: "
                        "remove them from the folder or lower prepare.min_background_side")


def no_boundary_message(uniform: list[str]) -> str:
    """The refusal of training foregrounds whose mattes are all of one value (``uniform``, each
    ``"<file>: <value>"``): no composite of theirs holds a boundary between a focused and a
    defocused region, whatever ``patches.label_threshold``, so the boundary net's patch set would
    be empty and the initial net's labels of one class per pair.

    Parameters
    ----------
    uniform : list of str
        The training mattes, ``"<file>: <value>"`` each (the first five are named).

    Returns
    -------
    str
    """
    named = ", ".join(uniform[:5]) + (f", ... ({len(uniform)} in all)" if len(uniform) > 5 else "")
    return (f"every training matte is one value everywhere ({named}): no composite holds a boundary between focused "
            "and defocused pixels, so the boundary net would have no patch to train on (mattes are 0..255, "
            "255 = foreground; the alpha channel of a one-colour image is read as its matte)")


def run_prepare(data_cfg: dict, opts: PrepareOptions, seed: int, out: Path, progress: bool = True) -> dict[str, Any]:
    """Resolve the data source, write the prepared folder ``out``, return the manifest."""
    if not 0 < opts.scale <= 4:
        raise UserError(f"prepare.scale must be in (0, 4], got {opts.scale}")
    sel = select(data_cfg, seed)
    if not sel.train_foregrounds:
        raise UserError("no foregrounds selected for training")
    if not sel.train_backgrounds:
        raise UserError("no backgrounds selected for training")
    for what, got in (("foregrounds", sel.train_foregrounds), ("backgrounds", sel.train_backgrounds)):
        asked = int(data_cfg.get(what, 0) or 0)
        if asked > len(got):  # e.g. the paper preset's 700 backgrounds on a folder of 128
            print(f"note: data.{what} is {asked:,}, but the source has {len(got):,} for training "
                  f"(after {int(data_cfg.get(f'holdout_{what}', 0) or 0)} held out): using {len(got):,}",
                  file=sys.stderr)
    ids = [b.id for b in sel.train_backgrounds + sel.test_backgrounds]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise UserError(f"background ids are not unique (same file name with different extensions?): {dup[:5]}")
    check_background_sizes(sel.train_backgrounds + sel.test_backgrounds, opts.min_background_side)
    manifest: dict[str, Any] = {
        "source": data_cfg.get("source", "builtin"),
        "scale": opts.scale,
        "seed": seed,
        "foregrounds": [],
        "backgrounds": [],
    }
    with atomic_dir(out) as tmp:
        (tmp / "fg").mkdir()
        (tmp / "matte").mkdir()
        (tmp / "bg").mkdir()
        fgs = [(f, "train") for f in sel.train_foregrounds] + [(f, "test") for f in sel.test_foregrounds]
        uniform: list[str] = []  # training mattes of one value: "file: value"
        for fg, split in tqdm(fgs, desc="prepare foregrounds", unit="img", **bar_options(progress)):
            img, matte = prepare_foreground(fg, opts.scale)
            if split == "train" and matte.size and int(matte.min()) == int(matte.max()):
                uniform.append(f"{fg.matte_origin or fg.origin}: {int(matte.min())}")
            write_image(tmp / "fg" / f"{fg.id}.png", img)
            write_image(tmp / "matte" / f"{fg.id}.png", matte)
            manifest["foregrounds"].append(
                {
                    "id": fg.id,
                    "image": f"fg/{fg.id}.png",
                    "matte": f"matte/{fg.id}.png",
                    "height": int(img.shape[0]),
                    "width": int(img.shape[1]),
                    "origin": fg.origin,
                    "split": split,
                }
            )
        if len(uniform) == len(sel.train_foregrounds):
            raise UserError(no_boundary_message(uniform))
        bgs = [(b, "train") for b in sel.train_backgrounds] + [(b, "test") for b in sel.test_backgrounds]
        for bg, split in tqdm(bgs, desc="prepare backgrounds", unit="img", **bar_options(progress)):
            entry = prepare_background(bg, tmp / "bg", opts.min_background_side)
            entry["split"] = split
            manifest["backgrounds"].append(entry)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


#: The keys the composite steps read from every manifest entry, by kind.
ENTRY_KEYS = {"foregrounds": ("id", "image", "matte"), "backgrounds": ("id", "image")}


def load_manifest(prepared: Path) -> dict[str, Any]:
    """The prepare step's manifest of ``prepared``; one that is not JSON, or lacks a key the
    composite steps read (``foregrounds``, ``backgrounds``, an entry's ``id``, ``image`` or
    ``matte``), is refused naming the file and the key, not left to a KeyError."""
    p = Path(prepared) / MANIFEST
    if not p.exists():
        raise InputFileError(p, "manifest not found: run the prepare step first")
    try:
        manifest = json_loads(p.read_text(encoding="utf-8-sig"))
    except ValueError as e:
        raise InputFileError(p, f"corrupt manifest: {e}") from e
    again = "run the prepare step again"
    if not isinstance(manifest, dict):
        raise InputFileError(p, f"not a prepare manifest (a JSON object): {again}")
    for kind, keys in ENTRY_KEYS.items():
        if kind not in manifest:
            raise InputFileError(p, f"not a prepare manifest: missing key {kind!r}: {again}")
        if not isinstance(manifest[kind], list) or not all(isinstance(e, dict) for e in manifest[kind]):
            raise InputFileError(p, f"not a prepare manifest: {kind!r} must be a list of objects: {again}")
        seen: dict[str, int] = {}
        for i, e in enumerate(manifest[kind]):
            for k in keys:
                if k not in e:
                    raise InputFileError(p, f"not a prepare manifest: {kind}[{i}] lacks key {k!r}: {again}")
            # hand-edited values reached composite as TypeErrors and h5py errors (ids name HDF5 groups)
            bad = _entry_problem(e, keys)
            if bad:
                raise InputFileError(p, f"not a prepare manifest: {kind}[{i}]: {bad}: {again}")
            if e["id"] in seen:
                raise InputFileError(p, f"not a prepare manifest: {kind}[{i}]: id {e['id']!r} is also "
                                        f"{kind}[{seen[e['id']]}]'s (ids are unique): {again}")
            seen[e["id"]] = i
    return manifest


def _entry_problem(e: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """What is wrong with the values of a manifest entry (its ``keys`` present), None if nothing."""
    if not isinstance(e["id"], str) or not e["id"]:
        return f"'id' must be a non-empty string, got {e['id']!r}"
    for k in keys[1:]:
        if not isinstance(e[k], str) or not e[k]:
            return f"{k!r} must be a file name (a string), got {e[k]!r}"
    if "split" in e and not isinstance(e["split"], str):
        return f"'split' must be a string, got {e['split']!r}"
    return None


def entries(manifest: dict[str, Any], kind: str, split: str) -> list[dict[str, Any]]:
    return [e for e in manifest[kind] if e.get("split", "train") == split]
