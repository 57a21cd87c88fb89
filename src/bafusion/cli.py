"""The ``bafusion`` command. Each concern's module registers its own subcommands.

A module listed in ``COMMAND_MODULES`` defines ``register(subparsers)``, which adds one or
more subparsers and sets ``func`` (called with the parsed namespace, returning an exit code)
through ``set_defaults``. Errors meant for users are raised as :class:`bafusion.errors.UserError`
and printed as one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Sequence

from bafusion import __version__
from bafusion.errors import UserError

COMMAND_MODULES: tuple[str, ...] = (
    "bafusion.pipeline_cli",
    "bafusion.acquire",
    "bafusion.train",
    "bafusion.fusion",
    "bafusion.metrics",
    "bafusion.baselines",
    "bafusion.evaluate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bafusion",
        description="Boundary-aware multi-focus image fusion: data pipeline, training, fusion, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"bafusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that concern is not written yet
                continue
            raise
        module.register(sub)
    return parser


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def install_sigterm_handler() -> None:
    """Turn SIGTERM (``kill``, ``timeout``, Snakemake or SLURM stopping a job) into
    ``SystemExit(143)`` so that ``finally`` blocks and context managers run: partial outputs
    are not renamed into place and the step's MLflow run ends as KILLED instead of staying
    RUNNING. Only from the main thread, and only over the default handler."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def main(argv: Sequence[str] | None = None) -> int:
    install_sigterm_handler()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"bafusion {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bafusion {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
