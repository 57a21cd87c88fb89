"""Figures of a fusion (matplotlib's Agg canvas, no display needed; the caller's backend is left as it is).

* :func:`figure_maps`: the paper's Fig. 3, one PNG with the score map after the initial net,
  after the boundary refinement, the decision map and the fused image.
* :func:`difference_map`: the paper's Fig. 5, ``alpha * |B - F|`` (alpha = 10, clipped to 255) on
  the gray images, saved in gray and in a pseudo-colour map.
* :func:`save_maps`: all of these plus the raw maps as PNGs into one folder.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bafusion.atomic import atomic_file, displayable
from bafusion.io import image_bytes

if TYPE_CHECKING:
    from bafusion.fusion.rule import FusionResult

#: Matplotlib colour map of the pseudo-colour difference map by default (``fuse.diff_cmap``):
#: magma, whose lightness grows from black to pale yellow, so the map reads in gray print and
#: by colour-blind readers; the paper preset sets the paper's ``jet``.
DIFF_CMAP = "magma"


def _figure(**kwargs):
    """A matplotlib ``Figure(**kwargs)`` on an Agg canvas of its own: not through pyplot, so
    neither the caller's backend (``matplotlib.use("Agg", force=True)`` switched a notebook's
    for the rest of its session) nor pyplot's list of open figures is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


#: The maps are converted this many pixels at a time (:func:`map_to_u8`): converted whole in
#: float64, a 12-megapixel map took four 92-MiB temporaries (a peak of 275 MiB more).
CHUNK_PIXELS = 1 << 18


def map_to_u8(score: np.ndarray) -> np.ndarray:
    """A score map in [0, 1] (NaN as 0) as uint8 0..255 (in float64, :data:`CHUNK_PIXELS` at a time)."""
    score = np.asarray(score)
    flat = score.reshape(-1)
    out = np.empty(flat.shape, dtype=np.uint8)
    for i in range(0, flat.size, CHUNK_PIXELS):
        s = np.nan_to_num(flat[i:i + CHUNK_PIXELS].astype(np.float64), nan=0.0)
        out[i:i + CHUNK_PIXELS] = np.clip(np.round(s * 255.0), 0, 255)
    return out.reshape(score.shape)


def difference_map(b: np.ndarray, f: np.ndarray, alpha: float = 10.0) -> np.ndarray:
    """Fig. 5: ``alpha * |B - F|`` on the gray (MATLAB rgb2gray) images, clipped to 0..255, uint8.

    Through a table of the 256 differences a gray level can make (the same float64 product,
    rounded and clipped, for each): in float64 over the whole image it took six full-size
    temporaries (a peak of 370 MiB more for 12 megapixels)."""
    from bafusion.io import to_gray_u8

    table = np.clip(np.round(alpha * np.arange(256, dtype=np.float64)), 0, 255).astype(np.uint8)
    diff = to_gray_u8(b).astype(np.int16)
    diff -= to_gray_u8(f)
    np.abs(diff, out=diff)
    return table[diff]


def check_alpha(alpha: float, option: str = "fuse.alpha") -> None:
    """Refuse a difference-map gain ``alpha`` (:func:`difference_map`) outside more than 0 and
    at most the schema's maximum of ``fuse.alpha``, as ``--alpha`` is refused.

    Parameters
    ----------
    alpha : float
        The gain of ``alpha * |B - F|``.
    option : str
        Where it was given (``--alpha``, ``alpha``): starts the message.

    Raises
    ------
    bafusion.errors.UserError
        Naming ``option``, the value and the range (0 wrote all-black maps, NaN NaN maps, a
        gain above the maximum only white ones).
    """
    import numbers

    from bafusion.errors import UserError
    from bafusion.schema import maximum

    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise UserError(f"{option} {alpha!r}: the difference-map gain alpha*|B-F| must be a number more than 0 "
                        f"and at most {maximum('fuse.alpha'):g} (the paper's is 10)")
    if not alpha > 0:  # 0 made all-black difference maps; NaN fails too
        raise UserError(f"{option} {alpha:g}: the difference-map gain alpha*|B-F| must be more than 0 "
                        "(0 would write all black difference maps; the paper's is 10)")
    if alpha > maximum("fuse.alpha"):  # 1e308 overflowed (numpy RuntimeWarning) to the map of 255
        raise UserError(f"{option} {alpha:g}: the difference-map gain alpha*|B-F| is at most "
                        f"{maximum('fuse.alpha'):g}: the maps are 8-bit, so from {maximum('fuse.alpha'):g} up "
                        "every pixel that differs by one gray level is white already (the paper's is 10)")


