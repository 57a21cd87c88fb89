"""What checking the parameters against the schema costs a command at start-up.

    .venv/bin/python benchmarks/bench_config.py            # 5 fresh processes per measurement

Each repetition starts fresh Python processes (nothing imported, nothing cached) and times, in
the same round so that a shared machine slows all alike: importing bafusion.schema and checking
the committed params.yaml once; further checks of the same dict; and ``import torch``, which
every training or fusion command pays anyway (the reference). Writes
``benchmarks/out/bench_config.json`` and ``.md`` (the folder is git-ignored).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out"

PROBE = r"""
import json, sys, time, yaml
params = yaml.safe_load(open(sys.argv[1]))
t0 = time.perf_counter()
from bafusion.schema import validate_params
validate_params(params)
t1 = time.perf_counter()
for _ in range(50):
    validate_params(params)
t2 = time.perf_counter()
import torch  # noqa: F401
t3 = time.perf_counter()
print(json.dumps({"first_check_s": t1 - t0, "later_check_s": (t2 - t1) / 50, "import_torch_s": t3 - t2}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    args = ap.parse_args()
    rows = []
    for _ in range(args.repeats):
        p = subprocess.run([sys.executable, "-c", PROBE, args.params], capture_output=True, text=True, check=True)
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    ratio = med["first_check_s"] / med["import_torch_s"]
    result = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
              "repeats": args.repeats, "median": med, "first_check_over_import_torch": ratio, "runs": rows}
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_config.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ("| import + first check | later check | import torch | first check / import torch |\n|---|---|---|---|\n"
          f"| {med['first_check_s'] * 1e3:.0f} ms | {med['later_check_s'] * 1e3:.1f} ms | "
          f"{med['import_torch_s'] * 1e3:.0f} ms | {ratio:.2f} |\n")
    (OUT / "bench_config.md").write_text(md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
