"""Make a throw-away copy of the project with a tiny configuration, for end-to-end runs of
the real Snakemake workflow and DVC pipeline."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
#: pyproject.toml: the copy is a bafusion checkout (bafusion.checkout.source_checkout), as every real
#: one and a DVC experiment's temporary copy are: its runs record its commit as the code's.
COPY = ("Snakefile", "dvc.yaml", "params.yaml", "workflow", "src", ".dvcignore", "pyproject.toml")

#: Small enough to run every stage in seconds on 2 cores.
TINY: dict[str, Any] = {
    "patch": 16,
    "depth": 8,
    "data": {
        "source": "builtin",
        "builtin": {"foregrounds": ["chelsea", "coffee", "astronaut"], "backgrounds": ["brick", "grass", "camera", "coins"]},
        "holdout_foregrounds": 1,
        "holdout_backgrounds": 1,
    },
    "prepare": {"scale": 0.25},
    "composite": {"shards": 2},
    "patches": {"per_pair": 6, "boundary_per_pair": 6},
    # no milestones: at epochs 1 the lr never drops (and [1] drew a warning at every snakemake call)
    "train": {"epochs": 1, "batch": 16, "milestones": [], "samples_per_epoch": 64, "val_samples": 32, "threads": 1},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if k in out and isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e.get("PATH", "")
    e["DVC_NO_ANALYTICS"] = "1"
    e["MLFLOW_DISABLE_TELEMETRY"] = "true"
    e.setdefault("GIT_AUTHOR_NAME", "test")
    e.setdefault("GIT_AUTHOR_EMAIL", "test@example.invalid")
    e.setdefault("GIT_COMMITTER_NAME", "test")
    e.setdefault("GIT_COMMITTER_EMAIL", "test@example.invalid")
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


def make_project(dest: Path, overrides: dict[str, Any] | None = None, git: bool = True) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = _merge(params, TINY)
    if overrides:
        params = _merge(params, overrides)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".gitignore").write_text((REPO / ".gitignore").read_text())
    if git:
        run(["git", "init", "-q", "-b", "main"], dest)
        run(["dvc", "init", "-q"], dest)
        run(["git", "add", "-A"], dest)
        run(["git", "commit", "-q", "-m", "tiny project"], dest)
    return dest


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def downstream(dvc_yaml: Path, stage: str) -> set[str]:
    """The stage and every stage that depends on its outputs, transitively."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]

    def outs(s: dict) -> list[str]:
        return [next(iter(o)) if isinstance(o, dict) else o for o in s.get("outs", [])]

    result = {stage}
    changed = True
    while changed:
        changed = False
        produced = [o for name in result for o in outs(stages[name])]
        for name, s in stages.items():
            deps = s.get("deps", [])
            if name not in result and any(d == o or d.startswith(o.rstrip("/") + "/") for d in deps for o in produced):
                result.add(name)
                changed = True
    return result


def shell_commands(output: str) -> dict[str, argparse.Namespace]:
    """rule name -> its command's arguments as ``bafusion`` parses them, from the output of
    ``snakemake -n -p``."""
    from bafusion.cli.app import build_parser

    found: dict[str, argparse.Namespace] = {}
    for m in re.finditer(r"^(?:local)?rule (\w+):\n(.*?)(?=^(?:local)?rule \w+:|\Z)", output, re.M | re.S):
        cmd = [ln.strip() for ln in m.group(2).splitlines() if ln.strip().startswith("Shell command: bafusion ")]
        if cmd:
            words = shlex.split(cmd[0][len("Shell command: "):])
            words = words[1:words.index(">")] if ">" in words else words[1:]
            found[m.group(1)] = build_parser(words[0]).parse_args(words)
    return found
