"""Exposure drift across a focal stack (session 39): the chain rule's exposure reference.

Synthetic focus sweeps with ground truth (3 layers: a COCO background and two alphamatting
foregrounds; N shots focused evenly over a defocus range of Gaussian sigma 6, the layers in
focus in shots 0, round((N - 1) / 2) and N - 1), or ``--kind layers`` (:func:`stack_from_data`'s
N-layer stacks), each fused as given and with a steady exposure drift (shot k times
``lo + (hi - lo) * k / (N - 1)``, clipped) by three chains that differ only in the exposure
the nets score each step at (``exposure_match: auto``, the default):

* ``running``: each new shot's gray fitted to the fusion so far (the chain before session 39);
* ``first``: every shot's gray mapped onto the first shot's, each step's A the composite of the
  matched grays (the joint rule's reference);
* ``middle``: the same onto the middle shot's: :func:`bafusion.fusion.fuse_stack` as shipped.

Per fusion: the share of decidable pixels taken from the right shot and the PSNR against the
ideal fusion of the same (drifted) shots (each pixel from the shot focused on its layer).

Run: OMP_NUM_THREADS=1 python benchmarks/bench_stack_drift.py --out benchmarks/out/drift.jsonl
[--kind sweep|layers] [--n 3 5 8] [--seeds 0 1 2] [--drifts none 0.9:1.1 1.1:0.9]
(shipped nets, CPU, one torch thread; appends one JSON line per fusion). Reads
``$BAFUSION_SHARED_DATA`` (default ``../shared/data``)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from bafusion.data.composite import defocus, fit_background
from bafusion.fusion import FusionParams, fuse_stack, load_nets_from_dir
from bafusion.fusion.exposure import _matched_b, auto_mode
from bafusion.fusion.rule import _fuse_pair, checked_params
from bafusion.fusion.stack import (
    StackOptions,
    SyntheticStack,
    _place,
    chain_index,
    compose,
    load_foreground,
    stack_accuracy,
    stack_from_data,
    stack_truth,
    visibility_weights,
)
from bafusion.io import gray_float, read_image, to_gray_u8, to_uint8

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BAFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))


def sweep_stack(data, n, seed, size=384, span=6.0, kernel="gaussian"):
    """A focus sweep of ``n`` shots over 3 layers (module docstring), deterministic for ``seed``."""
    am = Path(data) / "train" / "alphamatting"
    coco = Path(data) / "train" / "coco" / "train2017"
    names = sorted(p.stem for p in (am / "gt").glob("*.png"))
    bgs = sorted(coco.glob("*.jpg"))
    rng = np.random.default_rng([int(seed), 7])
    pick = rng.choice(len(names), 2, replace=False)
    bg = bgs[int(rng.integers(len(bgs)))]
    fgs = [load_foreground(am, names[i]) for i in pick]
    rng = np.random.default_rng([int(seed), 3, 14])
    layers = [
        fit_background(read_image(bg, rgb=True), (size, size), "cover").astype(
            np.float64
        )
    ]
    alphas = [np.ones((size, size))]
    for fg, m in fgs:
        c, a = _place(
            fg.astype(np.float64),
            m.astype(np.float64) / 255.0,
            size,
            float(rng.uniform(0.45, 0.8)),
            rng,
        )
        layers.append(c)
        alphas.append(a)
    focus = np.linspace(0, span, n)
    lshot = [0, round((n - 1) / 2), n - 1]  # the shot focused on each layer
    depth = focus[lshot]
    weights = visibility_weights(alphas)
    owner_layer = weights.argmax(0)
    shots = []
    own = np.zeros((size, size))
    for k in range(n):
        acc = np.zeros((size, size, 3))
        cover = []
        for j in range(3):
            sig = abs(focus[k] - depth[j])
            a = (
                alphas[j]
                if sig == 0
                else np.clip(defocus(alphas[j], sig, kernel), 0, 1)
            )
            c = layers[j] * alphas[j][..., None]
            c = c if sig == 0 else defocus(c, sig, kernel)
            acc = c + (1 - a[..., None]) * acc
            cover.append(a)
        shots.append(to_uint8(acc))
        if k in lshot:
            j = lshot.index(k)
            wk = visibility_weights(cover)[j]
            own[owner_layer == j] = wk[owner_layer == j]
    owner = np.asarray(lshot)[owner_layer]
    truth, mixed, flat = stack_truth(
        own, owner, [gray_float(s) for s in shots], StackOptions(layers=3, size=size)
    )
    st = SyntheticStack(
        shots,
        truth,
        weights.astype(np.float32),
        mixed,
        flat,
        [str(bg)] + [names[i] for i in pick],
    )
    st.owner = owner
    return st


def drifted(shots, lo, hi):
    """Shot k times ``lo + (hi - lo) * k / (n - 1)``, rounded and clipped."""
    n = len(shots)
    return [
        to_uint8(
            np.clip(
                np.round(s.astype(np.float64) * (lo + (hi - lo) * k / (n - 1))), 0, 255
            )
        )
        for k, s in enumerate(shots)
    ]


def chain_fixed(images, nets, params, ref="first"):
    """The chain with every gray mapped onto shot 0's (``first``) or shot (n - 1) // 2's exposure."""
    params = checked_params(params)
    grays = [to_gray_u8(im) for im in images]
    n = len(images)
    if params.exposure_match != "none":
        mode = (
            auto_mode(*grays)
            if params.exposure_match == "auto"
            else params.exposure_match
        )
        r = (
            int(np.argmax([float(g.mean()) for g in grays]))
            if mode == "brighter"
            else (0 if ref == "first" else (n - 1) // 2)
        )
        matched = [
            (g, 255)
            if i == r
            else _matched_b(grays[r], g, mode, step=params.exposure_fit_step)
            for i, g in enumerate(grays)
        ]
        top = min(t for _, t in matched)
        grays = [g for g, _ in matched]
        if top < 255:
            grays = [np.minimum(g, np.uint8(top)) for g in grays]
    res = []
    cur = images[0]
    cg = grays[0]
    for i in range(1, n):
        r_ = _fuse_pair(
            cur,
            images[i],
            nets,
            params,
            (f"f{i}", f"s{i}"),
            None,
            note_patch=False,
            grays=(cg, grays[i]),
        )
        cur = r_.fused
        cg = np.where(r_.decision, cg, grays[i])
        res.append(r_)
    return res


def chain_running(
    images, nets, params
):  # fuse_stack as it was before the change (each shot onto the fusion so far)
    res = []
    cur = images[0]
    for i in range(1, len(images)):
        r_ = _fuse_pair(
            cur, images[i], nets, params, (f"f{i}", f"s{i}"), None, note_patch=False
        )
        cur = r_.fused
        res.append(r_)
    return res


def psnr(a, b):
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255**2 / mse) if mse > 0 else float("inf")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", default="sweep")
    ap.add_argument("--n", type=int, nargs="+", default=[3, 5, 8])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--drifts", nargs="+", default=["none", "0.9:1.1"])
    ap.add_argument("--refs", nargs="+", default=["running", "first", "middle"])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    nets = load_nets_from_dir(None, "cpu")
    P = FusionParams()
    for n in a.n:
        for seed in a.seeds:
            if a.kind == "sweep":
                st = sweep_stack(DATA, n, seed, a.size)
                owner = st.owner
            else:
                st = stack_from_data(DATA, StackOptions(layers=n, size=a.size), seed)
                owner = st.weights.argmax(0)
            for d in a.drifts:
                shots = (
                    st.shots
                    if d == "none"
                    else drifted(st.shots, *map(float, d.split(":")))
                )
                ideal = compose(shots, owner)
                for ref in a.refs:
                    t0 = time.perf_counter()
                    if ref == "running":
                        res = chain_running(shots, nets, P)
                    elif ref == "middle":  # as shipped
                        res = fuse_stack(shots, nets, P, keep_maps=False)
                    else:
                        res = chain_fixed(shots, nets, P, ref)
                    idx = chain_index(res)
                    row = dict(
                        kind=a.kind,
                        n=n,
                        seed=seed,
                        drift=d,
                        ref=ref,
                        acc=stack_accuracy(idx, st.truth),
                        psnr=psnr(res[-1].fused, ideal),
                        s=time.perf_counter() - t0,
                        amb=float((st.truth < 0).mean()),
                    )
                    print(json.dumps(row), flush=True)
                    with open(a.out, "a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
