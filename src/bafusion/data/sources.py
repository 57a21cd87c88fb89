"""Where foregrounds (image + alpha matte) and sharp backgrounds come from.

- ``builtin``: photos that ship inside scikit-image (no network), each foreground given a
  procedural soft object matte (:mod:`bafusion.data.mattes`). Deterministic by seed.
- ``dir``: an alphamatting.com-style folder (``input/GTxx.png`` + ``gt/GTxx.png``) and a
  folder of background photos (for example COCO-2017 train images).

A source yields :class:`Foreground` and :class:`Background` records whose pixels load
lazily, so listing a paper-scale folder costs nothing.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bafusion.data.mattes import check_matte_range, object_matte
from bafusion.errors import InputFileError, UserError
from bafusion.io import list_images, read_image, read_matte, resize, scaled_size
from bafusion.workspace import resolve

#: Colour photos with a clear subject: builtin foregrounds.
BUILTIN_FOREGROUNDS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
)
#: Textured photos: builtin backgrounds.
BUILTIN_BACKGROUNDS: tuple[str, ...] = (
    "brick",
    "grass",
    "gravel",
    "camera",
    "coins",
    "moon",
    "page",
    "text",
    "clock",
    "cell",
)
#: Every name the builtin source takes: the images that ship inside scikit-image (read
#: offline, without pooch), ``motorcycle`` being the left view of ``stereo_motorcycle``. Other
#: callables of ``skimage.data`` are no such image: a file name
#: (``lbp_frontal_face_cascade_filename``), a download (``download_all``, and ``brain``,
#: ``eagle``... which pooch would fetch over the network), a random image (``binary_blobs``)
#: or a stack (``lfw_subset``, ``stereo_motorcycle``).
BUILTIN_IMAGES: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "motorcycle", "page", "retina", "rocket", "shepp_logan_phantom", "text",
)  # fmt: skip
#: Builtin photos are first brought to at most this long side (retina is 1411 px).
BUILTIN_MAX_SIDE = 512
#: The builtin foregrounds' sizes (height, width) as :func:`_builtin_image` gives them: the
#: parameter check compares them, times ``prepare.scale``, with ``patch`` without loading them.
BUILTIN_FOREGROUND_SIZES: dict[str, tuple[int, int]] = {
    "astronaut": (512, 512),
    "chelsea": (300, 451),
    "coffee": (341, 512),
    "rocket": (342, 512),
    "motorcycle": (345, 512),
    "immunohistochemistry": (512, 512),
    "hubble_deep_field": (446, 512),
    "retina": (512, 512),
}


@dataclass(frozen=True)
class Foreground:
    id: str
    origin: str
    load_image: Callable[[], np.ndarray] = field(repr=False, compare=False)
    load_matte: Callable[[], np.ndarray] = field(repr=False, compare=False)
    #: The matte's file, where it has one (named by the checks of the matte).
    matte_origin: str | None = None
    #: The image and matte files as read (where they have files): a size error reads their
    #: headers to say where an EXIF orientation turned one.
    files: tuple[Path, Path] | None = None


@dataclass(frozen=True)
class Background:
    id: str
    origin: str
    load_image: Callable[[], np.ndarray] = field(repr=False, compare=False)
    path: Path | None = None


def stable_seed(seed: int, name: str) -> int:
    """A per-item seed that does not depend on list order or Python's hash randomisation."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**32)


def _unknown_builtin(name: object) -> str:
    """The message for a name that is not one of :data:`BUILTIN_IMAGES`."""
    return (f"unknown builtin image {name!r} (the builtin source takes the images that ship with scikit-image: "
            f"{', '.join(BUILTIN_IMAGES)})")


