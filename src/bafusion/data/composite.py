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
training pairs are composited directly in gray (float, rounded once at the end). Where the
background needs no resizing, the result is the gray of the colour composite within one level
(rounding). Where it is resized, a few pixels differ by more: this path clips the Lanczos
overshoot after the gray conversion, the colour path clips and rounds each channel before it
(measured at sigma 2, 256x256: up to 10 levels in B on 0.03 % of the pixels with
``skimage.data.hubble_deep_field``; up to 40 with an upscaled random-noise background, all
overshoot). Kept: the paper's composites are these. Held-out test pairs
(:func:`make_testset`) are composited in colour.

Training pairs go to HDF5 shards, foregrounds split round-robin across ``shards`` files so
Snakemake runs them in parallel. Shard layout: one group per foreground holding ``matte``
uint8 (H, W), ``A`` and ``B`` uint8 (n_bg, H, W), ``sigma`` float32 (n_bg,), ``pair`` int64
(n_bg,) (global pair id = fg index * n_backgrounds + bg index) and ``background`` (ids).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from bafusion._version import __version__
from bafusion.atomic import atomic_dir, atomic_file, raise_if_stopped
from bafusion.data.prepare import MANIFEST, entries, load_manifest
from bafusion.errors import InputFileError, UserError
from bafusion.h5write import h5_output
from bafusion.io import (
    gray_float,
    read_image,
    read_matte,
    resize,
    to_uint8,
    write_image,
)
from bafusion.progress import bar_options
from bafusion.schema import maximum

FIT_MODES = ("cover", "stretch")

#: The largest blur sigma, px (params.yaml's schema: ``composite.sigma``'s items).
SIGMA_MAX: float = maximum("composite.sigma")


@dataclass(frozen=True)
class CompositeOptions:
    sigma: tuple[float, float] = (1.0, 3.0)
    fit: str = "cover"
    seed: int = 0
    #: Real-camera degradations (:class:`Realism`); all off (the default) = the paper's pairs.
    realistic: "Realism" = field(default_factory=lambda: Realism())

    def __post_init__(self) -> None:
        lo, hi = self.sigma
        if not 0 < lo <= hi <= SIGMA_MAX:  # NaN and inf fail the comparisons
            raise UserError(f"composite.sigma must be [lo, hi] with 0 < lo <= hi <= {SIGMA_MAX:g} px (finite), "
                            f"got {list(self.sigma)}")
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
    return read_matte(p) if key == "matte" else read_image(p, rgb=True)


def shard_jobs(params: dict[str, Any], source: str = "params.yaml") -> tuple[int, str | None]:
    """The composite shard jobs the pipeline runs: ``composite.shards``, at most the training
    foregrounds the prepare step keeps.

    The shards split the training foregrounds round-robin, whole foregrounds each
    (:func:`shard_foregrounds`), and the pairs and the patch sets are the same for any number
    of shards: shards beyond the foregrounds hold no pair (``shards: 1000`` with 6 foregrounds
    ran 994 empty jobs, each writing an empty HDF5 file). The foregrounds are counted as
    prepare selects them (:func:`bafusion.data.sources.select`: the source's, less the held-out,
    at most ``data.foregrounds``); where they cannot be counted before the run (``data.source:
    web``, a folder not readable here), ``composite.shards`` as it is.

    Parameters
    ----------
    params : dict
        The whole parameters (``composite.shards``, ``seed``, the ``data`` section).
    source : str
        Where they came from; starts the note.

    Returns
    -------
    tuple of (int, str or None)
        The number of shard jobs, and a note saying why it is fewer than ``composite.shards``
        (None when it is not).
    """
    from bafusion.data.sources import select
    from bafusion.schema import default

    shards = int((params.get("composite") or {}).get("shards") or default("composite.shards"))
    data = dict(params.get("data") or {})
    if data.get("source", "builtin") not in ("builtin", "dir"):
        return shards, None
    try:
        with warnings.catch_warnings():  # read at every parse of the workflow: the prepare job says them
            warnings.simplefilter("ignore")
            fgs = len(select(data, int(params.get("seed", 0))).train_foregrounds)
    except (UserError, OSError, ValueError):
        return shards, None
    if fgs < 1 or shards <= fgs:
        return shards, None
    plural = "s" if fgs > 1 else ""
    return fgs, (f"{source}: composite.shards: {shards} is more than the {fgs} training foreground{plural} the "
                 f"shards split (whole foregrounds each): {fgs} shard job{plural}, the same pairs")


