"""Comparison figures of the evaluation (matplotlib's Agg canvas, no display needed; the
caller's backend is left as it is).

* :func:`figure_comparison`: the paper's Fig. 4: the two sources and every method's fused image
  side by side (top row), with a square region framed in red and enlarged below (bottom row).
* :func:`figure_differences`: ``alpha * |B - F|`` (alpha = 10, clipped to 255, on the gray
  images; :func:`bafusion.fusion.maps.difference_map`) for every method in one figure: where F
  takes B's pixels it is black, so a good fusion shows only A's focused region; under it
  ``alpha * |A - F|``, black where F takes A's pixels (the difference to each source).
* :func:`save_dataset_figures`: both, plus each method's difference maps as gray PNGs.

The crop is chosen where the methods disagree most (:func:`choose_crop`) unless given.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["choose_crop", "figure_comparison", "figure_differences", "save_dataset_figures"]


def choose_crop(images: Mapping[str, np.ndarray], side: int | None = None) -> tuple[int, int, int]:
    """A square ``(top, left, side)`` where the fused images differ most from each other: the
    window (side: a quarter of the shorter image side, at least 8 pixels, at most the image)
    with the largest mean of the per-pixel standard deviation across the images (gray).
    Deterministic; the top-left-most window wins ties."""
    from bafusion.io import gray_float

    def grays():  # one image at a time: the stack of a camera-size pair's six results took 1.2 GiB
        return (gray_float(im, rounded=True) for im in images.values())

    n = len(images)
    spread = None
    if n > 1:  # numpy's two-pass std over a stack (axis 0: summed image after image), one image at a time
        mean = None
        for g in grays():
            mean = g.copy() if mean is None else np.add(mean, g, out=mean)
        mean /= n
        for g in grays():
            g -= mean
            g *= g
            spread = g if spread is None else np.add(spread, g, out=spread)
        del mean
        spread /= n
        np.sqrt(spread, out=spread)
    h, w = next(iter(images.values())).shape[:2]
    s = side or max(8, min(h, w) // 4)
    s = min(s, h, w)
    if spread is None:
        spread = np.zeros((h, w))
    # sums over every s x s window by its top-left corner, from the integral image
    ii = np.zeros((h + 1, w + 1))
    ii[1:, 1:] = spread.cumsum(0).cumsum(1)
    valid = ii[s:, s:] - ii[:-s, s:] - ii[s:, :-s] + ii[:-s, :-s]
    r, c = np.unravel_index(int(np.argmax(valid)), valid.shape)
    return int(r), int(c), int(s)


def _show(ax, img: np.ndarray, box: tuple[float, float]) -> None:
    """Draw a uint8 gray or RGB ``img`` into ``ax``, whose panel is at most ``box`` (height,
    width) screen pixels. An image at least twice :data:`bafusion.fusion.maps.FIG3_OVERSAMPLE`
    times its panel both ways is area-averaged by a whole factor to at least that many times
    the panel (:func:`bafusion.fusion.maps.area_reduce`; a gray map in float, so a lone pixel
    keeps its share of the block, not rounded to a whole level) and drawn over the full
    image's extent, as Fig. 3's maps: handed whole to matplotlib, each camera-size panel was
    resampled from full-size RGBA copies (for a 12-megapixel pair of six methods the
    difference figure peaked at +827 MiB, Fig. 4 with its crop given at +914 MiB); the figure
    anti-aliases the rest (:func:`_save_fig`)."""
    from bafusion.fusion.maps import area_reduce, reduce_factor

    h, w = img.shape[:2]
    factor = reduce_factor((h, w), box)
    kw: dict = {"interpolation": "nearest"}
    if factor > 1:  # the axes, the layout and the scale said are those of the full-size image
        img = area_reduce(img, factor, np.float32 if img.ndim == 2 else np.uint8)
        kw["extent"] = (-0.5, w - 0.5, h - 0.5, -0.5)
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, **kw)
    else:
        ax.imshow(img, **kw)
    ax.set_xticks([])
    ax.set_yticks([])


def _fit_title(ax, name: str, width: float, suffix: str = "", fontsize: float = 9) -> None:
    """Set ``name + suffix`` as the title of ``ax``, wrapped onto lines at most ``width`` display
    pixels wide: ``name`` at spaces and after ``-``, ``_``, ``.`` (a word wider than that
    anywhere), ``suffix`` kept whole. A long method name (a reference folder's) ran into its
    neighbour's title or past the figure's edge."""
    renderer = ax.figure.canvas.get_renderer()
    text = name + suffix
    title = ax.set_title(text, fontsize=fontsize)

    def fits(line: str) -> bool:
        title.set_text(line)
        return title.get_window_extent(renderer).width <= width

    if fits(text):
        return
    lines: list[str] = []
    line = ""
    for piece in [*re.findall(r"[^\s_.-]*[_.-]*\s*", name), suffix]:
        if not piece:
            continue
        if line and not fits((line + piece).rstrip()):
            lines.append(line.rstrip())
            line = ""
        line += piece
        while len(line.rstrip()) > 1 and not fits(line.rstrip()):  # one word wider than the panel
            k = len(line.rstrip()) - 1
            while k > 1 and not fits(line[:k]):
                k -= 1
            lines.append(line[:k])
            line = line[k:]
    lines.append(line.rstrip())
    title.set_text("\n".join(x for x in lines if x))


def _title_overlap(fig) -> float:
    """How many display pixels high the largest overlap of an axes' title with another shown
    axes of ``fig`` is (0.0: none), as laid out now."""
    renderer = fig.canvas.get_renderer()
    shown = [ax for ax in fig.axes if ax.axison]
    for ax in shown:
        ax.apply_aspect()
    worst = 0.0
    for ax in shown:
        if not ax.title.get_text():
            continue
        ax.get_tightbbox(renderer)  # places the title as drawn
        t = ax.title.get_window_extent(renderer)
        for other in shown:
            o = other.bbox
            if other is not ax and min(t.x1, o.x1) > max(t.x0, o.x0):
                worst = max(worst, min(t.y1, o.y1) - max(t.y0, o.y0))
    return max(worst, 0.0)


#: Passes of ``tight_layout`` :func:`_tight_layout` makes at most.
LAYOUT_PASSES = 10


def _tight_layout(fig) -> None:
    """``fig.tight_layout()``, again while an axes' title overlaps another axes (at most
    :data:`LAYOUT_PASSES` passes). One pass measures each image's axes in the box it has before
    the pass; a box it then gets of another shape shrinks the image to its aspect and moves its
    title: in the difference figure of one or a few columns of wide images (a 3200x2400 pair
    in one column; a 4160x520 strip in two or three), the second row's titles ("M: |A - F|")
    lay behind the first row's images, up to their full height. A figure whose titles are
    clear after one pass is laid out as before. A pass after the figure's first that cannot fit
    it keeps the layout it has, without matplotlib's warning (the first pass's is kept)."""
    import warnings

    for k in range(LAYOUT_PASSES):
        if k and _title_overlap(fig) <= 0.0:
            return
        with warnings.catch_warnings():
            if getattr(fig, "_bafusion_laid_out", False):  # a pass that cannot fit leaves the last layout
                warnings.filterwarnings("ignore", message="Tight layout not applied", category=UserWarning)
            fig.tight_layout()
        fig._bafusion_laid_out = True


def _save_fig(fig, path: str | os.PathLike[str], full_size: str = "") -> None:
    """Draw the images to scale (anti-aliased where shrunk, :func:`draw_images_to_scale`; after
    :func:`_tight_layout`; ``full_size``: where the images are at full size, named where thin
    details may not be visible) and save the figure."""
    from bafusion.fusion.maps import draw_images_to_scale, save_figure

    draw_images_to_scale(fig, relayout=lambda: _tight_layout(fig), full_size=full_size)
    save_figure(fig, path)


def figure_comparison(
    a: np.ndarray,
    b: np.ndarray,
    fused: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    crop: tuple[int, int, int] | None = None,
    title: str = "",
    max_columns: int = 6,
    full_size: str = "",
) -> tuple[int, int, int]:
    """Fig. 4: sources and each method's result, each above its framed crop enlarged; at most
    ``max_columns`` images per row. Returns the crop used ``(top, left, side)``. ``full_size``:
    where the images are at full size, named under the figure where they are shrunk so much
    that thin details may not be visible."""
    from matplotlib.patches import Rectangle

    from bafusion.fusion.maps import _figure, displayable

    h, w = a.shape[:2]
    if crop is None:
        crop = choose_crop(fused) if fused else (0, 0, min(h, w))
    top, left, side = crop
    if top + side > h or left + side > w:
        raise ValueError(f"crop {crop} does not fit in the {w}x{h} (WxH) images")
    panels = [("source A", a), ("source B", b), *fused.items()]
    n = len(panels)
    ncols = min(n, max_columns)
    groups = math.ceil(n / ncols)
    cw = 2.6
    ratio = h / max(w, 1)
    fig = _figure(figsize=(ncols * cw, groups * (cw * ratio + cw + 0.6) + 0.4), dpi=100)
    axes = fig.subplots(2 * groups, ncols, squeeze=False, gridspec_kw={"height_ratios": [ratio, 1.0] * groups})
    for ax in axes.ravel():
        ax.axis("off")
    for k, (name, img) in enumerate(panels):
        img = np.asarray(img)
        g, j = divmod(k, ncols)
        full, zoom = axes[2 * g, j], axes[2 * g + 1, j]
        full.axis("on")
        zoom.axis("on")
        _show(full, img, (cw * ratio * fig.dpi, cw * fig.dpi))
        _fit_title(full, displayable(name), 0.92 * cw * fig.dpi)
        full.add_patch(Rectangle((left - 0.5, top - 0.5), side, side, fill=False, edgecolor="red", linewidth=1.2))
        _show(zoom, img[top : top + side, left : left + side], (cw * fig.dpi, cw * fig.dpi))
        for sp in zoom.spines.values():
            sp.set_edgecolor("red")
    if title:
        fig.suptitle(displayable(title), fontsize=10)
    _tight_layout(fig)
    _save_fig(fig, path, full_size)
    return crop


def figure_differences(
    b: np.ndarray,
    fused: Mapping[str, np.ndarray],
    path: str | os.PathLike[str],
    alpha: float = 10.0,
    title: str = "",
    max_columns: int = 6,
    a: np.ndarray | None = None,
    full_size: str = "",
) -> dict[str, np.ndarray]:
    """``alpha * |B - F|`` maps (gray), one per method; with ``a``, under each row of them the
    same methods' ``alpha * |A - F|`` (the difference to each source, as the paper's difference
    figure: where F took A's pixels the A row is black, where it took B's the B row). Returns
    the ``|B - F|`` maps (uint8). ``full_size``: where the maps are at full size, named under
    the figure where they are shrunk so much that thin details may not be visible."""
    from bafusion.fusion.maps import _figure, difference_map, displayable

    maps = {m: difference_map(b, f, alpha) for m, f in fused.items()}
    rows_of = [("B", maps)]
    if a is not None:
        rows_of.append(("A", {m: difference_map(a, f, alpha) for m, f in fused.items()}))
    h, w = b.shape[:2]
    n = max(len(maps), 1)
    ncols = min(n, max_columns)
    groups = math.ceil(n / ncols)
    nrows = groups * len(rows_of)
    cw = 2.6
    fig = _figure(figsize=(ncols * cw, nrows * (cw * h / max(w, 1) + 0.5) + 0.4), dpi=100)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, (src, row_maps) in enumerate(rows_of):
        for k, (m, d) in enumerate(row_maps.items()):
            g, j = divmod(k, ncols)
            ax = axes[g * len(rows_of) + r, j]
            ax.axis("on")
            _show(ax, d, (cw * h / max(w, 1) * fig.dpi, cw * fig.dpi))
            _fit_title(ax, displayable(m), 0.92 * cw * fig.dpi, suffix="" if a is None else f": |{src} - F|")
    if title:
        fig.suptitle(displayable(title), fontsize=10)
    _tight_layout(fig)
    _save_fig(fig, path, full_size)
    return maps


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _file_parts(names: list[str]) -> dict[str, str]:
    """Each method name's part of a file name: :func:`_safe` of it, unless another name gives
    the same part (``My GFF`` and ``My_GFF``; or ``Ours`` and ``ours``, one file on a
    case-insensitive disk): then each of those gets ``-`` and the first 8 hex digits of the
    SHA-256 of its name appended, so no method's files overwrite another's. The name is hashed
    as UTF-8 with lone surrogates (``os.fsdecode``'s stand-ins for undecodable bytes) kept as
    their own code units, so such names hash too, each to its own digits."""
    import hashlib
    from collections import Counter

    safe = {n: _safe(n) for n in names}
    shared = Counter(v.casefold() for v in safe.values())
    def digits(n: str) -> str:
        return hashlib.sha256(n.encode("utf-8", "surrogatepass")).hexdigest()[:8]

    parts = {n: v if shared[v.casefold()] == 1 else f"{v}-{digits(n)}" for n, v in safe.items()}
    if len({v.casefold() for v in parts.values()}) < len(parts):  # a name spelt like another's suffixed one
        raise ValueError(f"methods {sorted(names)} give clashing figure file names {sorted(parts.values())}")
    return parts


def save_dataset_figures(
    folder: str | os.PathLike[str],
    pair: str,
    a: np.ndarray,
    b: np.ndarray,
    fused: Mapping[str, np.ndarray],
    alpha: float = 10.0,
    crop: tuple[int, int, int] | None = None,
    full_size: str = "",
) -> list[Path]:
    """Write ``fig4-<pair>.png``, ``diff-<pair>.png`` (both sources' rows), ``diff-<pair>-<method>.png``
    (gray ``alpha * |B - F|``) and ``diffA-<pair>-<method>.png`` (gray ``alpha * |A - F|``) into
    ``folder``; ``<method>`` is the name with characters other than letters, digits, ``_.-``
    replaced by ``_``, and where two methods would share a file name each gets the start of a
    hash of its name appended (:func:`_file_parts`). ``full_size``: where Fig. 4's images (the
    sources and the results) are at full size, named under it where they are shrunk so much
    that thin details may not be visible (the difference figure names the maps written beside
    it). Returns the paths written."""
    from bafusion.fusion.maps import difference_map
    from bafusion.io import write_image

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    if crop is None:
        crop = choose_crop(fused) if fused else (0, 0, min(a.shape[:2]))
    top, left, side = crop
    figure_comparison(a, b, fused, d / f"fig4-{_safe(pair)}.png", crop,
                      title=f"{pair}: enlarged {side}x{side} region at row {top}, column {left}", full_size=full_size)
    written = [d / f"fig4-{_safe(pair)}.png"]
    part = _file_parts(list(fused))
    maps = figure_differences(b, fused, d / f"diff-{_safe(pair)}.png", alpha,
                              title=f"{pair}: {alpha:g} x |B - F| and {alpha:g} x |A - F|", a=a,
                              full_size=f"the maps at full size are diff-{_safe(pair)}-<method>.png and "
                                        f"diffA-{_safe(pair)}-<method>.png beside this figure")
    written.append(d / f"diff-{_safe(pair)}.png")
    for m, dm in maps.items():
        p = d / f"diff-{_safe(pair)}-{part[m]}.png"
        write_image(p, dm)  # zlib level bafusion.io.PNG_COMPRESS_LEVEL, as every 8-bit PNG output
        written.append(p)
    for m, f in fused.items():
        p = d / f"diffA-{_safe(pair)}-{part[m]}.png"
        write_image(p, difference_map(a, f, alpha))
        written.append(p)
    return written