def pseudo_colour(gray: np.ndarray, cmap: str = DIFF_CMAP) -> np.ndarray:
    """A uint8 gray map through a matplotlib colour map, as uint8 RGB.

    Raises
    ------
    bafusion.errors.UserError
        ``cmap`` is no matplotlib colour map (the message names a few that are).
    """
    import matplotlib

    check_colour_map(cmap, "cmap")
    gray = np.asarray(gray)
    # uint8: through a table of the 256 levels (the same values): the whole map as float64 RGBA
    # and its products peaked at 918 MiB more for 12 megapixels
    levels = np.arange(256, dtype=np.float64) if gray.dtype == np.uint8 else gray.astype(np.float64)
    rgba = matplotlib.colormaps[cmap](levels / 255.0)
    table = np.round(rgba[..., :3] * 255.0).astype(np.uint8)
    return table[gray] if gray.dtype == np.uint8 else table


def check_colour_map(name: str, option: str = "fuse.diff_cmap") -> None:
    """Refuse ``name`` unless it is a matplotlib colour map.

    Parameters
    ----------
    name : str
        The colour map's name (``magma``, ``jet``, ...).
    option : str
        Where it was given (``--diff-cmap``, ``fuse.diff_cmap``): starts the message.

    Raises
    ------
    bafusion.errors.UserError
        Naming ``option``, the value and a few valid names.
    """
    from bafusion.errors import UserError
    from bafusion.schema import colour_map_problem

    problem = colour_map_problem(name)
    if problem:
        raise UserError(f"{option}: {problem}")


#: The titles of Fig. 3's panels, in order (:func:`figure_maps`).
FIG3_PANELS = ("score map (initial net)", "score map (boundary refined)", "decision map (white = A)", "fused image")
#: The titles of the panels Fig. 3 adds for a pair with a truth (a test-set composite): the true
#: decision map beside the decision map, the all-in-focus truth beside the fused image.
FIG3_TRUTH_PANELS = ("true decision map", "all-in-focus truth")
#: The label of the score panels' colour bars: a score is the nets' probability that A is the
#: focused source at the pixel (1, white: A; 0, black: B).
SCORE_LABEL = "P(A in focus)"
#: Inputs whose long side exceeds this many pixels get Fig. 3 as 2 x 2 larger panels.
FIG3_GRID_ABOVE = 1000
#: Fig. 3's panels fit a box this many times as high as it is wide (a portrait 3:4 pair fills
#: the width; a taller one is narrower), so the figure's size is bounded for any shape of pair.
FIG3_PANEL_HEIGHT = 1.5


#: Fig. 3's pixels per inch.
FIG3_DPI = 100
#: A map at least twice this many times as large as its Fig. 3 panel (in pixels, both ways) is
#: drawn area-averaged by a whole factor (:func:`reduce_factor`, :func:`area_reduce`) to at least
#: this many times the panel's pixels; the figure's anti-aliasing shrinks the rest.
FIG3_OVERSAMPLE = 2


