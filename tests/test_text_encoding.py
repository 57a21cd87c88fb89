"""Text files are UTF-8 whatever the locale, and names the locale cannot decode are still shown."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest


# --------------------------------------------------------------------------------------------
# Text files are UTF-8 whatever the locale (Windows' cp1252, a POSIX locale that is not UTF-8)

#: Calls that open a file in text mode: the callable's name, and where its mode is given
#: (positional index), for the checks of :func:`_text_opens_without_encoding`.
_OPENERS = {"open": 1, "fdopen": 1, "NamedTemporaryFile": 0, "TemporaryFile": 0, "SpooledTemporaryFile": 1,
            "TextIOWrapper": None, "read_text": None, "write_text": None}
#: Receivers of an ``.open()`` that is not a text open (Pillow's image, a zip member, os's fd open,
#: urllib's opener).
_BINARY_OPENERS = {"Image", "zf", "os", "_OPENER"}


def _text_opens_without_encoding(tree: ast.AST) -> list[int]:
    """The lines of ``tree``'s calls that open a file in text mode without ``encoding=``."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name):
            name, receiver = func.id, None
            if name == "write_text":  # bafusion.atomic.write_text(path, text): UTF-8 itself
                continue
        elif isinstance(func, ast.Attribute):
            name = func.attr
            receiver = func.value.id if isinstance(func.value, ast.Name) else None
        else:
            continue
        if name not in _OPENERS or receiver in _BINARY_OPENERS:
            continue
        if any(k.arg == "encoding" for k in node.keywords):
            continue
        where = _OPENERS[name]
        if where is not None:
            if name == "open" and receiver is not None:
                where = 0  # Path.open(mode)
            mode = next((k.value for k in node.keywords if k.arg == "mode"), None)
            if mode is None and len(node.args) > where:
                mode = node.args[where]
            if mode is None and name in ("NamedTemporaryFile", "TemporaryFile", "SpooledTemporaryFile"):
                continue  # binary by default
            modes = [mode.body, mode.orelse] if isinstance(mode, ast.IfExp) else [mode]
            if all(isinstance(m, ast.Constant) and isinstance(m.value, str) and "b" in m.value for m in modes):
                continue
        lines.append(node.lineno)
    return lines


def test_every_text_file_is_opened_with_an_encoding() -> None:
    """Text files read or written without ``encoding=`` were read and written in the locale's
    encoding: cp1252 on Windows (metrics.csv of a pair named 日本 failed to be written, after the
    work), a UTF-8 BOM of a params file hid its first section. Every text open in ``src/`` names
    its encoding (``utf-8``, ``utf-8-sig`` where a file may come from an editor)."""
    src = Path(__file__).resolve().parents[1] / "src" / "bafusion"
    found = []
    for f in sorted(src.rglob("*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"), str(f))
        found += [f"{f.relative_to(src)}:{line}" for line in _text_opens_without_encoding(tree)]
    assert found == []


def test_the_check_for_text_opens_finds_them() -> None:
    code = ("open(p)\nopen(p, 'rb')\nopen(p, 'w', encoding='utf-8')\np.read_text()\np.write_text(t)\n"
            "p.read_bytes()\nwrite_text(p, t)\nImage.open(p)\np.open('a')\np.open('rb')\n"
            "tempfile.NamedTemporaryFile('w')\ntempfile.NamedTemporaryFile()\nio.TextIOWrapper(f)\n"
            "open(p, mode='r+b')\nopen(p, 'ab' if a else 'wb')\nopen(p, 'a' if a else 'wb')\nopen(p, mode)\n")
    assert _text_opens_without_encoding(ast.parse(code)) == [1, 4, 5, 9, 11, 13, 16, 17]


def _in_legacy_locale(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (ASCII) in a Python whose locale encoding is not UTF-8 (the C locale without UTF-8
    mode or locale coercion: ASCII), as Windows' cp1252 or a Latin-1 POSIX locale are."""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONIOENCODING": "utf-8"}
    env.pop("LANGUAGE", None)
    p = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                       encoding="utf-8", timeout=300)
    return p


