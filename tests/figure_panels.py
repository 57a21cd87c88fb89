"""What a saved matplotlib figure shows inside its image panels (the figure tests of
test_fusion and test_evaluate): the figure is rendered once more as it is saved, and each
image's pixel box is taken from that render."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image


def record_renders(monkeypatch: pytest.MonkeyPatch) -> list[tuple[np.ndarray, list[tuple[int, int, int, int]]]]:
    """Make ``bafusion.fusion.maps.figure_bytes`` (every figure of Fig. 3, Fig. 4 and the
    difference figures goes through it, :func:`bafusion.fusion.maps.save_figure` too) first render the figure to PNG as it saves it, and
    append (the gray pixels, each image's box (left, top, right, bottom)) to the list returned."""
    import bafusion.fusion.maps as maps

    real = maps.figure_bytes
    renders: list = []

    def recording(fig):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})
        r, height = fig.canvas.get_renderer(), fig.bbox.height
        boxes = [(round(b.x0), round(height - b.y1), round(b.x1), round(height - b.y0))
                 for ax in fig.axes for im in ax.get_images() for b in [im.get_window_extent(r)]]
        renders.append((np.asarray(Image.open(buf).convert("L")).astype(int), boxes))
        return real(fig)

    monkeypatch.setattr(maps, "figure_bytes", recording)
    return renders


def lit_lines(gray: np.ndarray, box: tuple[int, int, int, int], level: int = 48) -> tuple[int, int]:
    """How many columns and rows (runs of neighbours count once) of the panel ``box`` are at
    least ``level`` gray levels bright along their whole length, 2 px inside the frame."""
    left, top, right, bottom = box
    inside = gray[top + 2 : bottom - 2, left + 2 : right - 2]

    def runs(lit: np.ndarray) -> int:
        return int(np.count_nonzero(lit[1:] & ~lit[:-1]) + lit[0])

    return runs(inside.min(axis=0) >= level), runs(inside.min(axis=1) >= level)
