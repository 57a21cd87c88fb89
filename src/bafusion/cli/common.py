"""What several commands parse alike."""

from __future__ import annotations

import argparse

from bafusion.errors import UserError
from bafusion.fusion.models import FusionNets, load_nets, load_nets_from_dir


def nets_from_args(args: argparse.Namespace, device: str, folder: str | None) -> FusionNets:
    """The nets named by ``--initial`` and ``--boundary`` (both or neither), else those of the
    model ``folder`` (``--model``/``--models``; None: the default places)."""
    if args.initial or args.boundary:
        if not (args.initial and args.boundary):
            raise UserError("--initial and --boundary go together")
        return load_nets(args.initial, args.boundary, device)
    return load_nets_from_dir(folder, device)
