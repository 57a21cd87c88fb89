"""Noise matching before scoring (``fuse.noise_match``, :func:`bafusion.fusion.exposure.match_noise`):
does it fire, and what does it change? Shipped nets, default fusion parameters, one torch thread.

``--eval``: the noise estimates of every pair under ``../shared/data/eval`` (Lytro, real,
classic) and whether the matching fires there (no fusion: where it does not fire, the nets see
the same arrays, so the decision is the same by construction).

``--kinds K,...``: the held-out realistic validation set (``realistic_validation.py``, 10 pairs
per kind): the estimates of each pair; where the matching fires, the pair fused with it off and
on (decision accuracy, within 8 px of the boundary, where the sources differ; PSNR).

``--one-shot A|B --sigmas S,...``: the validation set's ``--kinds`` pairs with seeded white
Gaussian noise of std S (per channel, gray levels) added to ONE shot, fused with it off and on.

    python benchmarks/bench_noise_match.py --eval
    python benchmarks/bench_noise_match.py --kinds 'noise + JPEG,all,paper,strong blur,exposure,misregistration'
    python benchmarks/bench_noise_match.py --kinds paper --one-shot B --sigmas 3,8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))


def _gray_pair(a, b):
    from bafusion.fusion.exposure import match_exposure
    from bafusion.io import to_gray_u8

    ga, gb = to_gray_u8(a), to_gray_u8(b)
    return ga, match_exposure(ga, gb)  # as the pair rule: B at A's exposure first


def _fires(a, b):
    from bafusion.fusion.exposure import match_noise

    ga, gb = _gray_pair(a, b)
    ga2, gb2, (sa, sb) = match_noise(ga, gb)
    return ga2 is not ga or gb2 is not gb, sa, sb


def _scores(a, b, truth, tdm, differ, nets):
    from bafusion.evaluation.evaluate import truth_metrics
    from bafusion.fusion import FusionParams, decision_accuracy, fuse_images

    out = {}
    for on in (False, True):
        r = fuse_images(a, b, nets, FusionParams.from_mapping({"noise_match": on}))
        out["on" if on else "off"] = {"acc": decision_accuracy(r.decision, tdm),
                                      "band": decision_accuracy(r.decision, tdm, 8),
                                      "differ": float((r.decision == tdm)[differ].mean()),
                                      "PSNR": truth_metrics(truth, r.fused)["PSNR"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval", action="store_true", help="the estimates on the eval pairs (no fusion)")
    ap.add_argument("--kinds", default="", help="validation kinds (comma-separated)")
    ap.add_argument("--one-shot", choices=("A", "B"), default=None, help="add noise to this shot of every pair")
    ap.add_argument("--sigmas", default="3,8", help="noise std (gray levels) for --one-shot")
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "eval"))
    args = ap.parse_args(argv)
    if args.eval:
        from PIL import Image

        fired = 0
        pairs = sorted(Path(args.data).glob("*/*-A.*"))
        for pa in pairs:
            pb = next(pa.parent.glob(pa.name.replace("-A.", "-B.").rsplit(".", 1)[0] + ".*"))
            a, b = (np.asarray(Image.open(p).convert("RGB")) for p in (pa, pb))
            f, sa, sb = _fires(a, b)
            fired += f
            print(json.dumps({"pair": f"{pa.parent.name}/{pa.name}", "sA": round(sa, 3), "sB": round(sb, 3),
                              "fired": f}), flush=True)
        print(f"fired on {fired} of {len(pairs)} pairs")
    if args.kinds:
        import torch

        import realistic_validation as rv
        from bafusion.fusion import load_nets_from_dir

        torch.set_num_threads(1)
        nets = load_nets_from_dir(None, "cpu")
        for kind in [k.strip() for k in args.kinds.split(",") if k.strip()]:
            for k, (name, a, b, truth, tdm) in enumerate(rv.make_pairs(kind, 10)):
                differ = rv.differing_pixels(a, b)
                cases = [(None, a, b)]
                if args.one_shot:
                    cases = []
                    for sig in (float(s) for s in args.sigmas.split(",")):
                        x = a if args.one_shot == "A" else b
                        rng = np.random.default_rng([777, k, int(sig * 10)])
                        xn = np.clip(np.round(x + rng.normal(0, sig, x.shape)), 0, 255).astype(np.uint8)
                        cases.append((sig, *((xn, b) if args.one_shot == "A" else (a, xn))))
                for sig, aa, bb in cases:
                    f, sa, sb = _fires(aa, bb)
                    row = {"kind": kind, "pair": name, "shot": args.one_shot, "sigma": sig,
                           "sA": round(sa, 3), "sB": round(sb, 3), "fired": f}
                    if f or args.one_shot:
                        row.update(_scores(aa, bb, truth, tdm, differ, nets))
                    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