def reduce_factor(shape: tuple[int, int], box: tuple[float, float], oversample: float = FIG3_OVERSAMPLE) -> int:
    """The largest whole factor by which a map of ``shape`` (rows, columns) can be area-averaged
    (:func:`area_reduce`) and still have ``oversample`` times the pixels of a panel of ``box``
    (height, width, in screen pixels) both ways; 1 (kept as it is) for a map less than
    ``2 * oversample`` times its panel."""
    ratio = min(shape[0] / max(box[0], 1.0), shape[1] / max(box[1], 1.0))
    return max(1, int(ratio // oversample))


def area_reduce(img: np.ndarray, factor: int, dtype: type = np.float32) -> np.ndarray:
    """``img`` (2-D, or 3-D with channels last) averaged over blocks of ``factor`` x ``factor``
    pixels (those of the last row and column of blocks over the pixels there are: no pixel is
    dropped), NaN as 0, as ``dtype`` (rounded for an integer type). The sums run over the
    ``factor**2`` strided views of ``img``, so no full-size temporary is made. ``factor`` 1:
    ``img`` as ``dtype`` (NaN as 0), a copy only where that changes it."""
    img = np.asarray(img)
    if factor <= 1:
        out = img.astype(dtype, copy=False)
        return np.nan_to_num(out, nan=0.0) if np.issubdtype(out.dtype, np.floating) else out
    h, w = img.shape[:2]
    oh, ow = -(-h // factor), -(-w // factor)
    acc = np.zeros((oh, ow, *img.shape[2:]), np.float64)
    for i in range(factor):
        for j in range(factor):
            part = img[i::factor, j::factor]
            part = np.nan_to_num(part.astype(np.float64)) if np.issubdtype(img.dtype, np.floating) else part
            acc[:part.shape[0], :part.shape[1]] += part
    rows = np.minimum(factor, h - np.arange(oh) * factor).astype(np.float64)
    cols = np.minimum(factor, w - np.arange(ow) * factor).astype(np.float64)
    count = rows[:, None] * cols[None, :]
    acc /= count.reshape(count.shape + (1,) * (acc.ndim - 2))
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.round(acc), info.min, info.max).astype(dtype)
    return acc.astype(dtype)


def _panel_inches(shape: tuple[int, int]) -> tuple[float, float, float]:
    """The side of a Fig. 3 column and the width and height of a panel (inches) for maps of
    ``shape`` (rows, columns): :func:`figure_maps`'s layout."""
    h, w = shape
    side = 6.4 if max(h, w) > FIG3_GRID_ABOVE else 3.2
    aspect = h / max(w, 1)
    # each panel fits a box side wide and FIG3_PANEL_HEIGHT x side high: the width alone made a
    # 64 x 1200 pair's panels 640 x 12000 px (and a 24 x 3000 strip a 205-megapixel figure)
    panel_w = min(side, FIG3_PANEL_HEIGHT * side / aspect)
    return side, panel_w, panel_w * aspect


def fig3_factor(shape: tuple[int, int]) -> int:
    """The whole factor by which :func:`figure_maps` area-averages maps of ``shape`` (rows,
    columns) before drawing them (:func:`reduce_factor` of its panel; with or without a truth,
    the panels have one size). 1: drawn as they are, and matplotlib resamples the full-size
    maps itself, at about 55 bytes a pixel more than the figure of reduced ones (a 2304x2304
    pair's figure +292 MiB, a 2560x2560 one's, reduced by 2, +31 MiB): what
    :data:`bafusion.fusion.memory.FIG3_FULL_MIB_PER_MEGAPIXEL` counts."""
    _, panel_w, panel_h = _panel_inches(shape)
    return reduce_factor(shape, (panel_h * FIG3_DPI, panel_w * FIG3_DPI))


def figure_maps(result: "FusionResult", path: str | os.PathLike[str], title: str = "",
                truth: np.ndarray | None = None, truth_dm: np.ndarray | None = None, full_size: str = "") -> None:
    """Write Fig. 3 of ``result`` to the PNG ``path`` (atomically): :func:`figure_maps_bytes`."""
    data = figure_maps_bytes(result, title, truth, truth_dm, full_size)
    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(data)


def figure_maps_bytes(result: "FusionResult", title: str = "", truth: np.ndarray | None = None,
                      truth_dm: np.ndarray | None = None, full_size: str = "") -> bytes:
    """Fig. 3 as PNG bytes (:func:`figure_maps` writes them to a file): initial score map, refined score map, decision map, fused image, in one PNG.

    With ``truth`` (the all-in-focus image) and ``truth_dm`` (the true decision map, bool, True
    = A) of a test-set composite, the true decision map stands right of the decision map and
    the truth right of the fused image (:data:`FIG3_TRUTH_PANELS`): six panels in one row, or
    three columns of two (each result above its truth) for large inputs.

    Each panel is framed (a thin black line: an all-white map, A taken everywhere, still shows
    as a panel); the score panels have a colour bar from 0 to 1 (:data:`SCORE_LABEL`), the
    decision map a two-step key (black = B, white = A). Inputs up to :data:`FIG3_GRID_ABOVE`
    pixels on the long side give one row of four panels about 320 px wide; larger ones (camera
    photos) two rows of two panels about 640 px wide; a panel is at most
    :data:`FIG3_PANEL_HEIGHT` times as high as that width (a taller pair's panels are narrower).
    A map at least twice :data:`FIG3_OVERSAMPLE` times its panel is first area-averaged by a
    whole factor to at least :data:`FIG3_OVERSAMPLE` times it (:func:`area_reduce`: matplotlib
    would resample full-size RGBA copies, a gigabyte for a camera photo), drawn over the full
    map's extent. A map larger than its panel is shrunk anti-aliased (:func:`draw_images_to_scale`); where it
    is shrunk so much that thin details may not be visible, the line under the figure says so,
    followed by ``full_size`` (where the maps are at full size: :func:`save_maps` names its files)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    images = [
        (result.score_initial, "score"),
        (result.score_refined, "score"),
        (result.decision, "decision"),
        (result.fused, None),
    ]
    names = list(FIG3_PANELS)
    h, w = result.decision.shape
    grid = max(h, w) > FIG3_GRID_ABOVE
    rows, cols = (2, 2) if grid else (1, 4)
    side, panel_w, panel_h = _panel_inches((h, w))
    cells = None  # (row, column) of each panel; None: in order, row by row
    if truth is not None and truth_dm is not None:
        images[3:3] = [(np.asarray(truth_dm), "decision")]
        images.append((np.asarray(truth), None))
        names[3:3] = [FIG3_TRUTH_PANELS[0]]
        names.append(FIG3_TRUTH_PANELS[1])
        rows, cols = (2, 3) if grid else (1, 6)
        if grid:  # each result above its truth
            cells = [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    bar = 0.45  # inches under each panel for its colour bar and label
    fig = _figure(figsize=(cols * side, rows * (panel_h + bar + 0.3) + (0.3 if title else 0.0)), dpi=FIG3_DPI,
                  layout="constrained")
    fig.get_layout_engine().set(w_pad=0.04, h_pad=0.04, hspace=0.0, wspace=0.02)
    gs = fig.add_gridspec(rows, cols)
    # a map far larger than its panel is drawn area-averaged to FIG3_OVERSAMPLE x the panel's
    # pixels (the figure anti-aliases the rest): resampled whole, a 12-megapixel pair's figure
    # peaked at 1 GiB more (its panels' full-size RGBA copies)
    factor = fig3_factor((h, w))
    for i, ((img, kind), name) in enumerate(zip(images, names)):
        r, c = divmod(i, cols) if cells is None else cells[i]
        ax = fig.add_subplot(gs[r, c])
        # the extent of the full-size map: the axes, the layout and the scale said are those of
        # the map, whatever the size of the array drawn
        extent = (-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5)
        if kind is None:
            img = area_reduce(img, factor, np.uint8)
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest",
                      extent=extent)
        else:
            # drawn in gray, whose colours are linear in the value, so that a map averaged
            # before it is coloured is the map's colours averaged: a decision map reduced
            # through its two-step key drew a pixel of A among 8 of B black
            ax.imshow(area_reduce(img, factor, np.float32), cmap="gray", vmin=0.0, vmax=1.0,
                      interpolation="nearest", extent=extent)
            # the decision map's key in two steps: two boxes, not a gradient
            cmap = "gray" if kind == "score" else ListedColormap(["black", "white"])
            im = ScalarMappable(Normalize(0.0, 1.0), cmap)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color("black")
            spine.set_linewidth(0.8)
        ax.set_title(name, fontsize=9)
        if kind is None:
            continue
        # a short bar under the panel, as wide as half a column (a narrow panel's bar is wider
        # than the panel), centred; 0.12 in high, 0.08 in under the panel
        frac = 0.5 * side / panel_w
        cax = ax.inset_axes([0.5 - frac / 2, -(0.08 + 0.12) / panel_h, frac, 0.12 / panel_h])
        cb = fig.colorbar(im, cax=cax, orientation="horizontal")
        cb.outline.set_linewidth(0.6)
        cax.tick_params(labelsize=7, length=2, pad=1)
        if kind == "score":
            cb.set_ticks([0.0, 0.5, 1.0])
            cax.set_xlabel(SCORE_LABEL, fontsize=7, labelpad=1)
        else:
            cb.set_ticks([0.25, 0.75])
            cb.set_ticklabels(["B", "A"])
            cax.set_xlabel("source taken", fontsize=7, labelpad=1)
    if title:
        fig.suptitle(displayable(title), fontsize=10)
    draw_images_to_scale(fig, note="gray in a decision map: A and B both in the pixel", full_size=full_size)
    return figure_bytes(fig)


def _image_scales(fig) -> list[tuple[object, float, float]]:
    """Each image of ``fig``, the scale it is drawn at (screen pixels per image pixel, the
    smaller of width and height) and the scale its array is resampled at (screen pixels per
    array pixel), after the figure's layout. An image's pixels are those of its extent: an
    array drawn reduced (:func:`area_reduce`) over the extent of the full-size map has fewer.

    The images are hidden while the layout runs: drawing one resamples the whole image onto its
    panel (seconds for a camera photo), and the layout does not depend on it (an image lies
    inside its panel), so only the saved figure resamples each image, once."""
    images = [im for ax in fig.axes for im in ax.get_images()]
    shown = [im.get_visible() for im in images]
    for im in images:
        im.set_visible(False)
    try:
        fig.draw_without_rendering()  # runs the layout and each panel's aspect
    finally:
        for im, visible in zip(images, shown):
            im.set_visible(visible)
    renderer = fig.canvas.get_renderer()
    scales = []
    for im in images:
        h, w = im.get_array().shape[:2]
        x0, x1, y0, y1 = im.get_extent()
        box = im.get_window_extent(renderer)
        scales.append((im, min(box.width / max(abs(x1 - x0), 1), box.height / max(abs(y1 - y0), 1)),
                       min(box.width / max(w, 1), box.height / max(h, 1))))
    return scales


def _significant(x: float, digits: int) -> str:
    """``x`` to ``digits`` significant digits, without an exponent (123.4, 2 -> '120')."""
    return np.format_float_positional(x, precision=digits, unique=False, fractional=False, trim="-")


#: The share of its contrast below which a detail is taken as too faint to see: a shrunk
#: figure's line then says that thin details may not be visible at its size.
VISIBLE_CONTRAST = 0.10


def kept_contrast(scale: float) -> tuple[float, float]:
    """About what share of its contrast a 1-pixel line and a lone pixel keep in a map drawn at
    ``scale`` (< 1) of its size, anti-aliased: averaged over a screen pixel ``1 / scale`` image
    pixels wide, a line keeps about ``scale``, a lone pixel (thin both ways) about ``scale**2``.

    ``benchmarks/bench_figures.py --part contrast`` measured, over sub-pixel phases, a line at
    39-59 % and a lone pixel at 16-58 % at a scale of 0.60, a line at 9-15 % and a lone pixel at
    1-2 % at 0.157 (BENCHMARKS.md): the same order, the phase moving them about it.

    Parameters
    ----------
    scale : float
        Screen pixels per image pixel, more than 0.

    Returns
    -------
    tuple of float
        ``(line, pixel)``, shares of the full contrast from 0 to 1.
    """
    s = min(max(float(scale), 0.0), 1.0)
    return s, s * s


def _percent(share: float) -> str:
    """A share as 'about N %' (rounded), 'under 1 %' below 0.5 %."""
    return "under 1 %" if share < 0.005 else f"about {100.0 * share:.0f} %"


def _shrink_text(scale: float, full_size: str = "") -> str:
    """The line under a figure whose smallest image is drawn at ``scale`` (< 1) of its size.

    The percentage is never shown as 100 (a scale of 0.9996 is '99.96 %', not '100 %'); the
    thickness of a detail that shows dimmed is 1 / scale image pixels, said as '1-pixel details'
    where that rounds to 1 (a scale above 0.952: '1 image pixels' said nothing), and in whole
    pixels from 10 up. Where a lone pixel keeps less than :data:`VISIBLE_CONTRAST` of its
    contrast (:func:`kept_contrast`: at scales under about 0.32, a camera photo's Fig. 3) the
    line says so and that thin details may not be visible at this size, followed by
    ``full_size`` (where the images are at full size), where given."""
    percent = 100.0 * scale
    shown = _significant(percent, 3)
    if float(shown) >= 100.0:
        shown = f"{math.floor(percent * 100.0) / 100.0:.2f}"
    thick = 1.0 / scale
    pixels = f"{thick:.0f}" if thick >= 9.5 else _significant(thick, 2)
    line, pixel = kept_contrast(scale)
    if pixel >= VISIBLE_CONTRAST:
        detail = ("1-pixel details show dimmed, not dropped" if pixels == "1"
                  else f"a detail thinner than {pixels} image pixels shows dimmed, not dropped")
    else:
        detail = (f"a detail thinner than {pixels} image pixels is averaged away: a 1-pixel line keeps "
                  f"{_percent(line)} of its contrast, a lone pixel {_percent(pixel)}, so thin details may "
                  f"not be visible at this size" + (f"; {full_size}" if full_size else ""))
    return f"shrunk to {shown} % of the image size, anti-aliased: {detail}"


def draw_images_to_scale(fig, relayout=None, note: str = "", full_size: str = "") -> float:
    """Choose how each image of ``fig`` is resampled onto its panel, once the layout is known.

    An image drawn at its size or larger is drawn ``nearest`` (each pixel a sharp block); one
    drawn smaller is anti-aliased (a Hanning filter over the RGBA colours): nearest-neighbour
    shrinking kept every k-th row and column and dropped the others, so a 1-pixel line of a map
    or a thin slip at a focus boundary could vanish; anti-aliased, it shows dimmed (in a
    two-colour decision map a pixel that holds both colours is gray). If any image is drawn
    smaller, a line under the figure says so, by how much, and how much of its contrast a thin
    detail keeps where it may not be visible (:func:`_shrink_text`: then followed by
    ``full_size``, where the images are at full size), followed by ``note``; ``relayout``
    (e.g. ``fig.tight_layout``) is called after the line is added, for a figure without a
    layout engine. The layout is then kept as measured (a layout engine is switched off), so
    the figure saved has these scales. Returns the smallest scale (1.0 without images)."""
    scales = _image_scales(fig)
    if any(s < 1.0 for _, s, _ in scales):
        line = fig.supxlabel(" ", fontsize=7)
        for _ in range(3):  # the words depend on the scale and the scale on the line's room: until both settle
            low = min(s for _, s, _ in scales)
            text = textwrap.fill(
                _shrink_text(low, full_size) + (f"; {note}" if note else ""),
                width=max(30, int(fig.get_figwidth() * 72 / 4.2)), break_on_hyphens=False)  # ~4.2 pt a character at 7 pt
            if text == line.get_text():
                break
            line.set_text(text)
            if relayout is not None:
                relayout()
            scales = _image_scales(fig)
    for im, _, s in scales:  # the array's own scale: one drawn reduced may be resampled at 1 or more
        im.set_interpolation("nearest" if s >= 1.0 else "hanning")
        im.set_interpolation_stage("rgba")
    if fig.get_layout_engine() is not None:
        # the layout measured is the one saved: a constrained layout moves a little at each draw.
        # No engine at all, not "none" (a placeholder engine): savefig draws a figure that has
        # an engine once more before it renders it, which resampled every image twice
        import matplotlib

        with matplotlib.rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
            fig.set_layout_engine(None)
    return min((s for _, s, _ in scales), default=1.0)


def figure_bytes(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes (no software tag, so the bytes depend only on the
    content) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    fig.clf()
    if getattr(fig.canvas, "manager", None) is not None:  # a figure of pyplot's (a caller's): closed there too
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buf.getvalue()


def save_figure(fig, path: str | os.PathLike[str]) -> None:
    """Render a matplotlib figure to PNG (:func:`figure_bytes`), close it, and write the file
    atomically."""
    data = figure_bytes(fig)
    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(data)

#: The files :func:`save_maps` writes, ``<stem>-<key>.png``.
MAP_KEYS = ("score-initial", "score-mean", "near-boundary", "score-refined", "dm-raw", "dm",
            "diff-gray", "diff-colour", "fig3")


def save_maps(
    folder: str | os.PathLike[str],
    stem: str,
    result: "FusionResult",
    a: np.ndarray,
    b: np.ndarray,
    alpha: float = 10.0,
    truth: np.ndarray | None = None,
    truth_dm: np.ndarray | None = None,
    diff_cmap: str = DIFF_CMAP,
) -> list[Path]:
    """Write ``<stem>-<key>.png`` for :data:`MAP_KEYS` into ``folder``. Returns the paths written.
    ``truth`` and ``truth_dm`` (a test-set composite's): drawn into ``fig3`` beside the result.
    ``diff_cmap``: the matplotlib colour map of ``diff-colour`` (``fuse.diff_cmap``), checked
    before anything is written.

    The maps have the sources' size, without axes or keys; their scales:

    * ``score-initial``, ``score-mean``, ``score-refined``: 8-bit gray, value = 255 x the score,
      the nets' probability that A is the focused source (255, white: A; 0, black: B);
      ``score-mean`` is the Eq. 1 window mean of ``score-initial``.
    * ``near-boundary``: 255 where the boundary net rescored the pixel (Eq. 2), else 0.
    * ``dm-raw`` (the thresholded refined score), ``dm`` (after small-region removal, the map
      the fusion used): 255 (white) = the pixel is taken from A, 0 (black) = from B.
    * ``diff-gray``: ``min(255, alpha * |B - F|)`` on the gray images (Fig. 5; alpha = 10: a
      gray-level difference of 25.5 or more is white; with ``match_output_exposure``, B at A's
      exposure, the B that F was composited from); ``diff-colour``: the same values through
      the colour map ``diff_cmap``: by default ``magma``, darkest to lightest (0: black, 128:
      magenta, 255: pale yellow); the paper preset's ``jet`` (0: dark blue, 128: green,
      255: dark red).
    * ``fig3``: the paper's Fig. 3 (:func:`figure_maps`), which has titles and colour bars.

    The files are encoded first (:func:`render_maps`), then written (:func:`write_rendered`).
    """
    return write_rendered(render_maps(folder, stem, result, b, alpha=alpha, truth=truth, truth_dm=truth_dm,
                                      diff_cmap=diff_cmap))


def render_maps(
    folder: str | os.PathLike[str],
    stem: str,
    result: "FusionResult",
    b: np.ndarray,
    alpha: float = 10.0,
    truth: np.ndarray | None = None,
    truth_dm: np.ndarray | None = None,
    diff_cmap: str = DIFF_CMAP,
) -> list[tuple[Path, bytes]]:
    """The files :func:`save_maps` writes, each path with its PNG bytes, encoded in memory;
    nothing is written (:func:`write_rendered` writes them). The arguments are
    :func:`save_maps`'s (``b``: the pair's second source). ``bafusion fuse --save-maps`` of a
    chain stack encodes each step's maps as the step is done and lets its arrays go: the
    compressed files are about a tenth of the step's maps (about 18 bytes a pixel), which it
    held to the end before (BENCHMARKS.md, "Memory of a stack").

    Returns
    -------
    list of (Path, bytes)
        ``<folder>/<stem>-<key>.png`` for :data:`MAP_KEYS`, in that order.
    """
    check_colour_map(diff_cmap, "diff_cmap")
    d = Path(folder)
    raw = {
        "score-initial": map_to_u8(result.score_initial),
        "score-mean": map_to_u8(result.score_mean),
        "near-boundary": result.near_boundary.astype(np.uint8) * 255,
        "score-refined": map_to_u8(result.score_refined),
        "dm-raw": result.decision_raw.astype(np.uint8) * 255,
        "dm": result.decision.astype(np.uint8) * 255,
    }
    gains = getattr(result, "gains", None)
    if gains is not None:  # match_output_exposure: F was composited from B at A's exposure
        from bafusion.fusion.exposure import apply_gains

        b = apply_gains(b, gains)
    diff = difference_map(b, result.fused, alpha)
    raw["diff-gray"] = diff
    raw["diff-colour"] = pseudo_colour(diff, diff_cmap)
    files = []
    for key in list(raw):
        p = d / f"{stem}-{key}.png"
        files.append((p, image_bytes(p, raw.pop(key))))  # each map let go once encoded
    fig3 = figure_maps_bytes(result, title=stem, truth=truth, truth_dm=truth_dm,
                             full_size=f"the maps at full size are {stem}-score-initial.png, {stem}-score-refined.png "
                                       f"and {stem}-dm.png beside this figure")
    files.append((d / f"{stem}-fig3.png", fig3))
    return files


def write_rendered(files: list[tuple[Path, bytes]]) -> list[Path]:
    """Write the files :func:`render_maps` encoded, in order (each atomically,
    :func:`bafusion.io.write_bytes`), making their folders; the paths written.

    Parameters
    ----------
    files : list of (Path, bytes)
        What :func:`render_maps` returned (of one or more pairs).

    Returns
    -------
    list of Path

    Raises
    ------
    OSError
        A file cannot be written (naming it): those before it are written, it and those after not.
    """
    from bafusion.io import write_bytes

    written = []
    for p, data in files:
        p.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(p, data)
        written.append(p)
    return written