def shard_foregrounds(manifest: dict[str, Any], shard: int, shards: int) -> list[tuple[int, dict[str, Any]]]:
    if shards < 1:
        raise UserError(f"shards must be at least 1, got {shards}")
    if not 0 <= shard < shards:
        raise UserError(f"shard {shard} is not in 0..{shards - 1}")
    fgs = entries(manifest, "foregrounds", "train")
    return [(i, e) for i, e in enumerate(fgs) if i % shards == shard]


def run_shard(prepared: Path, shard: int, shards: int, opts: CompositeOptions, out: Path, progress: bool = True) -> int:
    """Composite all pairs of one shard into ``out`` (HDF5). Returns the number of pairs."""
    prepared = Path(prepared)
    manifest = load_manifest(prepared)
    bgs = entries(manifest, "backgrounds", "train")
    mine = shard_foregrounds(manifest, shard, shards)
    if mine and not bgs:  # an h5py chunk-shape error before
        raise InputFileError(prepared / MANIFEST, "no backgrounds of the train split: composite needs at least one "
                                                  "(run the prepare step again)")
    n_bg = len(bgs)
    bg_cache: dict[str, np.ndarray] = {}
    count = 0
    with atomic_file(out) as tmp, h5_output(tmp, out, track_order=True) as h5:
        h5.attrs["shard"] = shard
        h5.attrs["shards"] = shards
        h5.attrs["n_backgrounds"] = n_bg
        params: dict[str, Any] = {"sigma": list(opts.sigma), "fit": opts.fit, "seed": opts.seed}
        real = opts.realistic
        if real.active:  # the paper's files keep their exact attributes
            params["realistic"] = real.as_dict()
        h5.attrs["params"] = json.dumps(params)
        h5.attrs["code_version"] = __version__
        bar = tqdm(total=len(mine) * n_bg, desc=f"composite shard {shard}", unit="pair", **bar_options(progress))
        for fg_index, fe in mine:
            fg = _load_prepared(prepared, fe, "image")
            matte = _load_prepared(prepared, fe, "matte")
            if matte.shape != fg.shape[:2]:
                raise InputFileError(prepared / fe["matte"], f"matte size differs from {prepared / fe['image']}")
            h, w = matte.shape
            g = h5.create_group(fe["id"], track_order=True)
            g.attrs["fg_index"] = fg_index
            kw: dict[str, Any] = {"compression": "gzip", "compression_opts": 4, "shuffle": True, "track_times": False}
            dM = g.create_dataset("matte", data=matte, **kw)
            dA = g.create_dataset("A", shape=(n_bg, h, w), dtype=np.uint8, chunks=(1, h, w), **kw)
            dB = g.create_dataset("B", shape=(n_bg, h, w), dtype=np.uint8, chunks=(1, h, w), **kw)
            sigmas = np.zeros(n_bg, np.float32)
            pairs = np.zeros(n_bg, np.int64)
            fg_g = gray_float(fg)
            colour = real.active and real.white_balance > 0  # only white balance needs colour
            fg_c = fg.astype(np.float64) if colour else fg_g
            alpha = matte.astype(np.float64) / 255.0
            draws = []
            for bg_index, be in enumerate(bgs):
                pair_id = fg_index * n_bg + bg_index
                s = draw_sigma(opts.seed, pair_id, opts.sigma)
                if colour:
                    if be["id"] not in bg_cache:
                        bg_cache[be["id"]] = _load_prepared(prepared, be, "image")
                    bg_c = fit_background(bg_cache[be["id"]], (h, w), opts.fit).astype(np.float64)  # uint8: clipped
                else:
                    if be["id"] not in bg_cache:  # gray first: resizing is linear, so this is 3x less work
                        bg_cache[be["id"]] = gray_float(_load_prepared(prepared, be, "image")).astype(np.float32)
                    # Clip Lanczos overshoot, as a uint8 photo would be.
                    bg_c = np.clip(fit_background(bg_cache[be["id"]], (h, w), opts.fit), 0.0, 255.0).astype(np.float64)
                if real.active:
                    d = draw_realism(opts.seed, pair_id, real)
                    dA[bg_index], dB[bg_index] = composite_realistic(
                        fg_c, alpha, bg_c, s, real, d, gray=True, noise_seed=(opts.seed, pair_id)
                    )
                    draws.append(asdict(d))
                else:
                    A, B = composite_float(fg_g, bg_c, alpha, s)
                    dA[bg_index] = to_uint8(A)
                    dB[bg_index] = to_uint8(B)
                sigmas[bg_index] = s
                pairs[bg_index] = pair_id
                count += 1
                bar.update()
                # SIGTERM's exception is often lost inside h5py's writes above ("Exception
                # ignored"): the stop the handler recorded ends the shard here, not at its end
                raise_if_stopped()
            held = [dM, dA, dB, g.create_dataset("sigma", data=sigmas, track_times=False),
                    g.create_dataset("pair", data=pairs, track_times=False),
                    g.create_dataset("background", data=np.array([b["id"] for b in bgs], dtype=h5py.string_dtype()),
                                     track_times=False)]
            if draws:
                g.attrs["realistic_draws"] = json.dumps(draws)
            # what is cached for this foreground's datasets is written now, while they are held: a
            # full disk raises here (h5_output names the output), not in their deallocation at the
            # next one ("Exception ignored", then a crash at exit); the data are as before
            h5.flush()
            del held
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
        try:
            with h5py.File(f, "r") as h5:
                fgs = {k: int(h5[k]["A"].shape[0]) for k in h5.keys()}
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise InputFileError(f, f"not a composite shard (a group without its A images: {e}): "
                                 "run the composite step again") from e
        except OSError as e:
            raise InputFileError(f, f"unreadable HDF5 file: {e}") from e
        shards.append({"file": f.name, "foregrounds": fgs, "pairs": sum(fgs.values())})
        total += sum(fgs.values())
    index = {"pairs": total, "shards": shards}
    with atomic_file(out) as tmp:
        tmp.write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
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
        for k, (fe, be) in enumerate(tqdm(todo, desc="testset", unit="pair", **bar_options(progress))):
            fg = _load_prepared(prepared, fe, "image").astype(np.float64)
            matte = _load_prepared(prepared, fe, "matte")
            h, w = matte.shape
            bg = fit_background(_load_prepared(prepared, be, "image"), (h, w), opts.fit).astype(np.float64)
            s = draw_sigma(opts.seed, 10_000_000 + k, opts.sigma)
            alpha = matte.astype(np.float64) / 255.0
            if opts.realistic.active:
                d = draw_realism(opts.seed, 10_000_000 + k, opts.realistic)
                A, B = composite_realistic(fg, alpha, bg, s, opts.realistic, d, gray=False,
                                           noise_seed=(opts.seed, 10_000_000 + k))
            else:
                A, B = composite_float(fg, bg, alpha, s)
            truth = fg * alpha[..., None] + bg * (1.0 - alpha[..., None])
            name = f"{fe['id']}__{be['id']}"
            write_image(tmp / f"{name}-A.png", to_uint8(A))
            write_image(tmp / f"{name}-B.png", to_uint8(B))
            write_image(tmp / f"{name}-truth.png", to_uint8(truth))
            write_image(tmp / f"{name}-dm.png", np.where(matte >= 128, 255, 0).astype(np.uint8))
            pairs.append({"name": name, "foreground": fe["id"], "background": be["id"], "sigma": s, "height": h, "width": w})
        index_params: dict[str, Any] = {"sigma": list(opts.sigma), "fit": opts.fit, "seed": opts.seed}
        if opts.realistic.active:
            index_params["realistic"] = opts.realistic.as_dict()
        index = {"pairs": pairs, "params": index_params}
        (tmp / "index.json").write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return index


