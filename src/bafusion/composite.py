"""The ``composite`` step: for every (foreground, background) pair, blur both and composite
them with the soft matte GT (the paper's section 3):

    A = FG * GT + blur(BG) * (1 - GT)      foreground in focus
    B = blur(FG) * GT + BG * (1 - GT)      background in focus

Choices the paper leaves open (params, documented in the README):

- **blur**: a Gaussian whose sigma is drawn uniformly from ``composite.sigma`` = [lo, hi]
  per pair (one sigma per pair, used for both blurred layers), seeded by (seed, pair id).
- **fit**: how a background is brought to the foreground's size: ``cover`` scales it
  (antialiased) until it covers the foreground and crops the centre, keeping its aspect;
  ``stretch`` resizes it to the foreground's size.

Training only needs gray images, and gray conversion and Gaussian blur are both linear, so
training pairs are composited directly in gray (float, rounded once at the end): the result
equals the gray of the colour composite within rounding. Held-out test pairs
(:func:`make_testset`) are composited in colour.

Training pairs go to HDF5 shards, foregrounds split round-robin across ``shards`` files so
Snakemake runs them in parallel. Shard layout: one group per foreground holding ``matte``
uint8 (H, W), ``A`` and ``B`` uint8 (n_bg, H, W), ``sigma`` float32 (n_bg,), ``pair`` int64
(n_bg,) (global pair id = fg index * n_backgrounds + bg index) and ``background`` (ids).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from bafusion import __version__
from bafusion.atomic import atomic_dir, atomic_file
from bafusion.errors import InputFileError, UserError
from bafusion.images import gray_float, read_matte, read_rgb, resize, to_uint8, write_png
from bafusion.prepare import entries, load_manifest

FIT_MODES = ("cover", "stretch")


@dataclass(frozen=True)
class CompositeOptions:
    sigma: tuple[float, float] = (1.0, 3.0)
    fit: str = "cover"
    seed: int = 0

    def __post_init__(self) -> None:
        lo, hi = self.sigma
        if not 0 < lo <= hi:
            raise UserError(f"composite.sigma must be [lo, hi] with 0 < lo <= hi, got {list(self.sigma)}")
        if self.fit not in FIT_MODES:
            raise UserError(f"composite.fit must be one of {FIT_MODES}, got {self.fit!r}")


def fit_background(bg: np.ndarray, shape_hw: tuple[int, int], mode: str = "cover") -> np.ndarray:
    """Bring a background (uint8 gray/RGB or float gray) to ``shape_hw``: ``cover`` (scale to cover,
    crop the centre) or ``stretch``."""
    h, w = shape_hw
    bh, bw = bg.shape[:2]
    if mode == "stretch":
        return resize(bg, (h, w))
    if mode != "cover":
        raise UserError(f"unknown fit mode {mode!r}")
    s = max(h / bh, w / bw)
    nh, nw = max(h, int(np.ceil(bh * s - 1e-9))), max(w, int(np.ceil(bw * s - 1e-9)))
    big = resize(bg, (nh, nw))
    y0, x0 = (nh - h) // 2, (nw - w) // 2
    return np.ascontiguousarray(big[y0 : y0 + h, x0 : x0 + w])


def draw_sigma(seed: int, pair_id: int, sigma: tuple[float, float]) -> float:
    lo, hi = sigma
    return float(np.random.default_rng([int(seed), int(pair_id), 1]).uniform(lo, hi)) if hi > lo else float(lo)


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (reflect borders) of a float gray (H, W) or colour (H, W, C) image."""
    s = (sigma, sigma) if img.ndim == 2 else (sigma, sigma, 0)
    return ndimage.gaussian_filter(img, s, mode="reflect")


