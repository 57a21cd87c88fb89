"""What the long steps print in a log (bafusion.progress): plain lines that say when and which command."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bafusion.cli import main as cli_main

#: A plain line in a log: the local time to the second, then the command.
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"


def _stamped(lines: list[str], command: str, rest: str) -> list[str]:
    pattern = re.compile(rf"{STAMP} {re.escape(command)}: {rest}")
    return [line for line in lines if pattern.fullmatch(line)]


def _one_pair(folder: Path, side: int = 64) -> Path:
    """``folder`` holding one pair ``p`` of ``side`` px square shots for fuse-dir: A sharp on the left, B on the right."""
    from scipy import ndimage

    scene = ndimage.gaussian_filter(np.random.default_rng(3).random((side, side)), 1.5)
    scene = (scene - scene.min()) / np.ptp(scene)
    blur = ndimage.gaussian_filter(scene, 2)
    folder.mkdir(parents=True)
    for n, half in zip("AB", (slice(side // 2, None), slice(None, side // 2))):
        shot = scene.copy()
        shot[:, half] = blur[:, half]
        Image.fromarray(np.round(shot * 255).astype(np.uint8)).save(folder / f"p-{n}.png")
    return folder


def test_plain_lines_in_a_log_start_with_the_time_and_the_command(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A Snakemake step's log (logs/composite/shard-0.log) of a run of hours held lines such as
    ``composite shard 0: 28% 120/432 pair [...]``: no time, no command. Off a terminal each
    plain line now starts with the local time and the command; on a terminal the bar and the
    lines are as they were."""
    from tqdm import tqdm

    import bafusion.progress as progress

    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0, raising=False)
    monkeypatch.setattr(progress, "_command", "bafusion", raising=False)
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    progress.set_command("bafusion composite")
    for _ in tqdm(range(3), desc="composite shard 0", unit="pair", **progress.bar_options(True)):
        pass
    line = "bafusion train: initial epoch 1/2 lr 0.01"
    logged = progress.in_log(line)
    lines = capsys.readouterr().err.splitlines()
    assert _stamped(lines, "bafusion composite", r"composite shard 0: 33% 1/3 pair \[.*pair/s\]"), lines
    assert _stamped(lines, "bafusion composite", r"composite shard 0: 100% 3/3 pair \[.*\]"), lines
    assert re.fullmatch(rf"{STAMP} {line}", logged), logged
    plain = progress.bar_options(True)["file"]
    for rate in ("15.28", "15.28", "14.10"):  # the last step's line and the end's (evaluate wrote both),
        # the same count, the end's rate tqdm's average where the last step's is smoothed
        plain.write(f"\rfusing: 100% 2/2 step [00:30<00:00, {rate}s/step, boundary net]")
    assert len(capsys.readouterr().err.splitlines()) == 1
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    assert progress.in_log(line) == line  # a terminal: unchanged
    assert "file" not in progress.bar_options(True, leave=False)  # the bar drawn as before


def test_fuse_dir_in_a_log_stamps_its_lines_and_says_how_a_long_fusion_goes(tmp_path: Path, tiny_nets: Path,
                                                                            monkeypatch: pytest.MonkeyPatch,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """fuse-dir's line per stack had no time, and a large pair's fusion (minutes for a camera's
    shots) printed nothing in a log until it ended: the fusion's bar, drawn only on a terminal,
    now has the plain lines off one, and both say the time and ``bafusion fuse-dir``."""
    import bafusion.progress as progress

    src = _one_pair(tmp_path / "in")
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0, raising=False)  # as if the fusion took longer
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    capsys.readouterr()
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "out"), "--model", str(tiny_nets), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err
    assert _stamped(lines, "bafusion fuse-dir", r"1/1 p: fused in \d+\.\d s"), lines
    assert _stamped(lines, "bafusion fuse-dir", r"fusing: 100% \S+ step \[.*\]"), lines


