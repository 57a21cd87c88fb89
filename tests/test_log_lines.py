"""What the ``bafusion`` command writes reaches a log file as it is written."""

from __future__ import annotations

import argparse
import sys

from bafusion.cli import app
from bafusion.cli import main as cli_main


def test_stdout_lines_reach_a_log_file_at_once(monkeypatch) -> None:
    """Under nohup, cron or a Snakemake log, stdout is a file and Python buffers it in 8 KB
    blocks: evaluate's and fuse-set's one line per pair showed up only at the end of a long
    run. The command makes stdout line-buffered while it runs, and puts it back after."""
    import io

    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8")  # a file: block-buffered
    monkeypatch.setattr(sys, "stdout", out)
    seen: list[bytes] = []

    def run(cmd: str, args: argparse.Namespace) -> int:
        print("lytro/lytro-01: Ours QG=0.7000")
        seen.append(raw.getvalue())
        return 0

    monkeypatch.setattr(app, "_run", run)
    assert cli_main(["count"]) == 0
    assert seen == [b"lytro/lytro-01: Ours QG=0.7000\n"]
    assert not out.line_buffering  # as it was
