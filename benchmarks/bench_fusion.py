"""Benchmark of dense fusion against the exact (one forward pass per pixel) reference.

Measures, and writes to ``benchmarks/out/bench_fusion.json``:

1. *Agreement*: nets (initial + boundary) trained briefly here on synthetic blur data
   (``--train-depth``, ``--patch``) fuse Lytro pairs downscaled to ``--size`` (exact mode is
   about p*p times slower than dense) in exact mode and in each dense configuration; the
   share of pixels where the decision maps agree, and the times, are reported. Also the
   decision accuracy on synthetic pairs with a known map for several window sizes ``l``.
2. *Speed*: one full-size (520x520) Lytro pair with randomly-initialised ResNet-``--time-depth``
   nets: the trunk pass alone, the dense fusion per configuration, and exact mode on a crop
   (per-pixel cost extrapolated to the full image).

Run: ``.venv/bin/python benchmarks/bench_fusion.py`` (about 10 minutes on 2 cores). The numbers
in ``bafusion.fusion``'s docstring came from (``benchmarks/out/patches`` a copy of the
pipeline's ``data/patches``; trained nets are cached in ``benchmarks/out/nets-*.pt``)::

    bench_fusion.py --fuse-rule paper --threads 1 --train-h5 benchmarks/out/patches --size 256 \
        --pairs 1 2 3 --train-steps 400 --skip synthetic --configs dense4+dense4 dense4+grid8 \
        dense4+adaptive8-2 dense4+exact dense4+grid8-bf16 \
        --time-configs dense4+dense4 dense4+grid8 dense4+grid8-bf16
    bench_fusion.py --fuse-rule paper --threads 1 --skip agreement speed   # synthetic accuracy vs l

Every run fuses under one stated fuse rule, which the output's ``fuse`` records field by field
(and its first line prints): ``--fuse-rule paper`` (the paper preset's ``fuse`` section: w = 1,
no working size, no exposure match) or ``--fuse-rule defaults`` (today's ``FusionParams``
defaults, the default of the option), with ``--fuse-set KEY=VALUE`` over it; each
configuration, exact mode and ``l`` go over the rule. Exact mode is cached in
``benchmarks/out/exact-cache/`` under a key of every setting, the nets, the pair and its size.

With ``--model models/default`` the agreement and synthetic runs use the shipped nets instead,
and the speed run times ResNet-``--time-depth`` nets of patch ``--time-patch`` (random weights:
the time does not depend on them) on the near-boundary pixels that the shipped nets mark on
each full-size pair of ``--time-pairs``. BENCHMARKS.md's "Fusion" agreement table and its
ResNet-56 time table (both with the nets then ``models/default``, now ``models/lytro-2026-11``;
measured with w = 1 before the defaults changed, so under the paper's rule) came from::

    bench_fusion.py --model models/lytro-2026-11 --fuse-rule paper --threads 1 --size 256 \
        --pairs 1 2 3 --retime-exact --skip synthetic speed --configs default default-bf16 \
        dense4+grid8 dense4+grid16 dense4+adaptive16-4 dense4+dense4 grid16+grid8
    bench_fusion.py --model models/lytro-2026-11 --fuse-rule paper --threads 2 \
        --skip agreement synthetic --time-pairs 1 2 3 4 5 --time-depth 56 --time-patch 64

and its agreement of today's nets under today's default ``boundary_weight`` 0.75 (99.22 / 99.32 /
99.75 % on 2026-12-07, "Weighing the boundary net's vote") from::

    bench_fusion.py --model models/default --fuse-rule defaults --threads 1 --size 256 \
        --pairs 1 2 3 --skip synthetic speed --configs default-own-size
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from scipy import ndimage

from bafusion.fusion import (
    FusionNets,
    FusionParams,
    decision_accuracy,
    fuse_images,
    load_nets_from_dir,
)
import bafusion
from bafusion.config import load_preset, load_yaml
from bafusion.io import read_image, resize
from bafusion.nets.model import CifarResNet, build_model, fold_batchnorm

HERE = Path(__file__).resolve().parent
LYTRO = HERE.parent.parent / "shared" / "data" / "eval" / "lytro"
EXACT_CACHE = HERE / "out" / "exact-cache"

#: ``--fuse-rule``: the fuse section every measurement starts from (a configuration of
#: :data:`CONFIGS`, ``exact`` and ``l`` go over it). ``paper``: the paper preset's ``fuse``
#: section (``bafusion preset paper``: w = 1, no working size, no exposure match), which stays
#: the paper's; ``defaults``: today's :class:`FusionParams` defaults, which change between
#: releases (``boundary_weight``, ``working_min``, ``exposure_match`` came after the tables).
FUSE_RULES = ("paper", "defaults")


# ---------------------------------------------------------------- synthetic blur data


def texture(rng: np.random.Generator, h: int, w: int, rgb: bool = False) -> np.ndarray:
    """A multi-scale noise texture, uint8."""
    c = 3 if rgb else 1
    out = np.zeros((h, w, c))
    for s, wt in ((0.7, 1.0), (2.0, 0.7), (6.0, 0.5)):
        n = ndimage.gaussian_filter(rng.standard_normal((h, w, c)), (s, s, 0))
        out += wt * n / n.std()
    out = (out - out.min()) / (out.max() - out.min())
    out = np.round(out * 255).astype(np.uint8)
    return out if rgb else out[..., 0]


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    s = (sigma, sigma, 0) if img.ndim == 3 else sigma
    return np.round(ndimage.gaussian_filter(img.astype(np.float64), s, mode="reflect")).astype(np.uint8)


def blob_mask(rng: np.random.Generator, h: int, w: int, scale: float = 8.0) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal((h, w)), max(h, w) / scale, mode="wrap")
    return n > np.median(n)


def synthetic_pair(rng: np.random.Generator, h: int, w: int, sigma: float = 2.0, rgb: bool = False, scale: float = 8.0):
    """A = sharp*M + blur*(1-M), B = blur*M + sharp*(1-M); returns A, B, M."""
    s = texture(rng, h, w, rgb)
    bl = blur(s, sigma)
    m = blob_mask(rng, h, w, scale)
    mm = m[..., None] if rgb else m
    return np.where(mm, s, bl), np.where(mm, bl, s), m


def train_net(depth: int, patch: int, kind: str, steps: int, seed: int, batch: int = 64, lr: float = 2e-3) -> CifarResNet:
    """Brief Adam training on patches of synthetic pairs: 'initial' samples pixels whose patch is
    wholly focused or defocused, 'boundary' pixels within p/4 of the focus boundary."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = build_model(depth)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    p2 = patch // 2
    net.train()
    for it in range(steps):
        if it % 20 == 0:
            a, b, m = synthetic_pair(rng, 128, 128, sigma=rng.uniform(1.0, 3.0))
            pa = np.pad(a, (p2, patch - p2 - 1), mode="reflect")
            pb = np.pad(b, (p2, patch - p2 - 1), mode="reflect")
            edge = m ^ ndimage.binary_erosion(m, border_value=1)
            if kind == "boundary":
                zone = ndimage.binary_dilation(edge, iterations=patch // 4)
            else:
                zone = ~ndimage.binary_dilation(edge, iterations=p2 + 1)
            rr, cc = np.nonzero(zone)
        sel = rng.integers(0, len(rr), batch)
        r, c = rr[sel], cc[sel]
        xa = np.stack([pa[i : i + patch, j : j + patch] for i, j in zip(r, c)])
        xb = np.stack([pb[i : i + patch, j : j + patch] for i, j in zip(r, c)])
        x = torch.from_numpy(np.stack([xa, xb], 1).astype(np.float32) / 255)
        loss = torch.nn.functional.cross_entropy(net(x), torch.from_numpy(m[r, c].astype(np.int64)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def train_net_h5(depth: int, patch: int, path: Path, steps: int, seed: int, batch: int = 64,
                 lr: float = 2e-3) -> CifarResNet:
    """Brief Adam training on the pipeline's patch file (``data/patches/<net>.h5``: train/x
    (N, 2, s, s) uint8, train/y), centre-cropped to ``patch`` (so the label pixel stays at
    p//2) with random flips and quarter turns."""
    import h5py

    with h5py.File(path, "r") as f:
        x_all = f["train/x"][...]
        y_all = f["train/y"][...].astype(np.int64)
    s = x_all.shape[-1]
    o = s // 2 - patch // 2
    x_all = x_all[:, :, o : o + patch, o : o + patch]
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = build_model(depth)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    net.train()
    for _ in range(steps):
        sel = rng.integers(0, len(x_all), batch)
        x = x_all[sel]
        k = int(rng.integers(0, 4))
        x = np.rot90(x, k, axes=(2, 3))
        if rng.random() < 0.5:
            x = x[..., ::-1]
        xt = torch.from_numpy(np.ascontiguousarray(x).astype(np.float32) / 255)
        loss = torch.nn.functional.cross_entropy(net(xt), torch.from_numpy(y_all[sel]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


# ---------------------------------------------------------------- measurements


def psnr(x: np.ndarray, y: np.ndarray) -> float | None:
    mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    return None if mse == 0 else float(10 * np.log10(255.0**2 / mse))  # None: identical


def lytro_pair(i: int, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    a = read_image(LYTRO / f"lytro-{i:02d}-A.jpg")
    b = read_image(LYTRO / f"lytro-{i:02d}-B.jpg")
    if size:
        a, b = resize(a, (size, size)), resize(b, (size, size))
    return a, b


def fuse_rule(rule: str, sets: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The fuse section that ``--fuse-rule rule`` and ``--fuse-set KEY=VALUE ...`` name: the
    paper preset's ``fuse`` section or ``{}`` (the defaults), with each ``KEY=VALUE`` (VALUE
    read as YAML) over it; checked as ``FusionParams.from_mapping`` checks a section."""
    if rule not in FUSE_RULES:
        raise ValueError(f"--fuse-rule {rule!r}: one of {', '.join(FUSE_RULES)}")
    section = dict(load_preset("paper")["fuse"]) if rule == "paper" else {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--fuse-set {item!r}: KEY=VALUE, e.g. boundary_weight=0.75")
        section[key.strip()] = load_yaml(value)
    FusionParams.from_mapping(section, f"--fuse-rule {rule} --fuse-set")
    return section


def rule_params(section: Mapping[str, Any], **overrides: Any) -> FusionParams:
    """:class:`FusionParams` of the fuse section ``section`` with ``overrides`` (a configuration
    of :data:`CONFIGS`, ``l``, ``exact``) over it."""
    return FusionParams.from_mapping({**section, **overrides})


def params_record(params: FusionParams) -> dict[str, Any]:
    """Every field of ``params``, JSON-ready: what the output states as the settings."""
    return json.loads(json.dumps(dataclasses.asdict(params)))


# Each configuration is a set of overrides over the fuse rule (--fuse-rule, --fuse-set).
CONFIGS = {
    "default": dict(),  # the rule as it is (both rules: dense4 + adaptive p/2 -> p/4, margin 16)
    # the default at the pair's own size: exact mode never upscales small pairs (working_min),
    # so against it the default is compared at the same size
    "default-own-size": dict(working_min=0),
    "default-bf16": dict(precision="bf16"),
    "default-margin0": dict(dense_margin=0),
    "dense4+dense4": dict(initial_step=4, boundary_mode="dense", boundary_step=4),
    "dense4+grid8": dict(initial_step=4, boundary_mode="grid", boundary_step=8),
    "dense4+grid4": dict(initial_step=4, boundary_mode="grid", boundary_step=4),
    "dense4+adaptive8-4": dict(initial_step=4, boundary_mode="adaptive", boundary_step=8, boundary_fine_step=4),
    "dense4+adaptive8-2": dict(initial_step=4, boundary_mode="adaptive", boundary_step=8, boundary_fine_step=2),
    "dense4+adaptive8-1": dict(initial_step=4, boundary_mode="adaptive", boundary_step=8, boundary_fine_step=1),
    "dense2+adaptive8-2": dict(initial_step=2, boundary_mode="adaptive", boundary_step=8, boundary_fine_step=2),
    "dense4+exact": dict(initial_step=4, boundary_mode="exact", boundary_step=1),
    "grid8+grid8": dict(initial_mode="grid", initial_grid_step=8, boundary_mode="grid", boundary_step=8),
    "grid16+grid8": dict(initial_mode="grid", initial_grid_step=16, boundary_mode="grid", boundary_step=8),
    "grid16+grid4": dict(initial_mode="grid", initial_grid_step=16, boundary_mode="grid", boundary_step=4),
    "grid16+adaptive8-2": dict(initial_mode="grid", initial_grid_step=16, boundary_mode="adaptive", boundary_step=8,
                               boundary_fine_step=2),
    "grid16+adaptive8-1": dict(initial_mode="grid", initial_grid_step=16, boundary_mode="adaptive", boundary_step=8,
                               boundary_fine_step=1),
    "dense4+adaptive8-1": dict(initial_step=4, boundary_mode="adaptive", boundary_step=8, boundary_fine_step=1),
    "grid4+grid4": dict(initial_mode="grid", initial_grid_step=4, boundary_mode="grid", boundary_step=4),
    "dense4+grid16": dict(initial_step=4, boundary_mode="grid", boundary_step=16),
    "dense4+adaptive16-8": dict(initial_step=4, boundary_mode="adaptive", boundary_step=16, boundary_fine_step=8),
    "dense4+adaptive16-2": dict(initial_step=4, boundary_mode="adaptive", boundary_step=16, boundary_fine_step=2),
    "grid16+adaptive16-4": dict(initial_mode="grid", initial_grid_step=16, boundary_mode="adaptive", boundary_step=16,
                                boundary_fine_step=4),
    "dense4+adaptive16-4": dict(initial_step=4, boundary_mode="adaptive", boundary_step=16, boundary_fine_step=4),
    "dense4+dense4-bf16": dict(initial_step=4, boundary_mode="dense", boundary_step=4, precision="bf16"),
    "dense4+grid8-bf16": dict(initial_step=4, boundary_mode="grid", boundary_step=8, precision="bf16"),
}


def _nets_digest(nets: FusionNets) -> str:
    h = hashlib.sha256()
    for net in (nets.initial, nets.boundary):
        for k, v in net.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _code_digest() -> str:
    """The installed ``bafusion`` package's Python sources: exact mode is its code."""
    root = Path(bafusion.__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _array_digest(x: np.ndarray) -> str:
    h = hashlib.sha256(f"{x.dtype}{x.shape}".encode())
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()[:16]


def exact_cache_key(a: np.ndarray, b: np.ndarray, nets: FusionNets, params: FusionParams, *,
                    pair: int | str, size: int | None, threads: int) -> tuple[str, dict[str, Any]]:
    """The exact-mode cache's key: a file name and the document it hashes.

    The document holds everything that decides the cached result and its seconds: every field
    of ``params`` (the whole rule, not only ``l``), the nets' weights, patch sides and files
    (SHA-256 of ``nets.sources``), the pair, its size and the input arrays' bytes, the torch
    threads, torch's version and the ``bafusion`` sources. The name starts with
    ``p<pair>-s<size>-l<l>`` for the reader; the rest is the document's hash.
    """
    doc = {
        "params": params_record(params),
        "nets": _nets_digest(nets),
        "patch": [nets.patch_initial, nets.patch_boundary],
        "net_files": [_file_digest(s) if s and Path(s).is_file() else s for s in nets.sources],
        "pair": pair, "size": size, "inputs": [_array_digest(a), _array_digest(b)],
        "threads": threads, "torch": torch.__version__, "bafusion": _code_digest(),
    }
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]
    return f"p{pair}-s{size}-l{params.l}-{digest}", doc


def exact_reference(a: np.ndarray, b: np.ndarray, nets: FusionNets, params: FusionParams, *,
                    pair: int | str, size: int | None, retime: bool = False,
                    cache_dir: Path | None = None):
    """Exact-mode fusion (one forward pass per pixel) under ``params`` (``exact`` set here),
    cached in ``cache_dir`` (default benchmarks/out/exact-cache/) under
    :func:`exact_cache_key`: it is by far the slowest part of the benchmark.
    Returns (result, seconds) with the seconds of the run that made the cache entry
    (``retime``: run it again, so that the speed-ups come from one run)."""
    from types import SimpleNamespace

    params = dataclasses.replace(params, exact=True)
    name, doc = exact_cache_key(a, b, nets, params, pair=pair, size=size, threads=torch.get_num_threads())
    path = (cache_dir or EXACT_CACHE) / f"{name}.npz"
    if path.is_file() and not retime:
        z = np.load(path)
        if "key" in z.files and json.loads(str(z["key"])) == doc:
            ref = SimpleNamespace(**{k: z[k] for k in ("decision", "decision_raw", "score_initial", "fused",
                                                       "near_boundary")})
            return ref, float(z["seconds"])
    t0 = time.perf_counter()
    ref = fuse_images(a, b, nets, params)
    t = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, decision=ref.decision, decision_raw=ref.decision_raw, score_initial=ref.score_initial,
                            fused=ref.fused, near_boundary=ref.near_boundary, seconds=t,
                            key=json.dumps(doc, sort_keys=True))
    os.replace(tmp, path)
    return ref, t


def agreement(args: argparse.Namespace, nets: FusionNets, report: dict) -> None:
    rows = []
    for i in args.pairs:
        a, b = lytro_pair(i, args.size)
        for l in args.ls:
            ref, t_exact = exact_reference(a, b, nets, rule_params(args.rule_section, l=l), pair=i, size=args.size,
                                           retime=args.retime_exact, cache_dir=Path(args.exact_cache))
            for name in args.configs or list(CONFIGS):
                cfg = CONFIGS[name]
                t0 = time.perf_counter()
                r = fuse_images(a, b, nets, rule_params(args.rule_section, l=l, **cfg))
                t = time.perf_counter() - t0
                row = {
                    "pair": i, "l": l, "config": name,
                    "agree_dm": float((r.decision == ref.decision).mean()),
                    "agree_raw": float((r.decision_raw == ref.decision_raw).mean()),
                    "agree_initial": float(((r.score_initial > 0.5) == (ref.score_initial > 0.5)).mean()),
                    # where the decision matters: fused pixels within 2 gray levels of the exact fusion
                    "agree_fused": float((np.abs(r.fused.astype(int) - ref.fused.astype(int)).reshape(
                        r.fused.shape[0], r.fused.shape[1], -1).max(axis=2) <= 2).mean()),
                    "psnr_fused_vs_exact": psnr(r.fused, ref.fused),
                    "near_fraction": float(ref.near_boundary.mean()),
                    "seconds": t, "seconds_exact": t_exact, "speedup": t_exact / t,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    report["agreement"] = rows
    summary = {}
    for name in args.configs or list(CONFIGS):
        sel = [r for r in rows if r["config"] == name]
        summary[name] = {
            "min_agree_dm": min(r["agree_dm"] for r in sel),
            "mean_agree_dm": float(np.mean([r["agree_dm"] for r in sel])),
            "min_agree_fused": min(r["agree_fused"] for r in sel),
            "mean_speedup": float(np.mean([r["speedup"] for r in sel])),
        }
    report["agreement_summary"] = summary
    print(json.dumps(summary, indent=1), flush=True)


def synthetic_accuracy(args: argparse.Namespace, nets: FusionNets, report: dict) -> None:
    rng = np.random.default_rng(99)
    pairs = [synthetic_pair(rng, 128, 128, sigma=2.0, rgb=True, scale=4.0) for _ in range(2)]
    out = {}
    for l in args.synthetic_ls:
        for mode in ("exact", "default"):
            accs, band, band0 = [], [], []
            for a, b, m in pairs:
                cfg = {"exact": True} if mode == "exact" else {}
                r = fuse_images(a, b, nets, rule_params(args.rule_section, l=l, **cfg))
                accs.append(decision_accuracy(r.decision, m))
                band.append(decision_accuracy(r.decision_raw, m, band=4))
                band0.append(decision_accuracy(r.score_initial > 0.5, m, band=4))
            out[f"l={l} {mode}"] = {
                "dm_accuracy": float(np.mean(accs)), "band4_refined": float(np.mean(band)),
                "band4_initial": float(np.mean(band0)),
            }
            print(f"l={l} {mode}", out[f"l={l} {mode}"], flush=True)
    report["synthetic_accuracy_vs_l"] = out


def speed(args: argparse.Namespace, report: dict) -> None:
    """Times of ResNet-``time_depth`` nets, trained for ``time_train_steps`` steps only (a random
    net's scores are nearly constant, which would leave no boundary to refine), on one
    full-size Lytro pair: the trunk pass alone, then the whole fusion per configuration."""
    p = args.patch
    t0 = time.perf_counter()
    h5 = Path(args.train_h5) if args.train_h5 else None
    if h5 is not None and (h5 / "initial.h5").is_file() and (h5 / "boundary.h5").is_file():
        ni = train_net_h5(args.time_depth, p, h5 / "initial.h5", args.time_train_steps, seed=3, batch=32)
        nb = train_net_h5(args.time_depth, p, h5 / "boundary.h5", args.time_train_steps, seed=4, batch=32)
    else:
        ni = train_net(args.time_depth, p, "initial", args.time_train_steps, seed=3, batch=32)
        nb = train_net(args.time_depth, p, "boundary", args.time_train_steps, seed=4, batch=32)
    print(f"trained two ResNet-{args.time_depth} for {args.time_train_steps} steps in {time.perf_counter() - t0:.1f} s",
          flush=True)
    nets = FusionNets(ni, nb, p, p, torch.device("cpu"))
    a, b = lytro_pair(args.time_pair)
    h, w = a.shape[:2]
    x = torch.rand(1, 2, h + p + 8, w + p + 8)  # the trunk pass alone, as fusion makes it
    with torch.inference_mode():
        ni.trunk(x)
        t0 = time.perf_counter()
        ni.trunk(x)
        t_trunk = time.perf_counter() - t0
    res: dict = {"depth": args.time_depth, "size": [h, w], "trunk_seconds": t_trunk, "configs": {}}
    print(f"ResNet-{args.time_depth} {h}x{w}: trunk pass {t_trunk:.3f} s", flush=True)
    for name in args.time_configs:
        t0 = time.perf_counter()
        r = fuse_images(a, b, nets, rule_params(args.rule_section, l=args.ls[0], **CONFIGS[name]))
        t = time.perf_counter() - t0
        res["configs"][name] = {"seconds": t, "over_trunk": t / t_trunk, "near_fraction": float(r.near_boundary.mean()),
                                "stages": {k: round(v, 3) for k, v in r.seconds.items()}}
        print(name, json.dumps(res["configs"][name]), flush=True)
    c = args.exact_crop
    t0 = time.perf_counter()
    ref = fuse_images(a[:c, :c], b[:c, :c], nets, rule_params(args.rule_section, exact=True))
    t_ex = time.perf_counter() - t0
    full_exact = t_ex * h * w / (c * c)
    res["exact_crop"] = {"size": c, "seconds": t_ex, "extrapolated_full_seconds": full_exact,
                         "near_fraction": float(ref.near_boundary.mean())}
    res["speedup_vs_extrapolated_exact"] = {k: full_exact / v["seconds"] for k, v in res["configs"].items()}
    print(json.dumps({k: res[k] for k in ("exact_crop", "speedup_vs_extrapolated_exact")}, indent=1), flush=True)
    report["speed"] = res


def speed_with_model_mask(args: argparse.Namespace, nets: FusionNets, report: dict) -> None:
    """ResNet-``time_depth`` at patch ``time_patch`` (random weights: the time does not depend
    on them) timed on what the trained nets (``--model``) make it compute on each full-size
    Lytro pair of ``--time-pairs``: the dense initial pass over the whole image; the boundary
    net on the trained nets' near-boundary pixels, as exact patches on the grid of step p/4,
    as exact patches at the positions that the trained boundary net's adaptive run (coarse
    p/2, fine p/4 of the timed patch side) evaluates there, and dense on tiles; the
    post-processing. Also times the trained nets' own default fusion."""
    from bafusion.fusion import (
        auto_step,
        remove_small_regions,
        score_adaptive,
        score_dense,
        score_grid,
        window_mean,
    )
    from bafusion.fusion.scoring import _PatchScorer
    from bafusion.io import to_gray_u8

    p = args.time_patch
    torch.manual_seed(0)
    # as fusion runs them (FusionNets): BatchNorm folded, channels-last
    ni, nb = fold_batchnorm(build_model(args.time_depth).eval()), fold_batchnorm(build_model(args.time_depth).eval())
    ni, nb = ni.to(memory_format=torch.channels_last), nb.to(memory_format=torch.channels_last)
    base = rule_params(args.rule_section)
    margin, tile = base.dense_margin, base.tile
    fine = auto_step(p)
    rows = []
    for i in args.time_pairs:
        a, b = lytro_pair(i)
        t0 = time.perf_counter()
        real = fuse_images(a, b, nets, rule_params(args.rule_section, l=args.ls[0]))
        t_real = time.perf_counter() - t0
        near = real.near_boundary
        ga, gb = to_gray_u8(a), to_gray_u8(b)
        st: dict = {}
        score_adaptive(nets.boundary, ga, gb, nets.patch_boundary, near, coarse=2 * fine, fine=fine, stats=st)
        pr, pc = st["positions"]
        row = {"pair": i, "near_fraction": float(near.mean()), "trained_nets_seconds": t_real,
               "adaptive_patches": int(len(pr))}
        for prec in args.time_precisions:
            amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16")
            with torch.inference_mode(), amp:
                score_dense(ni, ga[:64, :64], gb[:64, :64], p, margin=margin)  # warm-up
                t0 = time.perf_counter()
                s0 = score_dense(ni, ga, gb, p, step=4, margin=margin)
                t_init = time.perf_counter() - t0
                t0 = time.perf_counter()
                score_grid(nb, ga, gb, p, near, step=fine)
                t_grid = time.perf_counter() - t0
                t0 = time.perf_counter()
                _PatchScorer(nb, ga, gb, p, 0, torch.device("cpu")).get(pr, pc)
                t_adapt = time.perf_counter() - t0
                t0 = time.perf_counter()
                score_dense(nb, ga, gb, p, step=4, mask=near, tile=tile, margin=margin)
                t_dense = time.perf_counter() - t0
            t0 = time.perf_counter()
            window_mean(s0, args.ls[0])
            remove_small_regions(real.decision_raw, 0.01)
            t_post = time.perf_counter() - t0
            row[prec] = {"initial": t_init, "boundary_grid": t_grid, "boundary_adaptive": t_adapt,
                         "boundary_dense": t_dense, "post": t_post,
                         "total_grid": t_init + t_grid + t_post, "total_adaptive": t_init + t_adapt + t_post,
                         "total_dense": t_init + t_dense + t_post}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report["speed_model_mask"] = {"depth": args.time_depth, "patch": p, "threads": torch.get_num_threads(), "pairs": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="use these trained nets (folder with initial.pt, boundary.pt, e.g. models/default) for the"
                         " agreement and synthetic runs instead of training small ones here")
    ap.add_argument("--train-depth", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--train-h5", default=None,
                    help="train the agreement nets on this folder's initial.h5/boundary.h5 (the pipeline's"
                         " data/patches) instead of synthetic blur data")
    ap.add_argument("--fuse-rule", choices=FUSE_RULES, default="defaults",
                    help="the fuse settings every run starts from (each configuration, exact mode and l go over"
                         " them): 'paper', the paper preset's fuse section (w = 1, no working size, no exposure"
                         " match: BENCHMARKS.md's agreement tables); 'defaults', today's FusionParams defaults"
                         " (default: %(default)s). The output's 'fuse' states every setting")
    ap.add_argument("--fuse-set", nargs="+", default=[], metavar="KEY=VALUE",
                    help="fuse settings over --fuse-rule's, e.g. boundary_weight=0.75 (VALUE read as YAML)")
    ap.add_argument("--exact-cache", default=str(EXACT_CACHE),
                    help="folder of the exact-mode cache, keyed by every setting, the nets, pair and size"
                         " (default: %(default)s)")
    ap.add_argument("--retime-exact", action="store_true",
                    help="run exact mode again even when cached, so that every speed-up is measured in this run")
    ap.add_argument("--configs", nargs="+", default=None, help="configurations of the agreement run (default all)")
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--size", type=int, default=128, help="Lytro pairs downscaled to this side for exact mode")
    ap.add_argument("--pairs", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--ls", type=int, nargs="+", default=[8])
    ap.add_argument("--synthetic-ls", type=int, nargs="+", default=[2, 4, 8, 12])
    ap.add_argument("--time-depth", type=int, default=56)
    ap.add_argument("--time-pair", type=int, default=1)
    ap.add_argument("--time-train-steps", type=int, default=40)
    ap.add_argument("--time-configs", nargs="+", default=["dense4+dense4", "dense4+grid8", "dense4+adaptive8-4",
                                                          "dense4+adaptive8-2", "dense4+adaptive8-1"])
    ap.add_argument("--exact-crop", type=int, default=48)
    ap.add_argument("--time-patch", type=int, default=64, help="patch side of the timed nets (with --model)")
    ap.add_argument("--time-pairs", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="full-size pairs timed with --model")
    ap.add_argument("--time-precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["agreement", "synthetic", "speed"])
    ap.add_argument("--out", default=str(HERE / "out" / "bench_fusion.json"))
    args = ap.parse_args(argv)
    try:
        args.rule_section = fuse_rule(args.fuse_rule, args.fuse_set)
    except Exception as e:  # noqa: BLE001 - a bad --fuse-set: one line, before any work
        ap.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    fuse = {"rule": args.fuse_rule, "set": list(args.fuse_set), "params": params_record(rule_params(args.rule_section)),
            "configs": {name: CONFIGS[name] for name in (args.configs or CONFIGS)}}
    print(f"fuse rule {args.fuse_rule}{' with ' + ' '.join(args.fuse_set) if args.fuse_set else ''}: "
          + json.dumps(fuse["params"]), flush=True)
    report: dict = {"args": {k: v for k, v in vars(args).items() if k != "rule_section"},
                    "threads": torch.get_num_threads(), "fuse": fuse}
    nets: FusionNets | None = None
    if not LYTRO.is_dir():
        print(f"Lytro pairs not found at {LYTRO}", file=sys.stderr)
        return 2
    if args.model and not {"agreement", "synthetic"} <= set(args.skip):
        nets = load_nets_from_dir(args.model, "cpu")
        report["model"] = list(nets.sources)
        if nets.patch_initial != args.patch:
            args.patch = nets.patch_initial
        print(f"nets from {args.model} (patch {nets.patch_initial})", flush=True)
        if "synthetic" not in args.skip:
            synthetic_accuracy(args, nets, report)
        if "agreement" not in args.skip:
            agreement(args, nets, report)
    elif not {"agreement", "synthetic"} <= set(args.skip):
        t0 = time.perf_counter()
        h5 = Path(args.train_h5) if args.train_h5 else None
        use_h5 = h5 is not None and (h5 / "initial.h5").is_file() and (h5 / "boundary.h5").is_file()
        report["train_data"] = str(h5) if use_h5 else "synthetic"
        cache = HERE / "out" / f"nets-d{args.train_depth}-p{args.patch}-s{args.train_steps}-{'h5' if use_h5 else 'synth'}.pt"
        ni, nb = build_model(args.train_depth), build_model(args.train_depth)
        if cache.is_file():  # the same training, cached by an earlier run
            si, sb = torch.load(cache, weights_only=True)
            ni.load_state_dict(si)
            nb.load_state_dict(sb)
            ni.eval(), nb.eval()
        elif use_h5:
            ni = train_net_h5(args.train_depth, args.patch, h5 / "initial.h5", args.train_steps, seed=1)
            nb = train_net_h5(args.train_depth, args.patch, h5 / "boundary.h5", args.train_steps, seed=2)
        else:
            ni = train_net(args.train_depth, args.patch, "initial", args.train_steps, seed=1)
            nb = train_net(args.train_depth, args.patch, "boundary", args.train_steps, seed=2)
        if not cache.is_file():
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save((ni.state_dict(), nb.state_dict()), cache)
        report["train_seconds"] = time.perf_counter() - t0
        print(f"trained two ResNet-{args.train_depth} in {report['train_seconds']:.1f} s", flush=True)
        nets = FusionNets(ni, nb, args.patch, args.patch, torch.device("cpu"))
        if "synthetic" not in args.skip:
            synthetic_accuracy(args, nets, report)
        if "agreement" not in args.skip:
            agreement(args, nets, report)
    if "speed" not in args.skip:
        if args.model:
            speed_with_model_mask(args, nets or load_nets_from_dir(args.model, "cpu"), report)
        else:
            speed(args, report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
