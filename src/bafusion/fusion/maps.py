"""Figures of a fusion (matplotlib, Agg backend, no display needed).

* :func:`figure_maps`: the paper's Fig. 3, one PNG with the score map after the initial net,
  after the boundary refinement, the decision map and the fused image.
* :func:`difference_map`: the paper's Fig. 5, ``alpha * |B - F|`` (alpha = 10, clipped to 255) on
  the gray images, saved in gray and in a pseudo-colour map.
* :func:`save_maps`: all of these plus the raw maps as PNGs into one folder.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bafusion.atomic import atomic_file
from bafusion.io import write_image

if TYPE_CHECKING:
    from bafusion.fusion.rule import FusionResult

#: Matplotlib colour map of the pseudo-colour difference map.
DIFF_CMAP = "jet"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def map_to_u8(score: np.ndarray) -> np.ndarray:
    """A score map in [0, 1] (NaN as 0) as uint8 0..255."""
    s = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=0.0)
    return np.clip(np.round(s * 255.0), 0, 255).astype(np.uint8)


def difference_map(b: np.ndarray, f: np.ndarray, alpha: float = 10.0) -> np.ndarray:
    """Fig. 5: ``alpha * |B - F|`` on the gray (MATLAB rgb2gray) images, clipped to 0..255, uint8."""
    from bafusion.io import to_gray_u8

    gb = to_gray_u8(b).astype(np.float64)
    gf = to_gray_u8(f).astype(np.float64)
    return np.clip(np.round(alpha * np.abs(gb - gf)), 0, 255).astype(np.uint8)


def pseudo_colour(gray: np.ndarray, cmap: str = DIFF_CMAP) -> np.ndarray:
    """A uint8 gray map through a matplotlib colour map, as uint8 RGB."""
    import matplotlib

    rgba = matplotlib.colormaps[cmap](gray.astype(np.float64) / 255.0)
    return np.round(rgba[..., :3] * 255.0).astype(np.uint8)


def figure_maps(result: "FusionResult", path: str | os.PathLike[str], title: str = "") -> None:
    """Fig. 3: initial score map, refined score map, decision map, fused image, in one PNG."""
    plt = _plt()
    panels = [
        ("score map (initial net)", result.score_initial, "gray"),
        ("score map (boundary refined)", result.score_refined, "gray"),
        ("decision map", result.decision.astype(np.float32), "gray"),
        ("fused image", result.fused, None),
    ]
    h, w = result.decision.shape
    fig, axes = plt.subplots(1, 4, figsize=(4 * 3.2, 3.2 * h / max(w, 1) + 0.6), dpi=100)
    for ax, (name, img, cmap) in zip(axes, panels):
        if cmap is None:
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(np.nan_to_num(img), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)



def save_figure(fig, path: str | os.PathLike[str]) -> None:
    """Render a matplotlib figure to PNG (no software tag, so the bytes depend only on the
    content), close it, and write the file atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(buf.getvalue())

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
) -> list[Path]:
    """Write ``<stem>-*.png`` into ``folder``: raw maps (``score-initial``, ``score-mean``,
    ``near-boundary``, ``score-refined``, ``dm-raw``, ``dm``; 255 = take A), the difference map
    (``diff-gray``, ``diff-colour``) and Fig. 3 (``fig3``). Returns the paths written."""
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    raw = {
        "score-initial": map_to_u8(result.score_initial),
        "score-mean": map_to_u8(result.score_mean),
        "near-boundary": result.near_boundary.astype(np.uint8) * 255,
        "score-refined": map_to_u8(result.score_refined),
        "dm-raw": result.decision_raw.astype(np.uint8) * 255,
        "dm": result.decision.astype(np.uint8) * 255,
    }
    diff = difference_map(b, result.fused, alpha)
    raw["diff-gray"] = diff
    raw["diff-colour"] = pseudo_colour(diff)
    written = []
    for key, img in raw.items():
        p = d / f"{stem}-{key}.png"
        write_image(p, img)
        written.append(p)
    p = d / f"{stem}-fig3.png"
    figure_maps(result, p, title=stem)
    written.append(p)
    return written