def test_train_in_a_log_says_how_far_an_epoch_got_with_the_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A training's epoch at paper scale is hours on a CPU; off a terminal it printed nothing
    within one (its bar is drawn only on a terminal) and its line per epoch had no time. Now
    a plain line within the epoch too, both with the time and ``bafusion train``."""
    sys.path.insert(0, str(Path(__file__).parent))
    from toy_patches import write_toy_patches

    import bafusion.progress as progress

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    h5 = write_toy_patches(tmp_path / "initial.h5", n_train=64, n_val=32, patch=16, seed=1)
    params = {"seed": 7, "patch": 16, "depth": 8,
              "train": {"epochs": 1, "batch": 16, "lr": 0.01, "milestones": [1], "gamma": 0.5,
                        "samples_per_epoch": 64, "device": "cpu", "threads": 1}}
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0, raising=False)
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    capsys.readouterr()
    assert cli_main(["train", "--net", "initial", "--patches", str(h5), "--out", str(tmp_path / "m.pt"),
                     "--checkpoints", str(tmp_path / "ck"), "--metrics", str(tmp_path / "metrics.json"),
                     "--plots", str(tmp_path / "p.csv"), "--params-json", json.dumps(params)]) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err
    assert _stamped(lines, "bafusion train", r"initial epoch 1/1: 100% 4/4 batch \[.*\]"), lines
    assert _stamped(lines, "bafusion train", r"initial epoch 1/1 lr .* train loss .* s \| 1/1 epochs, \d+:\d\d:\d\d elapsed"), lines


def _fuse_dir_on_a_pty(tmp_path: Path, nets: Path, term: str, columns: int) -> str:
    """What ``bafusion fuse-dir`` writes to stderr when it is a pseudo-terminal of ``columns``
    columns (0: no size set, as script(1) in a batch job gives) with ``$TERM`` ``term``."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    src = _one_pair(tmp_path / f"in-{term}-{columns}")
    master, slave = pty.openpty()
    if columns:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {**os.environ, "TERM": term, "BAFUSION_MLFLOW": "0", "OMP_NUM_THREADS": "1"}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen([sys.executable, "-m", "bafusion.cli", "fuse-dir", str(src), str(tmp_path / f"out-{term}-{columns}"),
                             "--model", str(nets), "--device", "cpu"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave, env=env, cwd=tmp_path)
    os.close(slave)
    got = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child has ended, the terminal is closed
            break
        if not chunk:
            break
        got += chunk
    os.close(master)
    assert proc.wait(timeout=120) == 0, got.decode(errors="replace")
    return got.decode(errors="replace").replace("\r\n", "\n")  # the terminal's own CR LF


@pytest.mark.parametrize(("term", "columns", "plain"), [("dumb", 100, True), ("xterm", 0, True), ("xterm", 100, False)],
                         ids=["TERM=dumb", "no-width", "terminal"])
def test_a_terminal_that_cannot_redraw_a_line_gets_what_a_log_gets(tmp_path: Path, tiny_nets: Path, term: str,
                                                                    columns: int, plain: bool) -> None:
    """With TERM=dumb (Emacs' shell, some CI consoles) or on a pseudo-terminal of no width
    (script(1) in a batch job) fuse-dir drew its carriage-return bar (at 0 columns: nothing) and no
    line per stack. Such a terminal now gets what a log gets: a line per stack, no bar; a terminal
    that can draw the bar gets it, as before."""
    err = _fuse_dir_on_a_pty(tmp_path, tiny_nets, term, columns)
    if plain:
        assert re.search(rf"^{STAMP} bafusion fuse-dir: 1/1 p: fused in \d+\.\d s$", err, re.M), err
        assert "\r" not in err, err
    else:
        assert "fuse-dir: 1/1 p: fused in" not in err and "\r" in err, err  # the bar, redrawn


def test_a_download_of_unknown_size_in_a_log_says_no_share_nor_time_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A download whose server sends no size wrote "0%" and "<00:00" left in its log's plain
    lines, as if nothing were done and it were ending: such a line now says the bytes, the time
    spent and the rate only; a download of known size keeps its share and time left."""
    import bafusion.progress as progress
    from bafusion.data import download

    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0, raising=False)
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    progress.set_command("bafusion download-data")
    for total in (None, 4096):
        bar = download._bar(total, "x.zip", 0, True)
        for _ in range(4):
            bar.update(1024)
        bar.close()
        lines = [line for line in capsys.readouterr().err.splitlines() if "x.zip" in line]
        assert lines, lines
        if total is None:
            assert not any("%" in line or "<" in line for line in lines), lines
            assert _stamped(lines, "bafusion download-data", r"x\.zip: 4\.00k B \[.*B/s\]"), lines
        else:
            assert _stamped(lines, "bafusion download-data", r"x\.zip: 100% 4\.00k/4\.00k B \[.*<.*B/s\]"), lines


def test_a_long_commands_stderr_lines_in_a_log_carry_the_time_and_its_stdout_results_do_not(
        tmp_path: Path, tiny_nets: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A step's log mixed stamped progress lines with unstamped ones: train's start and end lines,
    fuse-set's seconds per pair, on stderr. Off a terminal these carry the time and the command
    too; an error line still starts with the command and the problem, unstamped. What goes to
    stdout is a result for the program that reads it (``out=$(bafusion train ...)``, a pipe, a
    file: never a terminal) and stays as it was, unstamped: train's result line, fuse-set's and
    evaluate's line per pair, evaluate's last line, prepare's and download-record's lines (they
    were stamped off a terminal, with a time that changes from run to run)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from toy_patches import write_toy_patches

    import bafusion.progress as progress

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    h5 = write_toy_patches(tmp_path / "initial.h5", n_train=32, n_val=16, patch=16, seed=1)
    params = {"seed": 7, "patch": 16, "depth": 8,
              "train": {"epochs": 1, "batch": 16, "lr": 0.01, "milestones": [1], "gamma": 0.5,
                        "samples_per_epoch": 32, "device": "cpu", "threads": 1}}
    capsys.readouterr()
    train = ["train", "--net", "initial", "--patches", str(h5), "--checkpoints", str(tmp_path / "ck"),
             "--params-json", json.dumps(params)]
    assert cli_main([*train, "--out", str(tmp_path / "m.pt")]) == 0
    got = capsys.readouterr()
    err = got.err.splitlines()
    assert _stamped(err, "bafusion train", r"initial: 32 train patches x 12 = .*"), err
    assert _stamped(err, "bafusion train", r"initial done: .* best val acc .*"), err
    assert re.fullmatch(rf"initial: best val acc \d\.\d{{4}} at epoch 1, model {re.escape(str(tmp_path / 'm.pt'))}\n",
                        got.out), got.out
    assert cli_main([*train, "--out", str(tmp_path / "m.json")]) == 2
    assert capsys.readouterr().err.startswith("bafusion train: error: --out "), "the error line as it was"

    pairs = _one_pair(tmp_path / "pairs")
    (pairs / "index.json").write_text(json.dumps(["p"]))
    assert cli_main(["fuse-set", "--pairs", str(pairs), "--models", str(tiny_nets), "--out", str(tmp_path / "fs"),
                     "--device", "cpu"]) == 0
    got = capsys.readouterr()
    assert re.fullmatch(r"p: near_boundary_fraction=\S+\n", got.out), got.out
    assert _stamped(got.err.splitlines(), "bafusion fuse-set", r"p: \d+\.\d{3} s"), got.err

    assert cli_main(["evaluate", "--dataset", f"tiny={pairs}", "--methods", "Laplacian", "--metrics", "QG",
                     "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and re.fullmatch(r"tiny/p: .*QG.*", out[0]), out
    assert out[1] == f"evaluation written to {tmp_path / 'ev'}", out

    class Terminal:
        def isatty(self) -> bool:
            return True

        def fileno(self) -> int:
            raise OSError("no size to ask for")

    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    assert progress.stamped("p: 1.234 s") == "p: 1.234 s"  # on a terminal: unchanged
    assert progress.stamped("p: 1.234 s", Terminal()) == "p: 1.234 s"


def test_prepare_and_the_download_record_write_readable_lines_not_bare_json(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """logs/prepare.log and logs/download/record.log held a bare JSON object (the counts, which
    nothing reads: the manifest and the record file hold them): each now says what was done in a
    line on stdout, a result as the other steps' summaries (unstamped, also off a terminal), and
    names the file that records it."""
    import bafusion.progress as progress

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    capsys.readouterr()
    out = tmp_path / "prepared"
    assert cli_main(["prepare", "--foregrounds", "2", "--backgrounds", "2", "--holdout-foregrounds", "1",
                     "--holdout-backgrounds", "1", "--out", str(out), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(1 for f in manifest["foregrounds"] if f["split"] == "train") == 2
    assert lines == [f"2 foregrounds and 2 backgrounds for training, 1 and 1 held out for the test set -> {out} "
                     f"(listed in {out / 'manifest.json'})"], lines
    record = tmp_path / "record.json"
    assert cli_main(["download-record", "--source", "web", "--out", str(record), f"prepared={out}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    files = json.loads(record.read_text())["folders"]["prepared"]["files"]
    assert lines == [f"data source web: prepared {files} files -> {record}"], lines


def test_fuse_in_a_log_names_each_step_of_a_camera_size_pair_with_the_time(tmp_path: Path, tiny_nets: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``bafusion fuse ... --align similarity 2> log`` of a camera-size pair printed nothing for
    minutes: its steps (reading, aligning, fusing, writing) were named on a terminal only. In a
    log each step is now a line after the local time as it starts, for shots of
    STEP_LINES_MIN_PIXELS or more in all (here lowered to the test's small pair); a smaller
    pair's log, --no-progress and stdout stay as they were."""
    import bafusion.cli.fusion as cli_fusion
    import bafusion.progress as progress

    src = _one_pair(tmp_path / "in")
    a, b, out = src / "p-A.png", src / "p-B.png", tmp_path / "f.png"
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    args = ["fuse", str(a), str(b), "-o", str(out), "--model", str(tiny_nets), "--device", "cpu",
            "--align", "similarity"]
    capsys.readouterr()
    assert cli_main(args) == 0
    small = capsys.readouterr()
    assert " ..." not in small.err, small.err  # 64x64 px shots: short steps, no line for each
    monkeypatch.setattr(cli_fusion, "STEP_LINES_MIN_PIXELS", 2 * 64 * 64)
    assert cli_main(args) == 0
    got = capsys.readouterr()
    lines = got.err.splitlines()
    for step in (rf"reading {re.escape(str(a))}, {re.escape(str(b))}", r"aligning the shots \(similarity\)",
                 r"aligning: shot 2 of 2: .*", "loading the nets", "fusing 2 images", rf"writing {re.escape(str(out))}"):
        assert _stamped(lines, "bafusion fuse", rf"{step} \.\.\."), (step, lines)
    for printed in (small.out, got.out):  # stdout: the result's line only
        assert printed.startswith(f"fused 2 images into {out} (") and len(printed.splitlines()) == 1, printed
    assert cli_main([*args, "--no-progress"]) == 0
    assert " ..." not in capsys.readouterr().err


def test_unstamped_drops_the_time_of_stamped_lines_however_the_bytes_come() -> None:
    """What ``train --log`` shows on a terminal (bafusion.progress.Unstamped): the time that
    starts a stamped line is dropped, whether a line comes whole or a byte at a time; other
    lines, and a time before something else, are shown as written."""
    from bafusion.progress import Unstamped

    text = (b"2026-12-06T15:44:16 bafusion train: initial epoch 1/2\nplain line\n"
            b"2026-12-06T15:44:17 bafusion: note\n2026-12-06 a date\n\n2026-12-06T15:44:18 other\n"
            b"bafusion train: error: x\n2026-12-06T15:44:19 bafusion train: last, no newline")
    want = (b"bafusion train: initial epoch 1/2\nplain line\nbafusion: note\n2026-12-06 a date\n\n"
            b"2026-12-06T15:44:18 other\nbafusion train: error: x\nbafusion train: last, no newline")
    for size in (1, 2, 3, 7, 20, 29, len(text)):
        u = Unstamped()
        shown = b"".join(u.feed(text[i:i + size]) for i in range(0, len(text), size)) + u.flush()
        assert shown == want, (size, shown)
    u = Unstamped()
    assert u.feed(b"2026-12") == b"" and u.flush() == b"2026-12"  # held back while it may be a stamp


def _working_params(folder: Path) -> Path:
    """A params file that decides the test's 128x128 px pair at a working size (64x64 px), as a
    camera-size pair is decided at 640 px (``fuse.working_above`` 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text("fuse:\n  working_side: 64\n  working_above: 0\n  working_min: 0\n")
    return path


def test_fuse_in_a_log_names_each_step_of_a_camera_size_pairs_fusion(tmp_path: Path, tiny_nets: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A 24 MP pair's log printed nothing for 48 s (load ~12) from "fusing 2 images" to
    "writing": the exposure matching and the fusing bar each ended within the 30 s before a
    bar's first plain line, and the small regions and the composite (4 s) had none. Each step
    that takes seconds at camera size is now a line after the local time as it starts (the
    pair here, 128x128 px, counted as camera-size: PROGRESS_MIN_PIXELS and
    STEP_LINES_MIN_PIXELS lowered; decided at a working size as a camera's pair is)."""
    import bafusion.cli.fusion as cli_fusion
    import bafusion.fusion.working as working
    import bafusion.progress as progress

    src = _one_pair(tmp_path / "in", 128)
    out = tmp_path / "f.png"
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    monkeypatch.setattr(cli_fusion, "STEP_LINES_MIN_PIXELS", 2 * 128 * 128)
    monkeypatch.setattr(working, "PROGRESS_MIN_PIXELS", 128 * 128)
    capsys.readouterr()
    assert cli_main(["fuse", str(src / "p-A.png"), str(src / "p-B.png"), "-o", str(out), "--model", str(tiny_nets),
                     "--device", "cpu", "--params", str(_working_params(tmp_path))]) == 0
    lines = capsys.readouterr().err.splitlines()
    said = [line.split("bafusion fuse: ", 1)[1] for line in lines
            if re.fullmatch(rf"{STAMP} bafusion fuse: .* \.\.\.", line)]
    fusing = said.index("fusing 2 images ...")
    want = ["matching the exposures", "the nets at 64x64 px", "the maps at full size, 128x128 px",
            r"refining the boundary band, \d+ tiles?", "removing small regions and compositing", re.escape(f"writing {out}")]
    assert len(said) == fusing + 1 + len(want), lines
    for got, step in zip(said[fusing + 1:], want):
        assert re.fullmatch(rf"{step} \.\.\.", got), (step, lines)


def test_the_fusing_bar_counts_each_step_by_its_measured_cost_up_to_the_small_regions(
        tiny_nets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the fusing bar of a 24 MP pair counted its four steps alike: after the
    first (2.3 s of 24.9) it said 6 s were left for 19, and it sat full for the small regions
    and the composite (3.8 s). Now one bar holds the five steps, each advancing it by its
    share of the measured time (working.FUSING_STEP_COST), and it fills when they end."""
    import bafusion.fusion.rule as rule
    import bafusion.fusion.working as working
    from bafusion.fusion import FusionParams, fuse_images, load_nets_from_dir

    bars: list[object] = []

    class Bar:  # what the bar was told, and how far it was at each step's start
        def __init__(self, total: int, desc: str) -> None:
            self.total, self.desc, self.n, self.seen = total, desc, 0.0, []

        def __enter__(self) -> "Bar":
            return self

        def __exit__(self, *exc: object) -> None:
            bars.append(self)

        def update(self, n: float = 1) -> None:
            self.n += n

        def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
            self.seen.append((re.split(r" at |, ", s)[0], self.n / self.total))

    def fake(total: int, pixels: int, progress: bool | None, desc: str = "fusing", **kw: object) -> Bar:
        return Bar(total, desc)

    monkeypatch.setattr(rule, "progress_bar", fake)
    monkeypatch.setattr(working, "progress_bar", fake)
    src = _one_pair(Path(tiny_nets).parent / "in", 128)
    a, b = (np.asarray(Image.open(src / f"p-{n}.png")) for n in "AB")
    fuse_images(a, b, load_nets_from_dir(tiny_nets, "cpu"), FusionParams(working_side=64, working_above=0, working_min=0))
    (bar,) = [x for x in bars if x.desc == "fusing"]
    shares = dict(bar.seen)
    assert shares["boundary net"] < 0.5 and 0.5 < shares["small regions"] < 1, bar.seen  # was 0.25, and no step
    seconds = working.fusing_step_seconds(128 * 128, 64 * 64)  # the pair's size (the next test)
    total, before = sum(seconds), 0.0
    want = []
    for (name, _, _), s in zip(working.FUSING_STEP_COST, seconds):
        want.append((name, pytest.approx(before / total)))
        before += s
    assert bar.seen == want
    assert bar.n == pytest.approx(bar.total)


def test_the_fusing_bars_shares_follow_the_pairs_size(tiny_nets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fusing bar's steps were weighed by one 24 MP pair's shares of the time at every
    size, while the nets run at the working resolution whatever the size and the other steps
    grow with the pixels: measured, the nets took 78 % of a 4 MP pair's fusing CPU and 34 % of a
    24 MP pair's, and the 4 MP pair's bar said 12-16 s were left after the nets when 3 s were. The
    weights now follow the pair's full and working sizes (working.FUSING_STEP_COST): of two
    pairs decided at the same working size, the one of four times the pixels has its bar
    further from its end when the nets are done."""
    import bafusion.fusion.rule as rule
    import bafusion.fusion.working as working
    from bafusion.fusion import FusionParams, fuse_images, load_nets_from_dir

    bars: list[object] = []

    class Bar:
        def __init__(self, total: int, desc: str) -> None:
            self.total, self.desc, self.n, self.seen = total, desc, 0.0, {}

        def __enter__(self) -> "Bar":
            return self

        def __exit__(self, *exc: object) -> None:
            bars.append(self)

        def update(self, n: float = 1) -> None:
            self.n += n

        def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
            self.seen.setdefault(re.split(r" at |, ", s)[0], self.n / self.total)

    monkeypatch.setattr(rule, "progress_bar", lambda total, pixels, progress, desc="fusing", **kw: Bar(total, desc))
    monkeypatch.setattr(working, "progress_bar", lambda total, pixels, progress, desc="fusing", **kw: Bar(total, desc))
    nets = load_nets_from_dir(tiny_nets, "cpu")
    params = FusionParams(working_side=64, working_above=0, working_min=0)
    at = {}
    for side in (128, 256):
        src = _one_pair(Path(tiny_nets).parent / f"in{side}", side)
        a, b = (np.asarray(Image.open(src / f"p-{n}.png")) for n in "AB")
        bars.clear()
        fuse_images(a, b, nets, params)
        (bar,) = [x for x in bars if x.desc == "fusing"]
        at[side] = bar.seen["full size"]  # the nets' share: how far the bar is when they end
        seconds = working.fusing_step_seconds(side * side, 64 * 64)
        assert at[side] == pytest.approx(sum(seconds[:2]) / sum(seconds)), (side, bar.seen)
    assert at[256] < at[128] - 0.05, at  # four times the pixels: the nets a smaller share (was the same)
    # and at camera sizes, as measured: a 4 MP pair decided at 640x427 px spends most in the nets
    w4, w24 = (working.fusing_weights(True, p, 640 * 427) for p in (2448 * 1632, 6000 * 4000))
    assert sum(w4[:2]) / 5 > 0.5 > sum(w24[:2]) / 5, (w4, w24)


def test_fuse_set_in_a_log_names_each_step_of_a_camera_size_pair(tmp_path: Path, tiny_nets: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """``fuse-set --pairs P -o OUT 2> log`` of a 12 MP pair printed its first line 60 s after
    it started (the fusing bar's first plain line; the reading and the exposure matching said
    nothing) and nothing for the 40 s of its maps after its seconds' line. A pair whose shots
    hold STEP_LINES_MIN_PIXELS or more (here lowered to the test's pair) now names its steps as
    they start, after the local time: reading, the fusion's steps as fuse names them, writing
    its maps; a smaller pair says what it said, and --no-progress none of them."""
    import bafusion.fusion.batch as batch
    import bafusion.fusion.working as working
    import bafusion.progress as progress

    src = _one_pair(tmp_path / "in", 128)
    (src / "index.json").write_text('["p"]')
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    args = ["fuse-set", "--pairs", str(src), "--model", str(tiny_nets), "--device", "cpu",
            "--params", str(_working_params(tmp_path))]
    capsys.readouterr()
    assert cli_main([*args, "-o", str(tmp_path / "small")]) == 0
    assert " ...\n" not in capsys.readouterr().err  # a small pair: its seconds' line only
    monkeypatch.setattr(batch, "STEP_LINES_MIN_PIXELS", 2 * 128 * 128)
    monkeypatch.setattr(working, "PROGRESS_MIN_PIXELS", 128 * 128)
    assert cli_main([*args, "-o", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().err.splitlines()
    said = [line.split("bafusion fuse-set: p: ", 1)[1] for line in lines
            if re.fullmatch(rf"{STAMP} bafusion fuse-set: p: .* \.\.\.", line)]
    want = ["reading", "matching the exposures", "the nets at 64x64 px", "the maps at full size, 128x128 px",
            r"refining the boundary band, \d+ tiles?", "removing small regions and compositing",
            re.escape("writing its maps and p.png")]
    assert len(said) == len(want), lines
    for got, step in zip(said, want):
        assert re.fullmatch(rf"{step} \.\.\.", got), (step, lines)
    assert _stamped(lines, "bafusion fuse-set", r"p: [\d.]+ s")  # the seconds' line, between them
    assert cli_main([*args, "-o", str(tmp_path / "quiet"), "--no-progress"]) == 0
    assert " ...\n" not in capsys.readouterr().err
