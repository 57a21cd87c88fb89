"""COCO-2017 backgrounds: candidate selection with pycocotools, and a sharpness ranking that
keeps photos "without obvious defocus" (the paper's words).

Selection (:func:`select_candidates`) is deterministic given the annotation file, the filters
and the seed: image records of the split are filtered (minimum side, optional categories that
must / must not appear), sorted by image id, and shuffled with ``numpy.random.default_rng(seed)``.

Sharpness criterion (:func:`sharpness`): the **variance of the Laplacian** of the image's gray
levels (MATLAB ``rgb2gray`` weights, 0..255), computed after the image is brought
(antialiased) to a long side of at most ``ANALYSIS_SIDE`` = 512 px so that photos of different
sizes compare fairly. Defocus removes high spatial frequencies, so a photo with a large blurred
area has a low Laplacian variance. The pipeline downloads more candidates than it needs
(``oversample``, default 2x), ranks them by this value and keeps the sharpest ones; photos
that are gray (no colour) are dropped first when ``colour_only`` is set. The measure also
rewards busy texture, so it is a ranking over candidates, not an absolute test.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import urllib.parse
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from bafusion.errors import InputFileError, UserError, json_loads
from bafusion.io import gray_float, read_image, resize, scaled_size
from bafusion.io.formats import pillow_open

#: Sharpness is measured after resizing to at most this long side.
ANALYSIS_SIDE = 512
#: An image is colour when the mean over pixels of (max channel - min channel) reaches this.
COLOUR_MIN_CHROMA = 4.0


@dataclass(frozen=True)
class CocoFilter:
    """Which COCO images may serve as backgrounds.

    ``min_side``: smallest allowed min(width, height) in pixels. ``categories``: when given,
    an image needs an annotation of at least one of these category names. ``exclude``: an
    image with an annotation of any of these is dropped. ``colour_only`` is applied after
    download (the annotations do not say whether a photo is gray).
    """

    split: str = "train2017"
    min_side: int = 256
    colour_only: bool = True
    categories: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @property
    def needs_instances(self) -> bool:
        return bool(self.categories or self.exclude)


def annotation_member(split: str, instances: bool) -> str:
    """The member of ``annotations_trainval2017.zip`` to read. Captions files list the same
    images at a fraction of the size (91 MB instead of 448 MB for train2017), so they are
    used when no category filter needs the instance annotations."""
    return f"annotations/{'instances' if instances else 'captions'}_{split}.json"


def load_coco(annotations: str | os.PathLike[str], flt: CocoFilter) -> Any:
    """A ``pycocotools.coco.COCO`` index for ``flt.split``.

    ``annotations`` is the official zip (the right member is read from it without extracting
    it to disk) or a COCO-format JSON file.
    """
    from pycocotools.coco import COCO

    path = Path(annotations)
    if not path.is_file():
        raise InputFileError(path, "COCO annotations not found")
    try:
        if zipfile.is_zipfile(path):
            member = annotation_member(flt.split, flt.needs_instances)
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if member not in names:
                    alt = annotation_member(flt.split, True)
                    if alt not in names:
                        raise InputFileError(path, f"archive has no {member} (members: {names[:8]})")
                    member = alt
                from bafusion.data.download import check_zip_sizes

                check_zip_sizes(path, [zf.getinfo(member)])  # a zip bomb is refused, naming the archive
                with zf.open(member) as f:
                    dataset = json_loads(io.TextIOWrapper(f, encoding="utf-8").read())
        else:
            with open(path, encoding="utf-8") as f:
                dataset = json_loads(f.read())
    except (ValueError, zipfile.BadZipFile, OSError) as e:
        raise InputFileError(path, f"unreadable COCO annotations ({e.__class__.__name__}: {e})") from e
    if not isinstance(dataset, dict) or "images" not in dataset:
        raise InputFileError(path, "not a COCO annotation file (no 'images' list)")
    if flt.needs_instances and ("categories" not in dataset or "annotations" not in dataset):
        raise InputFileError(path, "category filters need instance annotations ('categories' and 'annotations')")
    coco = COCO()
    coco.dataset = dataset

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def _category_ids(coco: Any, names: Sequence[str], what: str) -> list[int]:
    ids = []
    known = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    for n in names:
        if n not in known:
            raise UserError(f"{what}: unknown COCO category {n!r} (known: {', '.join(sorted(known)[:12])}, ...)")
        ids.append(known[n])
    return ids


def select_candidates(coco: Any, flt: CocoFilter, seed: int, limit: int | None = None) -> list[dict[str, Any]]:
    """Image records that pass ``flt``, in a deterministic shuffled order (at most ``limit``)."""
    if flt.min_side < 0:
        raise UserError(f"coco min_side must be >= 0, got {flt.min_side}")
    ids = set(coco.getImgIds())
    if flt.categories:
        wanted: set[int] = set()
        for cid in _category_ids(coco, flt.categories, "coco categories"):
            wanted |= set(coco.getImgIds(catIds=[cid]))
        ids &= wanted
    if flt.exclude:
        for cid in _category_ids(coco, flt.exclude, "coco exclude categories"):
            ids -= set(coco.getImgIds(catIds=[cid]))
    records = [
        r
        for r in coco.loadImgs(sorted(ids))
        if min(int(r.get("width", 0)), int(r.get("height", 0))) >= flt.min_side
    ]
    order = np.random.default_rng(int(seed)).permutation(len(records))
    out = [records[i] for i in order]
    return out if limit is None else out[: max(0, int(limit))]


def image_url(record: dict[str, Any], split: str, base_url: str | None = None) -> str:
    """Where to fetch a record: its ``coco_url``, or ``<base_url>/<split>/<file_name>`` for a mirror."""
    if base_url:
        from bafusion.data.download import join_url

        return join_url(base_url, f"{split}/{record['file_name']}")
    url = record.get("coco_url")
    if not url:
        raise UserError(f"COCO image {record.get('id')} has no coco_url (give an image mirror)")
    problem = coco_url_problem(url)
    if problem:
        raise UserError(f"COCO image {record.get('id')} has coco_url {url!r}: {problem}")
    return str(url)


def coco_url_problem(url: object) -> str | None:
    """Why a record's ``coco_url`` cannot be fetched (None when it can): only an http(s) URL
    is (a ``file://`` one in annotations copied a local file into the backgrounds)."""
    if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        return "expected an http(s) URL (a local copy is given with images_dir / --images-dir)"
    return None


def is_colour(rgb: np.ndarray, min_chroma: float = COLOUR_MIN_CHROMA) -> bool:
    """True unless the image is (nearly) gray: mean of max-min over channels below ``min_chroma``."""
    if rgb.ndim == 2 or rgb.shape[2] == 1:
        return False
    a = rgb[..., :3].astype(np.int16)
    chroma = (a.max(axis=2) - a.min(axis=2)).mean()
    return bool(chroma >= min_chroma)


def sharpness(rgb: np.ndarray, analysis_side: int = ANALYSIS_SIDE) -> float:
    """Variance of the Laplacian of the gray image, at a long side of at most ``analysis_side``."""
    h, w = rgb.shape[:2]
    if max(h, w) > analysis_side:
        rgb = resize(np.ascontiguousarray(rgb), scaled_size((h, w), analysis_side / max(h, w)))
    g = gray_float(rgb)
    lap = ndimage.laplace(g, mode="reflect")
    return float(lap.var())


@dataclass
class Ranked:
    """A candidate image on disk with its measurements."""

    id: str
    path: Path
    sharpness: float
    colour: bool
    width: int
    height: int
    meta: dict[str, Any] = field(default_factory=dict)


def measure(path: str | os.PathLike[str], id: str | None = None, meta: dict[str, Any] | None = None) -> Ranked:
    """Decode one image and measure its sharpness and colourfulness (errors name the file)."""
    p = Path(path)
    img = read_image(p, rgb=True)
    with pillow_open(p) as im:
        gray_mode = im.mode in ("L", "LA", "1", "I", "I;16", "F")
    return Ranked(
        id=id or p.stem,
        path=p,
        sharpness=sharpness(img),
        colour=(not gray_mode) and is_colour(img),
        width=int(img.shape[1]),
        height=int(img.shape[0]),
        meta=dict(meta or {}),
    )


def rank_by_sharpness(
    items: Sequence[Ranked], keep: int, colour_only: bool = True, min_sharpness: float = 0.0
) -> tuple[list[Ranked], list[tuple[Ranked, str]]]:
    """Keep the ``keep`` sharpest items (ties broken by id). Returns (kept in rank order,
    [(dropped item, reason)])."""
    dropped: list[tuple[Ranked, str]] = []
    pool = []
    for it in items:
        if colour_only and not it.colour:
            dropped.append((it, "gray"))
        elif not math.isfinite(it.sharpness) or it.sharpness < min_sharpness:
            dropped.append((it, f"sharpness {it.sharpness:.1f} below min_sharpness {min_sharpness}"))
        else:
            pool.append(it)
    pool.sort(key=lambda r: (-r.sharpness, r.id))
    kept = pool[: max(0, keep)]
    dropped += [(it, "less sharp than the kept images") for it in pool[keep:]]
    return kept, dropped
