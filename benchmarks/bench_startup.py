"""How long a ``bafusion`` command takes to start: the parser of every command module against
the parser of the one module that registers the command (``bafusion.cli.app.COMMANDS``).

    .venv/bin/python benchmarks/bench_startup.py            # 5 fresh processes per measurement

Each repetition starts fresh Python processes (nothing imported) and times, in the same round
so that a shared machine slows all alike, for every command: building the parser and
refusing a mistyped option (``bafusion CMD --no-such-option``, which exits 2 before any
work), once with every module's parser (as before) and once with the command's module alone;
and ``import torch`` as the reference. Writes ``benchmarks/out/bench_startup.json`` and
``.md`` (the folder is git-ignored).
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
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from bafusion.cli.app import COMMANDS  # noqa: E402

PROBE = r"""
import contextlib, io, json, sys, time
t0 = time.perf_counter()
from bafusion.cli.app import build_parser
cmd, lazy = sys.argv[1], sys.argv[2] == "1"
parser = build_parser(cmd if lazy else None)
with contextlib.redirect_stderr(io.StringIO()):
    try:
        parser.parse_args([cmd, "--no-such-option"])
    except SystemExit as e:
        assert e.code == 2
t1 = time.perf_counter()
print(json.dumps({"s": t1 - t0, "torch": "torch" in sys.modules}))
"""

TORCH = "import json, time; t0 = time.perf_counter(); import torch; print(json.dumps({'s': time.perf_counter() - t0}))"


def _run(*args: str) -> dict:
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True, env=env)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--commands", nargs="*", default=["fuse", "train", "evaluate", "metrics", "baseline", "preset",
                                                      "composite", "patches", "download-eval"])
    args = ap.parse_args()
    runs: dict[str, dict[str, list]] = {c: {"all": [], "one": [], "torch_all": [], "torch_one": []}
                                        for c in args.commands}
    torch_s: list[float] = []
    for _ in range(args.repeats):
        torch_s.append(_run("-c", TORCH)["s"])
        for c in args.commands:
            for mode, flag in (("all", "0"), ("one", "1")):
                r = _run("-c", PROBE, c, flag)
                runs[c][mode].append(r["s"])
                runs[c][f"torch_{mode}"].append(r["torch"])
    rows = []
    for c in args.commands:
        a, o = statistics.median(runs[c]["all"]), statistics.median(runs[c]["one"])
        rows.append({"command": c, "module": COMMANDS[c], "every_module_s": a, "its_module_s": o,
                     "ratio": o / a, "imports_torch": bool(runs[c]["torch_one"][0])})
    med_torch = statistics.median(torch_s)
    result = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
              "repeats": args.repeats, "import_torch_s": med_torch, "rows": rows, "runs": runs}
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_startup.json").write_text(json.dumps(result, indent=1) + "\n")
    md = ("| command | every module's parser | its module's parser | ratio | imports torch |\n"
          "|---|---:|---:|---:|---|\n")
    for r in rows:
        md += (f"| `{r['command']}` | {r['every_module_s'] * 1e3:.0f} ms | {r['its_module_s'] * 1e3:.0f} ms | "
               f"{r['ratio']:.2f} | {'yes' if r['imports_torch'] else 'no'} |\n")
    md += f"\n`import torch` alone: {med_torch * 1e3:.0f} ms (median of {args.repeats}).\n"
    (OUT / "bench_startup.md").write_text(md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