def composite_float(fg: np.ndarray, bg: np.ndarray, alpha: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """The paper's A and B as floats; ``alpha`` in [0, 1] with the images' spatial shape."""
    a = alpha if fg.ndim == 2 else alpha[..., None]
    A = fg * a + blur(bg, sigma) * (1.0 - a)
    B = blur(fg, sigma) * a + bg * (1.0 - a)
    return A, B


def composite_pair_gray(
    fg_rgb: np.ndarray, matte: np.ndarray, bg_rgb: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gray uint8 A and B of one pair (background already fitted to the foreground's size)."""
    alpha = matte.astype(np.float64) / 255.0
    A, B = composite_float(gray_float(fg_rgb), gray_float(bg_rgb), alpha, sigma)
    return to_uint8(A), to_uint8(B)


def _load_prepared(prepared: Path, entry: dict[str, Any], key: str) -> np.ndarray:
    p = prepared / entry[key]
    return read_matte(p) if key == "matte" else read_rgb(p)


def shard_foregrounds(manifest: dict[str, Any], shard: int, shards: int) -> list[tuple[int, dict[str, Any]]]:
    if shards < 1 or not 0 <= shard < shards:
        raise UserError(f"shard {shard} is not in 0..{shards - 1}")
    fgs = entries(manifest, "foregrounds", "train")
    return [(i, e) for i, e in enumerate(fgs) if i % shards == shard]


def run_shard(prepared: Path, shard: int, shards: int, opts: CompositeOptions, out: Path, progress: bool = True) -> int:
    """Composite all pairs of one shard into ``out`` (HDF5). Returns the number of pairs."""
    prepared = Path(prepared)
    manifest = load_manifest(prepared)
    bgs = entries(manifest, "backgrounds", "train")
    mine = shard_foregrounds(manifest, shard, shards)
    n_bg = len(bgs)
    bg_cache: dict[str, np.ndarray] = {}
    count = 0
    with atomic_file(out) as tmp, h5py.File(tmp, "w", track_order=True) as h5:
        h5.attrs["shard"] = shard
        h5.attrs["shards"] = shards
        h5.attrs["n_backgrounds"] = n_bg
        h5.attrs["params"] = json.dumps({"sigma": list(opts.sigma), "fit": opts.fit, "seed": opts.seed})
        h5.attrs["code_version"] = __version__
        bar = tqdm(total=len(mine) * n_bg, desc=f"composite shard {shard}", unit="pair", disable=not progress)
        for fg_index, fe in mine:
            fg = _load_prepared(prepared, fe, "image")
            matte = _load_prepared(prepared, fe, "matte")
            if matte.shape != fg.shape[:2]:
                raise InputFileError(prepared / fe["matte"], f"matte size differs from {prepared / fe['image']}")
            h, w = matte.shape
            g = h5.create_group(fe["id"], track_order=True)
            g.attrs["fg_index"] = fg_index
            kw: dict[str, Any] = {"compression": "gzip", "compression_opts": 4, "shuffle": True, "track_times": False}
            g.create_dataset("matte", data=matte, **kw)
            dA = g.create_dataset("A", shape=(n_bg, h, w), dtype=np.uint8, chunks=(1, h, w), **kw)
            dB = g.create_dataset("B", shape=(n_bg, h, w), dtype=np.uint8, chunks=(1, h, w), **kw)
            sigmas = np.zeros(n_bg, np.float32)
            pairs = np.zeros(n_bg, np.int64)
            fg_g = gray_float(fg)
            alpha = matte.astype(np.float64) / 255.0
            for bg_index, be in enumerate(bgs):
                if be["id"] not in bg_cache:  # gray first: resizing is linear, so this is 3x less work
                    bg_cache[be["id"]] = gray_float(_load_prepared(prepared, be, "image")).astype(np.float32)
                # Clip Lanczos overshoot, as a uint8 photo would be.
                bg_g = np.clip(fit_background(bg_cache[be["id"]], (h, w), opts.fit), 0.0, 255.0).astype(np.float64)
                pair_id = fg_index * n_bg + bg_index
                s = draw_sigma(opts.seed, pair_id, opts.sigma)
                A, B = composite_float(fg_g, bg_g, alpha, s)
                dA[bg_index] = to_uint8(A)
                dB[bg_index] = to_uint8(B)
                sigmas[bg_index] = s
                pairs[bg_index] = pair_id
                count += 1
                bar.update()
            g.create_dataset("sigma", data=sigmas, track_times=False)
            g.create_dataset("pair", data=pairs, track_times=False)
            g.create_dataset("background", data=np.array([b["id"] for b in bgs], dtype=h5py.string_dtype()), track_times=False)
        bar.close()
    return count


def write_index(shard_files: list[Path], out: Path) -> dict[str, Any]:
    """Summarise the shards (counts, per-foreground sizes) into a JSON index."""
    shards = []
    total = 0
    for f in shard_files:
        f = Path(f)
        if not f.exists():
            raise InputFileError(f, "composite shard missing")
        with h5py.File(f, "r") as h5:
            fgs = {k: int(h5[k]["A"].shape[0]) for k in h5.keys()}
        shards.append({"file": f.name, "foregrounds": fgs, "pairs": sum(fgs.values())})
        total += sum(fgs.values())
    index = {"pairs": total, "shards": shards}
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(index, indent=1) + "\n")
    return index


def make_testset(prepared: Path, opts: CompositeOptions, out: Path, progress: bool = True) -> dict[str, Any]:
    """Composite every held-out (foreground, background) pair in colour, with its truth.

    Writes ``<name>-A.png``, ``<name>-B.png``, ``<name>-truth.png`` (all in focus:
    FG*GT + BG*(1-GT)), ``<name>-dm.png`` (the true decision map: 255 where GT >= 0.5) and
    ``index.json``. ``name`` is ``<fg>__<bg>``. An empty held-out set gives an empty index.
    """
    prepared = Path(prepared)
    manifest = load_manifest(prepared)
    fgs = entries(manifest, "foregrounds", "test")
    bgs = entries(manifest, "backgrounds", "test")
    pairs = []
    with atomic_dir(out) as tmp:
        todo = [(f, b) for f in fgs for b in bgs]
        for k, (fe, be) in enumerate(tqdm(todo, desc="testset", unit="pair", disable=not progress)):
            fg = _load_prepared(prepared, fe, "image").astype(np.float64)
            matte = _load_prepared(prepared, fe, "matte")
            h, w = matte.shape
            bg = fit_background(_load_prepared(prepared, be, "image"), (h, w), opts.fit).astype(np.float64)
            s = draw_sigma(opts.seed, 10_000_000 + k, opts.sigma)
            alpha = matte.astype(np.float64) / 255.0
            A, B = composite_float(fg, bg, alpha, s)
            truth = fg * alpha[..., None] + bg * (1.0 - alpha[..., None])
            name = f"{fe['id']}__{be['id']}"
            write_png(tmp / f"{name}-A.png", to_uint8(A))
            write_png(tmp / f"{name}-B.png", to_uint8(B))
            write_png(tmp / f"{name}-truth.png", to_uint8(truth))
            write_png(tmp / f"{name}-dm.png", np.where(matte >= 128, 255, 0).astype(np.uint8))
            pairs.append({"name": name, "foreground": fe["id"], "background": be["id"], "sigma": s, "height": h, "width": w})
        index = {"pairs": pairs, "params": {"sigma": list(opts.sigma), "fit": opts.fit, "seed": opts.seed}}
        (tmp / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index