# --------------------------------------------------------------------------------------
# Realistic composites (``composite.realistic``): what real cameras add to the paper's pairs
# --------------------------------------------------------------------------------------

KERNELS = ("gaussian", "disc", "mixed")
#: Largest ``composite.realistic.exposure`` (stops): each shot's gain is at most ``2 ** 8`` or at
#: least ``2 ** -8`` there, which turns an 8-bit shot white or black; beyond it no shot changes
#: any more, and from about 2048 stops the gain overflowed (an "internal error").
MAX_EXPOSURE_STOPS = 16.0
#: Largest ``composite.realistic.shift`` (px): beyond any composited pair's side (B is moved off
#: itself); from about 9.2e18 (an int64) the warp crashed the process (a segmentation fault).
MAX_SHIFT_PX = 4096.0


@dataclass(frozen=True)
class Realism:
    """Degradations of real focus brackets, each off at its default (then the composites are
    the paper's, byte for byte). Amounts are maxima: every pair draws its own, uniformly, from
    one seeded stream ``(seed, pair, 2)`` in a fixed order (kernel when ``mixed``, shift,
    magnification, then per shot gain, white balance, gamma, noise, JPEG quality when on).
    The sigma draw is a stream of its own and never changes; switching ``mixed`` or ``jpeg``
    on or off shifts the draws that follow them in that order.

    kernel: the defocus PSF. ``gaussian`` (the paper), ``disc`` (a lens-like disc of radius
        ``2 * sigma`` with a one-pixel soft edge: the same second moment as the Gaussian), or
        ``mixed`` (either, drawn per pair).
    spread: optics at the focus boundary. In B (focused on the background) the blurred
        foreground spreads over the background: ``B = blur(FG * GT) + BG * (1 - blur(GT))``.
        A is unchanged: in the shot focused on the foreground, the blurred background does not
        bleed over it (``A = FG * GT + blur(BG) * (1 - GT)``, as in the paper).
    exposure: largest exposure difference between the shots, in stops (each shot's gain is
        ``2 ** u`` with ``u`` uniform in ``[-exposure/2, exposure/2]``).
    white_balance: largest per-channel gain deviation of a shot (fraction), colour pipeline only.
    gamma: largest ``|gamma - 1|`` of a shot's tone curve ``255 * (x / 255) ** gamma``.
    noise: largest sensor-noise standard deviation of a shot (8-bit levels; Gaussian, the std
        drawn per shot in ``[0, noise]``).
    jpeg: ``(lo, hi)`` JPEG re-compression quality drawn per shot (Pillow, 4:2:0 for colour);
        ``(0, 0)``: none.
    shift: largest misregistration of B (pixels, each axis).
    scale: largest magnification change of B, ``|m - 1|`` (focus breathing), about the centre.
    residual: largest residual defocus of the in-focus layer, as a fraction of ``sigma``: a
        real scene is rarely sharp in one shot and blurred in the other, it is *less* blurred
        (depth within a layer, a third layer behind both). The foreground of A and the
        background of B are blurred by the same kernel with ``r * sigma``, ``r`` drawn per
        shot in ``[0, residual]`` from a stream of its own ``(seed, pair, 4)`` (so the other
        draws do not move); the label stays the matte's: the less blurred layer.

    Order, as a camera makes them: optics (blur, spread), geometry of B (shift, magnification;
    bilinear), exposure and white balance gains, clipping, tone curve, gray conversion (gray
    output), noise, rounding to uint8, JPEG. Labels stay the matte's (aligned with A).
    Training shards are composited in colour only when ``white_balance > 0``; otherwise the
    sources are converted to gray first (3x faster) and the gains, clipping and tone curve act
    on the gray image, an approximation of the colour order above (clipping and the tone
    curve are not linear).
    """

    kernel: str = "gaussian"
    spread: bool = False
    exposure: float = 0.0
    white_balance: float = 0.0
    gamma: float = 0.0
    noise: float = 0.0
    jpeg: tuple[int, int] = (0, 0)
    shift: float = 0.0
    scale: float = 0.0
    residual: float = 0.0

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise UserError(f"composite.realistic.kernel must be one of {KERNELS}, got {self.kernel!r}")
        if not isinstance(self.spread, bool):
            raise UserError(f"composite.realistic.spread must be true or false, got {self.spread!r}")
        for name in ("exposure", "white_balance", "gamma", "noise", "shift", "scale", "residual"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v or not math.isfinite(v):
                raise UserError(f"composite.realistic.{name} must be a finite number >= 0, got {v!r}")
        if self.exposure > MAX_EXPOSURE_STOPS:
            raise UserError(f"composite.realistic.exposure must be at most {MAX_EXPOSURE_STOPS:g} stops (a shot's gain "
                            f"2 ** +-8 already turns it white or black), got {self.exposure!r}")
        if self.shift > MAX_SHIFT_PX:
            raise UserError(f"composite.realistic.shift must be at most {MAX_SHIFT_PX:g} px (B's misregistration; "
                            f"more moves B off any pair), got {self.shift!r}")
        if self.gamma >= 1 or self.white_balance >= 1 or self.scale >= 0.5 or self.residual >= 1:
            raise UserError(
                "composite.realistic: gamma, white_balance and residual must be < 1 and scale < 0.5, got "
                f"gamma={self.gamma}, white_balance={self.white_balance}, residual={self.residual}, "
                f"scale={self.scale}"
            )
        if not isinstance(self.jpeg, tuple) or len(self.jpeg) != 2 or not all(
            isinstance(q, int) and not isinstance(q, bool) for q in self.jpeg
        ):
            raise UserError(f"composite.realistic.jpeg must be [lo, hi] (integers), got {self.jpeg!r}")
        lo, hi = self.jpeg
        if (lo, hi) != (0, 0) and not 1 <= lo <= hi <= 100:
            raise UserError(f"composite.realistic.jpeg must be [0, 0] (off) or [lo, hi] in 1..100, got {list(self.jpeg)}")

    @property
    def active(self) -> bool:
        return self != Realism()

    @classmethod
    def from_mapping(cls, d: dict[str, Any] | None) -> "Realism":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        extra = sorted(set(d) - known)
        if extra:
            raise UserError(f"composite.realistic: unknown key(s) {extra}; known: {sorted(known)}")
        if "jpeg" in d:
            j = d["jpeg"]
            if not isinstance(j, (list, tuple)) or len(j) != 2:
                raise UserError(f"composite.realistic.jpeg must be [lo, hi], got {j!r}")
            if not all(isinstance(q, int) and not isinstance(q, bool) for q in j):
                raise UserError(f"composite.realistic.jpeg must be two integer qualities, got {j!r}")
            d["jpeg"] = (int(j[0]), int(j[1]))
        return cls(**d)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["jpeg"] = list(self.jpeg)
        return d


def disc_kernel(radius: float) -> np.ndarray:
    """A disc PSF of ``radius`` px with a one-pixel linear soft edge, normalised to sum 1."""
    r = max(float(radius), 0.5)
    n = int(np.ceil(r + 0.5))
    y, x = np.mgrid[-n : n + 1, -n : n + 1]
    k = np.clip(r + 0.5 - np.hypot(y, x), 0.0, 1.0)
    return k / k.sum()


def defocus(img: np.ndarray, sigma: float, kernel: str = "gaussian") -> np.ndarray:
    """Blur a float gray (H, W) or colour (H, W, C) image by the Gaussian of ``sigma`` or the
    disc of radius ``2 * sigma`` (reflect borders)."""
    if kernel == "gaussian":
        return blur(img, sigma)
    if kernel != "disc":
        raise UserError(f"unknown defocus kernel {kernel!r}")
    from scipy.signal import fftconvolve

    k = disc_kernel(2.0 * sigma)
    n = k.shape[0] // 2
    pad = ((n, n), (n, n)) + (((0, 0),) if img.ndim == 3 else ())
    x = np.pad(img.astype(np.float64), pad, mode="reflect" if min(img.shape[:2]) > n else "symmetric")
    kk = k if img.ndim == 2 else k[..., None]
    return fftconvolve(x, kk, mode="valid", axes=(0, 1))


@dataclass(frozen=True)
class ShotDraw:
    """One shot's photometric draws."""

    gain: float
    wb: tuple[float, float, float]
    gamma: float
    noise: float
    jpeg: int


@dataclass(frozen=True)
class PairDraw:
    """Everything drawn for one realistic pair (logged with the pair)."""

    kernel: str
    shift: tuple[float, float]
    magnification: float
    a: ShotDraw
    b: ShotDraw
    #: Residual defocus of A's foreground and B's background, fractions of sigma.
    residual: tuple[float, float] = (0.0, 0.0)


def draw_realism(seed: int, pair_id: int, r: Realism) -> PairDraw:
    """The pair's draws, from the stream ``(seed, pair_id, 2)`` (the sigma stream is ``1``;
    every key of the data steps is listed in :mod:`bafusion.data.patches`, whose patch centres
    use a stream of their own, ``5``, for shards holding these draws)."""
    rng = np.random.default_rng([int(seed), int(pair_id), 2])
    kernel = r.kernel if r.kernel != "mixed" else ("gaussian", "disc")[int(rng.integers(2))]
    dy, dx = (float(v) for v in rng.uniform(-r.shift, r.shift, 2))
    mag = float(1.0 + rng.uniform(-r.scale, r.scale))

    def shot() -> ShotDraw:
        gain = float(2.0 ** rng.uniform(-r.exposure / 2, r.exposure / 2))
        wb = tuple(float(v) for v in 1.0 + rng.uniform(-r.white_balance, r.white_balance, 3))
        gamma = float(1.0 + rng.uniform(-r.gamma, r.gamma))
        noise = float(rng.uniform(0.0, r.noise))
        lo, hi = r.jpeg
        q = int(rng.integers(lo, hi + 1)) if hi > 0 else 0
        return ShotDraw(gain, wb, gamma, noise, q)  # type: ignore[arg-type]

    a = shot()
    b = shot()
    res = (0.0, 0.0)
    if r.residual > 0:
        rr = np.random.default_rng([int(seed), int(pair_id), 4]).uniform(0.0, r.residual, 2)
        res = (float(rr[0]), float(rr[1]))
    return PairDraw(kernel, (dy, dx), mag, a, b, res)


def warp_similarity(img: np.ndarray, shift: tuple[float, float], magnification: float) -> np.ndarray:
    """``img`` magnified by ``magnification`` about its centre and moved by ``shift`` = (dy, dx)
    pixels (bilinear, reflect at the borders): output(p) = img(c + (p - c - shift) / m)."""
    if shift == (0.0, 0.0) and magnification == 1.0:
        return img
    h, w = img.shape[:2]
    c = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    m = float(magnification)
    offset = c - (c + np.asarray(shift)) / m
    if img.ndim == 2:
        return ndimage.affine_transform(img, np.array([1 / m, 1 / m]), offset=offset, order=1, mode="reflect")
    return np.stack(
        [ndimage.affine_transform(img[..., k], np.array([1 / m, 1 / m]), offset=offset, order=1, mode="reflect")
         for k in range(img.shape[2])],
        axis=-1,
    )


def _jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality), subsampling=2)
    buf.seek(0)
    with Image.open(buf, formats=("JPEG",)) as im:  # only the JPEG reader (bafusion.io.pillow_open's rule)
        return np.asarray(im.convert("L" if img.ndim == 2 else "RGB")).copy()