def _csv_written_in_legacy_locale(code: str, cwd: Path, want: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a locale that is not UTF-8 (:func:`_in_legacy_locale`), check that it
    ran through and that the ``m.csv`` it wrote in ``cwd`` is ``want`` in UTF-8; the run."""
    p = _in_legacy_locale(code, cwd)
    assert p.returncode == 0, p.stderr
    assert (cwd / "m.csv").read_bytes() == want.encode()
    return p


def test_params_and_outputs_are_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """In a locale that is not UTF-8, a params file with a UTF-8 BOM and a comment "by Ádám" was
    refused as "invalid YAML: 'charmap' codec can't decode byte 0x81" (in cp1252, the BOM made the
    first key "ï»¿fuse" and its section was ignored); a CSV output with a pair named 日本 failed to
    be written (UnicodeEncodeError, after the work). Now both are UTF-8: the file's values are
    checked as in any locale, and the output holds the name."""
    (tmp_path / "p.yaml").write_bytes("\ufefffuse:\n  l: -5\n# notes by Ádám\n".encode())
    code = ("import locale, sys\n"
            "from bafusion.atomic import write_text\n"
            "from bafusion.config import load_params\n"
            "from bafusion.errors import UserError\n"
            "assert 'utf' not in locale.getpreferredencoding(False).lower(), locale.getpreferredencoding(False)\n"
            "write_text('m.csv', 'pair,QG\\n\\u65e5\\u672c,0.5\\n')\n"  # the code itself is ASCII
            "try:\n"
            "    load_params('p.yaml')\n"
            "except UserError as e:\n"
            "    print(e)\n")
    p = _csv_written_in_legacy_locale(code, tmp_path, "pair,QG\n日本,0.5\n")
    assert "fuse.l" in p.stdout and "invalid YAML" not in p.stdout, p.stdout


def test_a_reference_metrics_csv_with_a_bom_is_read(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a BOM: its first column was '\\ufeffpair' and the file was
    refused, "expected columns pair, method and metrics; got ['\\ufeffpair', 'method', 'QG']"."""
    from bafusion.evaluation.evaluate import read_peer_metrics

    csv_path = tmp_path / "peers.csv"
    csv_path.write_bytes("\ufeffpair,method,QG\r\ncafé,Peer1,0.7\r\n".encode())
    peers = read_peer_metrics(csv_path)
    assert peers.values == {("café", "Peer1"): {"QG": 0.7}}


def test_figures_of_names_undecodable_in_the_locale_are_drawn(tmp_path: Path) -> None:
    """Under a cp1252 or ASCII locale a pair file named Ádám (UTF-8 bytes C3 81 ...) has a name
    holding lone surrogates: its figure titles failed in matplotlib ("TypeError: set_text():
    incompatible function arguments") and evaluate ended in "internal error" with nothing
    written. The titles now show the name (read back as UTF-8)."""
    from types import SimpleNamespace

    import numpy as np

    from bafusion.evaluation.figures import figure_comparison, figure_differences
    from bafusion.fusion.maps import displayable, figure_maps

    name = "caf\udcc3\udca9"  # café's UTF-8 bytes as os.fsdecode gives them where they are no text
    if os.fsencode(name) != "café".encode():
        pytest.skip("the file system encoding here is not UTF-8")
    assert displayable(name) == "café" and displayable("日本 x") == "日本 x"
    assert displayable("a\udcff") == "a\ufffd"
    img = np.tile(np.arange(32, dtype=np.uint8), (32, 1))
    figure_comparison(img, img, {f"ref {name}": img}, tmp_path / "fig4.png", title=f"{name}: enlarged")
    figure_differences(img, {f"ref {name}": img}, tmp_path / "diff.png", title=f"{name}: diff", a=img)
    score = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    result = SimpleNamespace(score_initial=score, score_refined=score, decision=score > 0.5, fused=img)
    figure_maps(result, tmp_path / "fig3.png", title=name)
    assert all((tmp_path / f).stat().st_size > 0 for f in ("fig4.png", "diff.png", "fig3.png"))


def test_an_output_naming_a_file_undecodable_in_the_locale_is_written(tmp_path: Path) -> None:
    """Under a locale that is not UTF-8, the pair Ádám (a UTF-8 file name) is named with lone
    surrogates, which UTF-8 cannot hold: evaluate fused it, then failed writing metrics.csv
    ("surrogates not allowed", internal error, nothing kept). Such a name is written as the
    UTF-8 it was."""
    code = ("import os\n"
            "from bafusion.atomic import write_text\n"
            "name = os.fsdecode(b'\\xc3\\x81d\\xc3\\xa1m')\n"
            "assert any(0xd800 <= ord(c) <= 0xdfff for c in name), ascii(name)\n"
            "write_text('m.csv', 'pair,method\\n' + name + ',\\u65e5\\u672c\\n')\n")
    _csv_written_in_legacy_locale(code, tmp_path, "pair,method\nÁdám,日本\n")


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX file name of bytes that are no UTF-8")
@pytest.mark.parametrize("locale,env_more", [
    ("C.UTF-8", {}), ("C", {}),  # stdout UTF-8, surrogateescape (Python's in these locales)
    ("C", {"PYTHONUTF8": "0"}),  # ASCII, surrogateescape
    ("C.UTF-8", {"PYTHONIOENCODING": "utf-8:strict"}),  # strict, as in a UTF-8 locale such as en_US.UTF-8
])
def test_a_name_undecodable_in_the_locale_on_stdout_and_stderr(
        tmp_path: Path, locale: str, env_more: dict[str, str]) -> None:
    """A file name holding the byte FD (no UTF-8) was printed as ``\\udcfd`` on stderr (its
    ``backslashreplace``) and on a strict stdout: both now write it ``\\xfd``. A stdout whose
    handler is ``surrogateescape`` (Python's in the C, POSIX and C.UTF-8 locales and in UTF-8
    mode) writes the name's own bytes, as it did before main set the readable handler on it too:
    a script reading the output back gets the file's path (the text ``\\xfd`` named no file)."""
    import numpy as np
    from PIL import Image

    folder = os.fsencode(tmp_path) + b"/d\xfd"
    os.mkdir(folder)
    for name in (b"a\xfd.png", b"b.png"):
        Image.fromarray(np.arange(24 * 20, dtype=np.uint8).reshape(24, 20) % 251).save(
            os.fsdecode(folder + b"/" + name))
    with open(folder + b"/bad\xfd.png", "wb") as f:
        f.write(b"no image")
    env = {**os.environ, "LC_ALL": locale, "LANG": locale, "BAFUSION_MLFLOW": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    env.pop("PYTHONIOENCODING", None)
    env.pop("PYTHONUTF8", None)
    env.update(env_more)
    fused = subprocess.run([sys.executable, "-m", "bafusion", "baseline", b"d\xfd/a\xfd.png", b"d\xfd/b.png",
                            "-o", b"d\xfd/F\xfd.png"], cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert fused.returncode == 0, fused.stderr
    if not env_more.get("PYTHONIOENCODING"):  # the name's bytes: the path a script reads back is the file's
        assert fused.stdout.startswith(b"fused 2 images into d\xfd/F\xfd.png with gff"), fused.stdout
        assert (tmp_path / os.fsdecode(fused.stdout.split(b" into ")[1].split(b" with ")[0])).is_file()
    else:
        assert fused.stdout.startswith(b"fused 2 images into d\\xfd/F\\xfd.png with gff"), fused.stdout
    bad = subprocess.run([sys.executable, "-m", "bafusion", "metrics", *[b"d\xfd/bad\xfd.png"] * 3],
                         cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.startswith(b"bafusion metrics: error: d\\xfd/bad\\xfd.png: unreadable image"), bad.stderr
