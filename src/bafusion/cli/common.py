"""What several commands parse alike."""

from __future__ import annotations

import argparse
from pathlib import Path

from bafusion.errors import UserError
from bafusion.fusion.models import FusionNets, load_nets, load_nets_from_dir


def nets_from_args(args: argparse.Namespace, device: str, folder: str | None) -> FusionNets:
    """The nets named by ``--initial`` and ``--boundary`` (both or neither), else those of the
    model ``folder`` (``--model``/``--models``; None: the default places); a file given as
    the folder is refused, saying so."""
    if args.initial or args.boundary:
        if not (args.initial and args.boundary):
            raise UserError("--initial and --boundary go together")
        return load_nets(args.initial, args.boundary, device)
    try:
        return load_nets_from_dir(folder, device)
    except UserError as e:
        if folder is None or not Path(folder).is_file():
            raise
        # a net file given as the folder: "model folder not found" misled
        raise UserError(f"{folder}: is a file, not a model folder: pass the folder that holds initial.pt and "
                        "boundary.pt, or name the files with --initial and --boundary") from e
