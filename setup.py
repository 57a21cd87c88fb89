"""Build hook (the project's metadata is pyproject.toml's): the shipped nets reach the wheel.

``bafusion/models/<name>/`` in the wheel comes from the symlink ``src/bafusion/models ->
../../models``. A checkout made without symlinks (``git clone -c core.symlinks=false``, Git
for Windows' default, a GitHub "Download ZIP") has a 12-byte text file there instead, and
setuptools built a wheel without the nets, silently: ``bafusion fuse`` then found none. The
wheel's nets are now copied from ``models/<name>/`` when the package data lacks them, and the
build fails, naming what is missing, when neither has them.

The long description (the package index's page) is README.md with its relative links made
plain text (:func:`index_readme`): there they led nowhere (an index shows the text alone), and
the project publishes no address to make them absolute against.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
#: The shipped models (pyproject.toml's package-data names the same folders) and the files
#: each must have.
SHIPPED = ("default", "lytro-2026-11")
NET_FILES = ("initial.pt", "initial.json", "boundary.pt", "boundary.json")


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() and (folder / f).stat().st_size > 200 for f in NET_FILES)


class BuildPyWithModels(build_py):
    """``build_py`` that puts ``models/<name>/`` into ``bafusion/models/<name>/`` when the
    symlink did not, and fails when neither holds the nets."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install runs from the checkout
            return
        target = Path(self.build_lib) / "bafusion" / "models"
        for name in SHIPPED:
            if _complete(target / name):
                continue
            source = HERE / "models" / name
            if not _complete(source):
                raise SystemExit(
                    f"bafusion build: the shipped model {name!r} is missing: neither src/bafusion/models/{name} "
                    f"nor models/{name} holds {', '.join(NET_FILES)} (a Git LFS pointer or a checkout without "
                    "symlinks and without models/?); the wheel would have no nets for `bafusion fuse`")
            if target.exists() and not target.is_dir():
                target.unlink()
            shutil.copytree(source, target / name, dirs_exist_ok=True)


#: A Markdown link or image, ``[text](target)`` / ``![alt](target)`` (the text may span lines).
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def index_readme(text: str) -> str:
    """README.md as the package index shows it: each link to a file of the project (a relative
    target: ``[BENCHMARKS.md](BENCHMARKS.md)``, a figure ``![Fig. 3](docs/figures/...)``) made
    text naming the file, which the source distribution holds (MANIFEST.in); links with a
    scheme (``https:``) and in-page anchors (``#...``) are kept."""

    def plain(m: re.Match[str]) -> str:
        bang, label, target = m.groups()
        if re.match(r"[a-z][a-z0-9+.-]*:|#|//", target, re.I):
            return m.group(0)
        if bang:
            return f"{label} (figure: `{target}` in the source distribution)"
        if label.strip("`") == target:
            return f"{label} (in the source distribution)"
        return f"{label} (`{target}` in the source distribution)"

    return _LINK.sub(plain, text)


setup(cmdclass={"build_py": BuildPyWithModels},
      long_description=index_readme((HERE / "README.md").read_text(encoding="utf-8")),
      long_description_content_type="text/markdown")
