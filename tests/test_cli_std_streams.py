"""The commands with a failing standard output (``> /dev/full``) or a closed standard error
(``2>&-``), run as a user runs them: a process of its own, with and without PYTHONUNBUFFERED."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_tiny_nets

SRC = Path(__file__).resolve().parents[1] / "src"
PAIRS = ("p", "q")


def _env(unbuffered: bool) -> dict[str, str]:
    """A user's environment (no PYTHONUNBUFFERED: stdout is buffered) or a CI's (PYTHONUNBUFFERED=1)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update(PYTHONPATH=str(SRC), BAFUSION_MLFLOW="0")
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


def _pairs(folder: Path) -> Path:
    """Two small pairs ``p-A.png``/``p-B.png``, ``q-...`` in ``folder`` (with fuse-set's index.json)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in PAIRS:
        for shot in "AB":
            Image.fromarray(rng.integers(0, 256, (32, 28), dtype=np.uint8)).save(folder / f"{name}-{shot}.png")
    (folder / "index.json").write_text(json.dumps(list(PAIRS)))
    return folder


#: Each command's line and the outputs it must leave complete.
CASES = {
    "fuse": (["fuse", "pairs/p-A.png", "pairs/p-B.png", "-o", "F.png", "--model", "nets", "--device", "cpu"],
             ["F.png"]),
    "fuse-dir": (["fuse-dir", "pairs", "out", "--model", "nets", "--device", "cpu", "--threads", "1"],
                 [f"out/{n}.png" for n in PAIRS]),
    "fuse-set": (["fuse-set", "--pairs", "pairs", "--models", "nets", "--out", "out", "--device", "cpu",
                  "--threads", "1"], [f"out/{n}.png" for n in PAIRS]),
    "evaluate": (["evaluate", "--dataset", "mine=pairs", "--methods", "Laplacian", "--metrics", "QG", "--threads",
                  "1", "-o", "ev"], ["ev/metrics.json", "ev/mine/table1.md", "ev/mine/metrics.csv",
                                     *[f"ev/mine/fused/Laplacian/{n}.png" for n in PAIRS]]),
    "baseline": (["baseline", "pairs/p-A.png", "pairs/p-B.png", "-o", "F.png"], ["F.png"]),
}


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("command", list(CASES))
def test_a_full_standard_output_drops_the_lines_and_keeps_the_outputs(tmp_path: Path, command: str,
                                                                       unbuffered: bool) -> None:
    """`fuse ... -o F.png > /dev/full` (fuse-dir, baseline) said "F.png: No space left on device"
    (with PYTHONUNBUFFERED=1) though F.png was written whole: the failed write of its line on
    stdout was blamed on the output (for fuse-dir, status 2 is documented as a full disk);
    evaluate and fuse-set stopped at their first per-pair line and discarded the whole output
    folder. Now the standard output is named, once, the lines are dropped, the work goes on and
    every output is written; the status is 2."""
    _pairs(tmp_path / "pairs")
    make_tiny_nets(tmp_path / "nets")
    argv, outputs = CASES[command]
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "bafusion", *argv], stdin=subprocess.DEVNULL, stdout=full,
                           stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=_env(unbuffered), timeout=600)
    lines = [x for x in r.stderr.splitlines() if "(writing the standard output)" in x]
    assert r.returncode == 2, r.stderr
    assert lines == [f"bafusion {command}: error: No space left on device (writing the standard output): what it "
                     "prints there is dropped from now on; the command goes on and keeps its outputs, and ends with "
                     "a non-zero status"], r.stderr
    assert "No space left" not in r.stderr.replace(lines[0], ""), r.stderr  # no output blamed, nothing at exit
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    for out in outputs:
        assert (tmp_path / out).is_file(), (out, r.stderr)
        if out.endswith(".png"):
            with Image.open(tmp_path / out) as im:
                im.load()  # written whole


@pytest.mark.skipif(sys.platform == "win32", reason="closes fd 2 in the child (preexec_fn)")
@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_a_closed_standard_error_does_not_write_into_the_result(tmp_path: Path, unbuffered: bool) -> None:
    """`metrics A B F --format json 2>&- > m.json` on constant images put its four "undefined"
    warnings before the JSON (Python sets sys.stderr to None, and print(file=None) writes to
    stdout), and `count --params nope.yaml 2>&-` printed its error line to stdout: the result
    on stdout is now the result alone (the diagnostics go nowhere, as the user asked)."""
    for name in ("A", "B", "F"):
        Image.fromarray(np.full((64, 64), 128, dtype=np.uint8)).save(tmp_path / f"c-{name}.png")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bafusion", *argv], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, text=True, cwd=tmp_path, env=_env(unbuffered), timeout=300,
                              preexec_fn=lambda: os.close(2))  # noqa: PLW1509 - a test's child only

    r = run("metrics", "c-A.png", "c-B.png", "c-F.png", "--format", "json")
    assert r.returncode == 0, r.stdout
    assert json.loads(r.stdout)["QCB"] is None, r.stdout  # the case that warns (a 0/0 ratio)
    r = run("count", "--params", "nope.yaml")
    assert r.returncode == 2 and r.stdout == "", r.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="closes fds in the child (preexec_fn)")
def test_closed_standard_streams_are_not_taken_by_the_files_the_command_opens(tmp_path: Path) -> None:
    """With fds 0, 1 and 2 closed, the first files a command opened took their numbers (a lock
    file became "stdout"): main opens them on /dev/null first."""
    code = ("import os, sys\n"
            "from bafusion.cli import main\n"
            "rc = main(['--version'])\n"
            "with open(sys.argv[1], 'w') as fh:\n"
            "    fh.write(' '.join(os.path.realpath(f'/proc/self/fd/{fd}') for fd in (0, 1, 2)) + f' {fh.fileno()}')\n")
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "fds")], env=_env(False), timeout=300, check=True,
                   preexec_fn=lambda: [os.close(fd) for fd in (0, 1, 2)])  # noqa: PLW1509 - a test's child only
    *std, own = (tmp_path / "fds").read_text().split()
    assert std == [os.devnull] * 3 and int(own) > 2, (std, own)


@pytest.mark.skipif(sys.platform == "win32", reason="closes fds in the child (preexec_fn)")
@pytest.mark.parametrize("closed", [(1,), (0, 1, 2)], ids=["stdout", "all"])
def test_the_processes_a_command_starts_get_its_reopened_standard_streams(tmp_path: Path,
                                                                         closed: tuple[int, ...]) -> None:
    """A closed descriptor 0-2 that main reopens on /dev/null is opened in place (the lowest free
    number), and os.open makes it close-on-exec: the processes the command then starts (train's
    torchrun launcher) found it closed again, and their first file took its number. Main makes
    it inheritable, as the standard descriptors are."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("no /proc")
    child = ("import os, sys\n"
             "fds = []\n"
             "for fd in (0, 1, 2):\n"
             "    try:\n"
             "        fds.append(os.readlink(f'/proc/self/fd/{fd}'))\n"
             "    except OSError:\n"
             "        fds.append('closed')\n"
             "with open(sys.argv[1], 'w') as fh:\n"
             "    fh.write(' '.join(fds))\n")
    code = ("import subprocess, sys\n"
            "from bafusion.cli import main\n"
            "main(['--version'])\n"
            "subprocess.run([sys.executable, '-c', sys.argv[1], sys.argv[2]], check=True)\n")
    subprocess.run([sys.executable, "-c", code, child, str(tmp_path / "fds")], env=_env(False), timeout=300,
                   check=True, preexec_fn=lambda: [os.close(fd) for fd in closed])  # noqa: PLW1509
    fds = (tmp_path / "fds").read_text().split()
    assert [fds[fd] for fd in closed] == [os.devnull] * len(closed), fds
