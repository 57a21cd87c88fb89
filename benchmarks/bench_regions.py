"""Small-region removal: islands then holes (the default) against the symmetric rule
(``fuse.symmetric_regions``), and how often the order of the two removals matters.

Each pair is fused once with the defaults (shipped nets, one torch thread); the removal rules
are applied to its raw decision map (``FusionResult.decision_raw``, ``min_region`` as set):

- ``seq``: islands first, then the holes of what is left (the default, ``decision``);
- ``rev``: the complement of the same rule on the complementary map, i.e. what fusing (B, A)
  would give if the nets' scores were exact complements (holes first);
- ``sym``: :func:`bafusion.fusion.remove_small_regions` with ``symmetric=True``.

On the held-out realistic validation set (``realistic_validation.py``'s pairs: decision
accuracy over all pixels / within 8 px of the true boundary / where the sources differ) and on
the real development pairs (``$BAFUSION_SHARED_DATA/eval/real``: QMI, QG, QY, QCB of the
lossless fused image; the pairs whose maps agree are scored once). Prints one JSON line per
pair and a summary.

    python benchmarks/bench_regions.py                    # both sets
    python benchmarks/bench_regions.py --sets heldout --pairs 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(HERE))

RULES = ("seq", "rev", "sym")


def _maps(raw: np.ndarray, min_region: float) -> dict[str, np.ndarray]:
    from bafusion.fusion import remove_small_regions

    return {"seq": remove_small_regions(raw, min_region), "rev": ~remove_small_regions(~raw, min_region),
            "sym": remove_small_regions(raw, min_region, symmetric=True)}


def _counts(raw: np.ndarray, maps: dict[str, np.ndarray]) -> dict[str, int]:
    return {"pixels": int(raw.size), "seq_vs_rev": int((maps["seq"] != maps["rev"]).sum()),
            "seq_vs_sym": int((maps["seq"] != maps["sym"]).sum())}


def heldout(nets, params, n_pairs: int) -> list[dict]:
    import realistic_validation as rv

    from bafusion.fusion import decision_accuracy, fuse_images

    rows = []
    for kind in rv.KINDS:
        for name, a, b, _truth, tdm in rv.make_pairs(kind, n_pairs):
            r = fuse_images(a, b, nets, params)
            maps = _maps(r.decision_raw, params.min_region)
            differ = rv.differing_pixels(a, b)
            row = {"set": "heldout", "kind": kind, "pair": name, **_counts(r.decision_raw, maps)}
            for k, dm in maps.items():
                row[k] = {"accuracy": decision_accuracy(dm, tdm), "band": decision_accuracy(dm, tdm, 8),
                          "differ": float((dm == tdm)[differ].mean())}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def real(nets, params, folder: Path) -> list[dict]:
    from bafusion.evaluation.metrics import compute_all
    from bafusion.fusion import fuse_images
    from bafusion.fusion.rule import _match_channels, fuse_with_map
    from bafusion.io import read_image

    rows = []
    for fa in sorted(folder.glob("*-A.*")):
        fb = next(iter(sorted(folder.glob(fa.name.replace("-A.", "-B.").rsplit(".", 1)[0] + ".*"))))
        a, b = read_image(fa), read_image(fb)
        r = fuse_images(a, b, nets, params)
        maps = _maps(r.decision_raw, params.min_region)
        ma, mb = _match_channels(a, b)
        row = {"set": "real", "pair": fa.name.split("-A.")[0], **_counts(r.decision_raw, maps)}
        seq = compute_all(ma, mb, fuse_with_map(ma, mb, maps["seq"]), ["QMI", "QG", "QY", "QCB"])
        for k, dm in maps.items():
            row[k] = seq if np.array_equal(dm, maps["seq"]) else compute_all(
                ma, mb, fuse_with_map(ma, mb, dm), ["QMI", "QG", "QY", "QCB"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def summary(rows: list[dict]) -> str:
    lines = []
    for s in ("heldout", "real"):
        sel = [r for r in rows if r["set"] == s]
        if not sel:
            continue
        px = sum(r["pixels"] for r in sel)
        lines.append(f"{s}: {len(sel)} pairs; the order matters on {sum(r['seq_vs_rev'] > 0 for r in sel)} "
                     f"({sum(r['seq_vs_rev'] for r in sel)} of {px} pixels, at most "
                     f"{100 * max(r['seq_vs_rev'] / r['pixels'] for r in sel):.3f} % of a pair); symmetric differs "
                     f"from islands-then-holes on {sum(r['seq_vs_sym'] > 0 for r in sel)} "
                     f"({sum(r['seq_vs_sym'] for r in sel)} pixels)")
        keys = sel[0]["seq"].keys()
        for k in RULES:
            lines.append(f"  {k}: " + " / ".join(f"{q} {np.mean([r[k][q] for r in sel]):.5f}" for q in keys))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="heldout,real", help="heldout, real or both (default)")
    ap.add_argument("--pairs", type=int, default=10, help="held-out pairs per kind (default 10)")
    ap.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    ap.add_argument("--out", default=str(HERE / "out" / "bench_regions.json"))
    args = ap.parse_args(argv)
    import torch

    from bafusion.fusion import FusionParams, load_nets_from_dir

    torch.set_num_threads(1)
    nets, params = load_nets_from_dir(args.model, "cpu"), FusionParams()
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    rows = heldout(nets, params, args.pairs) if "heldout" in sets else []
    if "real" in sets:
        shared = Path(os.environ.get("BAFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))
        rows += real(nets, params, shared / "eval" / "real")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
