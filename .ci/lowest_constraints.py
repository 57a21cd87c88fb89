"""Print pip constraints ``name==version`` pinning each dependency of pyproject.toml to the
lowest release its bounds allow: the core dependencies and the ``test`` extra (with the extras
it names, ``bafusion[pipeline]``). An ``==X`` pin stays; for a ``>=X`` bound the package index
(``pip index versions``, pip's own configuration) gives the oldest final release that meets all
the requirement's bounds (``>=2023.1`` is tifffile 2023.1.23, no 2023.1.0 exists). A dependency
with no lower bound is refused: its lowest version is not declared.

Used by .ci/lowest.sh; run by the Python of the venv it fills (it reads versions with the
``packaging`` that pip vendors).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

try:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version
except ImportError:  # a fresh venv: pip's copy
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.version import InvalidVersion, Version

REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*(;.*)?$")


def requirements(project: dict, extras: list[str]) -> list[str]:
    """The core dependencies and those of ``extras``, self-references (``name[x]``) expanded."""
    name = project["name"].lower()
    optional = project.get("optional-dependencies", {})
    out, seen, todo = list(project.get("dependencies", [])), set(), list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            sys.exit(f"pyproject.toml: no optional dependency group {extra!r}")
        for req in optional[extra]:
            m = REQ.match(req)
            if m and m.group(1).lower() == name:
                todo.extend(e.strip() for e in (m.group(2) or "[]")[1:-1].split(",") if e.strip())
            else:
                out.append(req)
    return out


def available(name: str) -> list[Version]:
    """The versions of ``name`` that pip's indexes offer this Python."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", name],
        capture_output=True, text=True, check=False,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("Available versions:")), None)
    if out.returncode or line is None:
        sys.exit(f"pip index versions {name} failed:\n{out.stdout}{out.stderr}")
    versions = []
    for text in line.split(":", 1)[1].split(","):
        try:
            versions.append(Version(text.strip()))
        except InvalidVersion:
            pass
    return versions


def lowest(req: str) -> str:
    """``name==lowest`` for one requirement string, or exit naming the one without a bound."""
    m = REQ.match(req)
    if not m or m.group(4):
        sys.exit(f"pyproject.toml: cannot read the requirement {req!r}")
    name, spec = m.group(1), SpecifierSet(m.group(3))
    pins = [s for s in spec if s.operator in ("==", "===") and "*" not in s.version]
    if pins:
        return f"{name}=={pins[0].version}"
    if not any(s.operator in (">=", ">", "~=") for s in spec):
        sys.exit(f"pyproject.toml: {req!r} declares no lowest version (>= or ==)")
    fits = sorted(v for v in available(name) if not v.is_prerelease and v in spec)
    if not fits:
        sys.exit(f"no release of {name} meets {req!r} on the package index")
    return f"{name}=={fits[0]}"


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = sys.argv[1:] or ["test"]
    # one index query a package, all at once (each takes seconds)
    with ThreadPoolExecutor(max_workers=8) as pool:
        for line in pool.map(lowest, requirements(project, extras)):
            print(line)


if __name__ == "__main__":
    main()