def _shot(x: np.ndarray, d: ShotDraw, gray: bool, rng: np.random.Generator) -> np.ndarray:
    """Photometric pipeline of one shot: gains, clip, tone curve, (gray), noise, uint8, JPEG."""
    if x.ndim == 3:
        x = x * (d.gain * np.asarray(d.wb))
    else:
        x = x * d.gain
    x = np.clip(x, 0.0, 255.0)
    if d.gamma != 1.0:
        x = 255.0 * (x / 255.0) ** d.gamma
    if gray:
        x = gray_float(x)
    if d.noise > 0:
        x = x + rng.normal(0.0, d.noise, x.shape)
    out = to_uint8(x)
    if d.jpeg:
        out = _jpeg_roundtrip(out, d.jpeg)
    return out


def composite_realistic(
    fg: np.ndarray,
    alpha: np.ndarray,
    bg: np.ndarray,
    sigma: float,
    realism: Realism,
    draw: PairDraw,
    gray: bool = True,
    noise_seed: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """A and B (uint8, gray when ``gray`` else colour) of one pair with the degradations of
    ``realism`` as drawn in ``draw``. ``fg`` and ``bg`` are float colour (H, W, 3) or gray
    (H, W) in [0, 255], ``alpha`` the matte in [0, 1]. With ``Realism()`` and a gray input,
    equals the paper's composite (:func:`composite_float`, rounded)."""
    k = draw.kernel
    a = alpha if fg.ndim == 2 else alpha[..., None]
    ra, rb = draw.residual
    fg_a = defocus(fg, ra * sigma, k) if ra > 0 else fg  # A's in-focus layer, less blurred than in B
    bg_b = defocus(bg, rb * sigma, k) if rb > 0 else bg  # B's in-focus layer, less blurred than in A
    A = fg_a * a + defocus(bg, sigma, k) * (1.0 - a)
    if realism.spread:
        ba = defocus(alpha, sigma, k)
        ba = ba if fg.ndim == 2 else ba[..., None]
        B = defocus(fg * a, sigma, k) + bg_b * (1.0 - ba)
    else:
        B = defocus(fg, sigma, k) * a + bg_b * (1.0 - a)
    B = warp_similarity(B, draw.shift, draw.magnification)
    rng = np.random.default_rng([int(noise_seed[0]), int(noise_seed[1]), 3])
    return _shot(A, draw.a, gray, rng), _shot(B, draw.b, gray, rng)
