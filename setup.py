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
#: A fenced code block's opening line: up to three spaces, then three or more backticks or tildes.
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
#: An inline code span: a run of backticks, its text, the same run again (within a paragraph).
_CODE_SPAN = re.compile(r"(`+)(?!`)(?:(?!\n[ \t]*\n).)*?(?<!`)\1(?!`)", re.S)


def _prose_and_code(text: str) -> list[tuple[bool, str]]:
    """``text`` cut into its runs of prose (``True``) and its fenced code blocks (``False``,
    fences included), in order; an unclosed fence runs to the end, as in CommonMark."""
    parts: list[tuple[bool, str]] = []
    prose: list[str] = []
    lines = iter(text.splitlines(keepends=True))
    for line in lines:
        m = _FENCE.match(line)
        if m is None or (m.group(1)[0] == "`" and "`" in line[m.end():]):
            prose.append(line)
            continue
        if prose:
            parts.append((True, "".join(prose)))
            prose = []
        block = [line]
        fence = m.group(1)
        for inner in lines:
            block.append(inner)
            close = _FENCE.match(inner)
            if close and close.group(1)[0] == fence[0] and len(close.group(1)) >= len(fence) \
                    and not inner[close.end():].strip():
                break
        parts.append((False, "".join(block)))
    if prose:
        parts.append((True, "".join(prose)))
    return parts


def _plain_links(prose: str) -> str:
    """``prose`` (no fenced code) with its relative links made text; links inside code spans are
    code and stay as written. Inside parentheses the note is written without a bracket of its
    own, ``(see BENCHMARKS.md in the source distribution)``, so that brackets do not nest."""
    spans = [m.span() for m in _CODE_SPAN.finditer(prose)]
    masked = list(prose)  # parentheses inside code spans are not the sentence's
    for start, end in spans:
        masked[start:end] = " " * (end - start)
    breaks = [m.span() for m in re.finditer(r"\n[ \t]*\n", prose)]  # between paragraphs

    def open_parens(at: int) -> int:
        paragraph = max([end for _, end in breaks if end <= at], default=0)
        depth = 0
        for ch in masked[paragraph:at]:
            if ch == "(":
                depth += 1
            elif ch == ")" and depth:
                depth -= 1
        return depth

    def plain(m: re.Match[str]) -> str:
        bang, label, target = m.groups()
        if re.match(r"[a-z][a-z0-9+.-]*:|#|//", target, re.I):
            return m.group(0)
        if any(start < m.start() < end for start, end in spans):
            return m.group(0)
        if not open_parens(m.start()):
            if bang:
                return f"{label} (figure: `{target}` in the source distribution)"
            if label.strip("`") == target:
                return f"{label} (in the source distribution)"
            return f"{label} (`{target}` in the source distribution)"
        if label.strip("`") == target and not bang:
            return f"{label} in the source distribution"
        after = prose[m.end():m.end() + 1]
        close = "" if not after or after in ",.;:!?)]" else ","  # the aside closes before text
        kind = "figure " if bang else ""
        return f"{label}, {kind}`{target}` in the source distribution{close}"

    return _LINK.sub(plain, prose)


def index_readme(text: str) -> str:
    """README.md as the package index shows it: each link to a file of the project (a relative
    target: ``[BENCHMARKS.md](BENCHMARKS.md)``, a figure ``![Fig. 3](docs/figures/...)``) made
    text naming the file, which the source distribution holds (MANIFEST.in); links with a
    scheme (``https:``) and in-page anchors (``#...``) are kept, and so is all text inside
    fenced code blocks and code spans (a command there is shown as written)."""
    return "".join(_plain_links(part) if is_prose else part for is_prose, part in _prose_and_code(text))


if __name__ == "__main__":  # the build runs this file as __main__; tests import index_readme
    setup(cmdclass={"build_py": BuildPyWithModels},
          long_description=index_readme((HERE / "README.md").read_text(encoding="utf-8")),
          long_description_content_type="text/markdown")