def _builtin_image(name: str) -> np.ndarray:
    from skimage import data as skdata

    if name not in BUILTIN_IMAGES:
        raise UserError(_unknown_builtin(name))
    if name == "motorcycle":
        img = skdata.stereo_motorcycle()[0]
    else:
        fn = getattr(skdata, name)
        try:
            img = fn()
        except ModuleNotFoundError as e:  # images that need pooch + network
            raise UserError(f"builtin image {name!r} is not bundled with scikit-image offline: {e}") from e
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        img = np.clip(np.round(img.astype(np.float64) * (255.0 if img.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    h, w = img.shape[:2]
    if max(h, w) > BUILTIN_MAX_SIDE:
        img = resize(img, scaled_size((h, w), BUILTIN_MAX_SIDE / max(h, w)))
    return np.ascontiguousarray(img)


def builtin_foregrounds(names: Sequence[str], seed: int) -> list[Foreground]:
    out = []
    for name in names:
        def load_image(n: str = name) -> np.ndarray:
            return _builtin_image(n)

        def load_matte(n: str = name) -> np.ndarray:
            h, w = _builtin_image(n).shape[:2]
            return object_matte((h, w), stable_seed(seed, "matte:" + n))

        out.append(Foreground(id=name, origin=f"skimage.data.{name}", load_image=load_image, load_matte=load_matte))
    return out


def builtin_backgrounds(names: Sequence[str]) -> list[Background]:
    return [
        Background(id=n, origin=f"skimage.data.{n}", load_image=lambda n=n: _builtin_image(n)) for n in names
    ]


def _by_stem(files: Sequence[Path], what: str) -> dict[str, Path]:
    """``files`` by file name without extension; two files with one stem are an error naming both."""
    out: dict[str, Path] = {}
    for p in files:
        if p.stem in out:
            raise InputFileError(
                p, f"{what} id {p.stem!r} is not unique: {out[p.stem]} has the same name with another extension"
            )
        out[p.stem] = p
    return out


def _shown_as(root: Path, shown: str | Path | None) -> Callable[[Path], str]:
    """How a file under ``root`` is named in a manifest: under ``shown`` (the folder as the
    user gave it, ``root`` being where it is read from), else as it is."""
    if shown is None:
        return str
    return lambda p: str(Path(shown) / p.relative_to(root))


def _case_clause(stem: str, others: dict[str, Path], own: dict[str, Path]) -> str:
    """``"; <file> differs in case only: names must match exactly"`` where ``others`` (the
    other folder's files by id) holds a file whose id is ``stem`` in other letter case and
    that pairs with no file of ``own`` (ids are compared exactly: ``GT01.png`` and
    ``gt01.png`` are no pair); else ``""``."""
    near = [p for s, p in sorted(others.items()) if s.casefold() == stem.casefold() and s not in own]
    return f"; {near[0]} differs in case only: names must match exactly" if near else ""


def dir_foregrounds(root: str | Path, shown: str | Path | None = None) -> list[Foreground]:
    """``root/input/<id>.<ext>`` with ``root/gt/<id>.<ext>``. A foreground without a matte
    (or a matte without a foreground), or two files with one id, is an error naming the file.
    The origins name the files under ``shown`` when given (the folder as the user wrote it,
    where ``root`` is where it is read from)."""
    root = Path(root)
    origin = _shown_as(root, shown)
    inp, gt = root / "input", root / "gt"
    for d in (root, inp, gt):
        if not d.is_dir():
            raise InputFileError(d, "folder not found (expected an alphamatting-style folder with input/ and gt/)")
    images = _by_stem(list_images(inp), "foreground")
    mattes = _by_stem(list_images(gt), "matte")
    if not images:
        raise InputFileError(inp, "no foreground images found")
    for stem, p in sorted(images.items()):
        if stem not in mattes:
            raise InputFileError(p, f"foreground has no matte (expected {gt / (stem + '.png')}"
                                    f"{_case_clause(stem, mattes, images)})")
    for stem, p in sorted(mattes.items()):
        if stem not in images:
            raise InputFileError(p, f"matte has no foreground image in {inp}{_case_clause(stem, images, mattes)}")
    return [
        Foreground(
            id=stem,
            origin=origin(images[stem]),
            load_image=lambda p=images[stem]: read_image(p, rgb=True),
            load_matte=lambda p=mattes[stem]: read_matte(p),
            matte_origin=origin(mattes[stem]),
            files=(images[stem], mattes[stem]),
        )
        for stem in sorted(images)
    ]


def dir_backgrounds(folder: str | Path, shown: str | Path | None = None) -> list[Background]:
    """The images of ``folder``; their origins name them under ``shown`` when given (the folder
    as the user wrote it, where ``folder`` is where it is read from)."""
    d = Path(folder)
    origin = _shown_as(d, shown)
    if not d.is_dir():
        raise InputFileError(d, "background folder not found")
    files = list_images(d)
    below = _subfolder_images(d)
    where = f"its subfolders ({', '.join(sorted(below)[:5])}{', ...' if len(below) > 5 else ''})"
    if not files:
        more = f"; {where} are not searched: {sum(below.values())} images there" if below else ""
        raise InputFileError(d, f"background folder holds no images (.png, .jpg, ...){more}")
    if below:
        n = sum(below.values())
        warnings.warn(f"{shown if shown is not None else d}: {n} image{'s' if n != 1 else ''} in {where} "
                      f"{'are' if n != 1 else 'is'} not used: the folder is not searched into subfolders", stacklevel=2)
    return [Background(id=p.stem, origin=origin(p), load_image=lambda p=p: read_image(p, rgb=True), path=p)
            for p in files]


def _subfolder_images(d: Path) -> dict[str, int]:
    """How many images (:func:`~bafusion.io.list_images`) each subfolder of ``d`` holds at its
    top, for those that hold some (one level down: what a folder of category folders holds)."""
    out: dict[str, int] = {}
    with os.scandir(d) as entries:  # the file type from the listing: no stat per file of a large folder
        subs = [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]
    for name in subs:
        try:
            n = len(list_images(d / name))
        except OSError:
            continue
        if n:
            out[name] = n
    return out


def check_foreground(fg: Foreground) -> tuple[np.ndarray, np.ndarray]:
    """Load a foreground and its matte; a matte of another size, or one on the 0..1 scale
    (:func:`~bafusion.data.mattes.check_matte_range`), is an error naming the file."""
    img = fg.load_image()
    matte = fg.load_matte()
    check_matte_range(matte, fg.matte_origin or fg.origin)
    if matte.shape[:2] != img.shape[:2]:
        raise InputFileError(
            fg.origin,
            f"matte size {matte.shape[1]}x{matte.shape[0]} differs from the image size "
            f"{img.shape[1]}x{img.shape[0]} (matte of foreground {fg.id!r}){_turned(fg)}",
        )
    return img, matte


def _turned(fg: Foreground) -> str:
    """What a size error adds where an EXIF orientation swapped the width and height of the
    image or matte file of ``fg`` (:func:`~bafusion.io.orientation_clause`), ``""`` otherwise
    or where a header cannot be read (both files were just read)."""
    from bafusion.io import image_info, orientation_clause

    if fg.files is None:
        return ""
    try:
        return "".join(orientation_clause(image_info(p)) for p in fg.files)
    except (InputFileError, OSError):
        return ""


@dataclass(frozen=True)
class Selection:
    """The foregrounds and backgrounds the pipeline uses, split into training and held-out."""

    train_foregrounds: list[Foreground]
    train_backgrounds: list[Background]
    test_foregrounds: list[Foreground]
    test_backgrounds: list[Background]


def _split(items: list, holdout: int, limit: int, seed: int, what: str, where: str = "") -> tuple[list, list]:
    if holdout < 0 or limit < 0:
        raise UserError(f"data.holdout_{what}, data.{what}: must be >= 0, got {holdout}, {limit}")
    if holdout >= len(items) and holdout > 0:
        raise UserError(f"data.holdout_{what}: cannot hold out {holdout} of the {len(items)} {what}{where} "
                        "(nothing would be left to train on)")
    order = np.random.default_rng(stable_seed(seed, "holdout:" + what)).permutation(len(items))
    held = sorted(int(i) for i in order[:holdout])
    rest = [x for i, x in enumerate(items) if i not in set(held)]
    test = [items[i] for i in held]
    if limit:
        rest = rest[:limit]
    return rest, test


def _builtin_known(name: str) -> bool:
    """Whether ``name`` is an image the builtin source takes (:data:`BUILTIN_IMAGES`)."""
    return name in BUILTIN_IMAGES


def check_selection(data_cfg: dict) -> None:
    """The rules of ``params.yaml``'s ``data`` section that the values alone decide (no image
    read): the two hold-out counts both 0 or both > 0, builtin names that scikit-image has, each
    given once, and a hold-out that leaves builtin images to train on. :func:`select` runs it first; the
    parameter check (:func:`bafusion.cli.params_check.check_params`) runs it before any job.

    Raises
    ------
    UserError
        One line naming the key (``data.holdout_foregrounds``, ``data.builtin.foregrounds``).
    """
    holdout = {w: int(data_cfg.get(f"holdout_{w}", 0) or 0) for w in ("foregrounds", "backgrounds")}
    if (holdout["foregrounds"] > 0) != (holdout["backgrounds"] > 0):
        raise UserError("data.holdout_foregrounds and data.holdout_backgrounds must both be 0 or both be > 0, "
                        f"got {holdout['foregrounds']} and {holdout['backgrounds']}")
    if data_cfg.get("source", "builtin") != "builtin":
        return
    b = data_cfg.get("builtin", {}) or {}
    for what, default in (("foregrounds", BUILTIN_FOREGROUNDS), ("backgrounds", BUILTIN_BACKGROUNDS)):
        names = list(b.get(what) or default)
        unknown = [n for n in names if not _builtin_known(str(n))]
        if unknown:
            raise UserError(f"data.builtin.{what}: {_unknown_builtin(unknown[0])}")
        repeated = list(dict.fromkeys(str(n) for i, n in enumerate(names) if n in names[:i]))
        if repeated:  # one image in both splits (a held-out test image trained on), or weighed twice
            raise UserError(f"data.builtin.{what}: {', '.join(repeated)} given more than once (the copies could land "
                            "in the training and the held-out split both; each image is one item)")
        if holdout[what] >= len(names) and holdout[what] > 0:
            listed = f"data.builtin.{what}" if b.get(what) else f"the builtin set: data.builtin.{what} is empty"
            raise UserError(f"data.holdout_{what}: cannot hold out {holdout[what]} of {len(names)} {what} ({listed}): "
                            "nothing would be left to train on")


def builtin_train_foreground_sizes(data_cfg: dict, seed: int) -> dict[str, tuple[int, int]]:
    """The sizes (height, width, before ``prepare.scale``) of the builtin foregrounds that
    :func:`select` puts in the training split, for those of :data:`BUILTIN_FOREGROUND_SIZES`
    (no image loaded); empty for another source."""
    if data_cfg.get("source", "builtin") != "builtin":
        return {}
    names = list((data_cfg.get("builtin", {}) or {}).get("foregrounds") or BUILTIN_FOREGROUNDS)
    train, _ = _split(names, int(data_cfg.get("holdout_foregrounds", 0) or 0),
                      int(data_cfg.get("foregrounds", 0) or 0), seed, "foregrounds")
    return {n: BUILTIN_FOREGROUND_SIZES[n] for n in train if n in BUILTIN_FOREGROUND_SIZES}


def select(data_cfg: dict, seed: int) -> Selection:
    """Resolve ``params.yaml``'s ``data`` section into the items to use."""
    check_selection(data_cfg)
    source = data_cfg.get("source", "builtin")
    where = {"foregrounds": "", "backgrounds": ""}
    if source == "builtin":
        b = data_cfg.get("builtin", {}) or {}
        fgs = builtin_foregrounds(b.get("foregrounds") or BUILTIN_FOREGROUNDS, seed)
        bgs = builtin_backgrounds(b.get("backgrounds") or BUILTIN_BACKGROUNDS)
    elif source == "dir":
        d = data_cfg.get("dir", {}) or {}
        if not d.get("alphamatting") or not d.get("backgrounds"):
            raise UserError("data.source 'dir' needs data.dir.alphamatting and data.dir.backgrounds")
        # read from where the paths point (../shared/... from a DVC experiment's copy of the
        # project: the workspace's); the manifest names the files as the paths are written
        where_is = {key: resolve(d[key]) for key in ("alphamatting", "backgrounds")}
        for key in ("alphamatting", "backgrounds"):
            if not where_is[key].is_dir():
                what = ("folder not found (expected an alphamatting-style folder with input/ and gt/)"
                        if key == "alphamatting" else "background folder not found")
                shown = d[key] if Path(d[key]) == where_is[key] else f"{d[key]} (read from {where_is[key]})"
                raise UserError(f"data.dir.{key} {shown}: {what}")
        fgs = dir_foregrounds(where_is["alphamatting"], shown=d["alphamatting"])
        bgs = dir_backgrounds(where_is["backgrounds"], shown=d["backgrounds"])
        where = {"foregrounds": f" in {d['alphamatting']}", "backgrounds": f" in {d['backgrounds']}"}
    else:
        raise UserError(f"unknown data.source {source!r} (expected 'builtin' or 'dir')")
    train_fg, test_fg = _split(
        fgs, int(data_cfg.get("holdout_foregrounds", 0)), int(data_cfg.get("foregrounds", 0)), seed, "foregrounds",
        where["foregrounds"]
    )
    train_bg, test_bg = _split(
        bgs, int(data_cfg.get("holdout_backgrounds", 0)), int(data_cfg.get("backgrounds", 0)), seed, "backgrounds",
        where["backgrounds"]
    )
    return Selection(train_fg, train_bg, test_fg, test_bg)
