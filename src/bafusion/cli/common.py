"""What several commands parse alike."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bafusion.errors import UserError
from bafusion.workspace import home_path

if TYPE_CHECKING:  # torch: not for the light commands that parse with the types below
    from bafusion.fusion.models import FusionNets


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None


def positive_int(s: str) -> int:
    """An argparse type: an integer of at least 1 (``--workers 0`` is refused, not taken as 1)."""
    v = _int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def non_negative_int(s: str) -> int:
    """An argparse type: an integer of at least 0."""
    v = _int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


#: The most CPU threads a ``--threads`` option takes: the maximum of params.schema.yaml's
#: fuse.threads, evaluate.threads and train.threads (checked by the tests).
THREADS_MAX = 1024


class _ThreadsAction(argparse.Action):
    """``--threads N``: refused at once, in one wording in every command, unless 1 <= N <=
    :data:`THREADS_MAX` (0 too where ``zero`` says what it means)."""

    def __init__(self, option_strings: list[str], dest: str, zero: str | None = None, **kwargs: object) -> None:
        self.zero = zero
        super().__init__(option_strings, dest, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        v = int(values)  # type: ignore[call-overload]
        if not (0 if self.zero else 1) <= v <= THREADS_MAX:
            what = f"give 0 ({self.zero}) or a positive number" if self.zero else "give a positive number"
            raise argparse.ArgumentError(None, f"{option_string} {v}: {what} of CPU threads, at most {THREADS_MAX} "
                                               "(omit it for the default)")
        setattr(namespace, self.dest, v)


def add_threads_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup, what: str, default: str,
                         *, zero: str | None = None, value: int | None = None) -> None:
    """Add ``--threads``: ``what`` the threads do, ``default`` what the command does without the
    option (``value``), ``zero`` what 0 means where it is allowed (train's: torch's default);
    the help gives the range, and so does the refusal of a number outside it."""
    low = f"0 to {THREADS_MAX}; 0 = {zero}" if zero else f"1 to {THREADS_MAX}"
    p.add_argument("--threads", type=_int, action=_ThreadsAction, zero=zero, default=value, metavar="N",
                   help=f"{what}, {low} (default: {default})")


#: The largest seed, as params.yaml's schema allows (``seed``): a signed 64-bit integer (an HDF5
#: attribute of the patch sets; the trainer seeds torch generators with it).
SEED_MAX = 2**63 - 1


def seed_int(s: str) -> int:
    """An argparse type of ``--seed`` options (the data steps', ``download-coco``'s): an integer
    from 0 to :data:`SEED_MAX`, refused as params.yaml refuses it."""
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{v} is not an integer from 0 to 2^63 - 1 = {SEED_MAX}")
    return v


def finite_float(minimum: float = -math.inf, *, above: bool = False, maximum: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite number of at least ``minimum`` (more than it when ``above``)
    and at most ``maximum``; ``nan`` and ``inf`` are refused with the option's name, not passed
    on to fail later."""

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
        if v < minimum or (above and v == minimum):
            raise argparse.ArgumentTypeError(f"must be {'more than' if above else 'at least'} {minimum:g}, got {s}")
        if v > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum:g}, got {s}")
        return v

    parse.__name__ = "number"
    return parse


def nonempty_path(s: str) -> str:
    """An argparse type of path options: an empty string is refused ("--out: empty path"), not
    taken as "not given" or as the current folder; a leading ``~`` is the home folder
    (:func:`home_path`; ``~user`` that user's, on POSIX)."""
    if not s.strip():
        raise argparse.ArgumentTypeError("empty path")
    return home_path(s)


def user_path(s: str) -> str:
    """An argparse type of the data-source options that may be empty ("not given") and that
    records name (``--from-dir``, ``--alphamatting``, ``--images-dir``...): kept as written, a
    leading ``~`` included, so that a DVC-tracked record (prepare's manifest, ``download.json``)
    is the same for every user and checkout; :mod:`bafusion.data` reads them through
    :func:`bafusion.workspace.resolve`, which takes ``~`` as the home folder (``--cache
    '~/cache'`` created a folder named ``~`` in the working directory)."""
    return s


def nonempty_text(s: str) -> str:
    """An argparse type of text options whose empty value would mean "not given" (``--dataset
    ''`` evaluated every configured dataset): refused ("--dataset: empty value")."""
    if not s.strip():
        raise argparse.ArgumentTypeError("empty value")
    return s


def nonempty_csv(s: str) -> str:
    """An argparse type of comma-separated list options: one naming nothing (``''``, ``' , '``)
    is refused ("--sets: empty list"), not taken as "not given" (the default list)."""
    if not any(t.strip() for t in s.split(",")):
        raise argparse.ArgumentTypeError("empty list")
    return s


def nonempty_json(s: str) -> str:
    """An argparse type of JSON options (``--params-json``): an empty string is refused ("empty
    JSON"), not taken as "not given"."""
    if not s.strip():
        raise argparse.ArgumentTypeError("empty JSON: give a JSON object, or leave the option out")
    return s


#: The params file :func:`note_params_yaml_unread` looks for: the working directory's (the
#: project's, run from the checkout). The tests point it elsewhere (tests/conftest.py).
PARAMS_YAML = Path("params.yaml")


def note_params_yaml_unread(command: str, option: str, *given: object, rest: str = "any flags") -> None:
    """Say on stderr, in one line, that ``./params.yaml`` is not read when it exists and none
    of ``given`` (the params file and JSON options) was passed: its values are not applied
    unless named (``option``), which puzzled a user whose results differed from the pipeline's.
    The pipeline's rules pass their parameters as JSON, so they get no note."""
    if all(g is None for g in given) and PARAMS_YAML.is_file():
        print(f"bafusion {command}: note: no {option} given, so the built-in defaults (and {rest}) apply; "
              f"./params.yaml is not read (pass {option} params.yaml to use it)", file=sys.stderr)


def set_torch_threads(threads: int) -> None:
    """Set torch's CPU threads to ``threads`` for the command (imports torch), and have
    :func:`bafusion.cli.app.main` set them back as they were once it returns: called in a process
    that goes on (a notebook's or the tests' ``main([...])``), ``fuse --threads 1`` left torch on
    one thread for the rest of it."""
    import torch

    from bafusion.cli.app import at_command_end

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    at_command_end(lambda: torch.set_num_threads(before))


def check_distinct_sources(images: Sequence[str]) -> None:
    """Refuse (a :class:`UserError`, before any work) two sources of ``fuse`` that are one file,
    however spelled (``a.jpg a.jpg``, ``./a.jpg``, a symlink or a hard link to it: resolved paths,
    then inodes, as :func:`bafusion.preflight.same_file` compares an output with the inputs):
    the shot would be fused with itself, the result a copy of it, silently (``baseline``'s two
    sources too). A source that does not exist is left to the reading's error."""
    from bafusion.preflight import same_file

    paths = [Path(p) for p in images]
    for j, q in enumerate(paths):
        if not q.exists():
            continue
        for i, p in enumerate(paths[:j]):
            if same_file(p, q):
                what = (f"{images[i]} is given twice" if images[i] == images[j]
                        else f"{images[i]} and {images[j]} are the same file")
                raise UserError(f"{what} (sources {i + 1} and {j + 1}): a shot fused with itself adds nothing; "
                                "give each shot once")


def note_params_file_without(command: str, path: str | None, sections: tuple[str, ...]) -> None:
    """Say on stderr, in one line, that the params file ``path`` has none of the ``sections``
    the command reads (a file of another step's, ``train:`` alone): its defaults apply, which
    happened without a word. Nothing without a file, or when it has one of them."""
    if not path:
        return
    from bafusion.config import _read_mapping

    if any(s in _read_mapping(path, empty_ok=True) for s in sections):
        return
    names = " or ".join(f"'{s}'" for s in sections)
    print(f"bafusion {command}: note: {path} has no {names} section: the built-in defaults apply",
          file=sys.stderr)


def _load_saying_the_shipped_model(args: argparse.Namespace, folder: str | None, device: str) -> FusionNets:
    """:func:`bafusion.fusion.models.load_nets_from_dir`, its
    :class:`~bafusion.fusion.models.ModelNameWarning` (``--model default`` beside a folder
    ``default`` that holds no nets) said as one line ``bafusion <command>: warning: ...``. Only
    the lookup of the folder is recorded: the nets load outside, their warnings (torch's, ...)
    left to their filters (emitted again, they lost their module and its filters)."""
    import warnings

    from bafusion.fusion.models import ModelNameWarning, _find_model_dir, _load_files

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ModelNameWarning)
        d = _find_model_dir(folder)  # worded for the command line: --model DIR
    for w in caught:
        if issubclass(w.category, ModelNameWarning):
            print(f"bafusion {getattr(args, 'command', None) or 'fuse'}: warning: {w.message}", file=sys.stderr)
        else:  # (find_model_dir warns of nothing else) as they would have been
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return _load_files(d / "initial.pt", d / "boundary.pt", device, "cli")


class ModelOption(argparse.Action):
    """The ``--model``/``--models`` option (one option, two spellings): stores the folder in its
    ``dest`` and the spelling the user typed in ``model_option``, for messages that name it
    (:func:`nets_from_args`)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[no-untyped-def]
        setattr(namespace, self.dest, values)
        namespace.model_option = option_string


def _model_option(args: argparse.Namespace) -> str:
    """The spelling of the model-folder option to name: the one typed, else the command's own."""
    typed = getattr(args, "model_option", None)
    return typed or ("--models" if "models" in vars(args) else "--model")


def check_net_options(args: argparse.Namespace, folder: str | None) -> None:
    """Refuse ``--initial`` without ``--boundary`` (or the reverse), and the net files given with
    a model ``folder``, from the command line alone: the fusion commands call it before torch is
    imported (:func:`nets_from_args`, which checks it again, runs after that import's seconds)."""
    if args.initial or args.boundary:
        if not (args.initial and args.boundary):
            raise UserError("--initial and --boundary go together")
        if folder is not None:
            raise UserError(f"--initial/--boundary and {_model_option(args)} {folder} both name the nets: give the two net "
                            f"files or the model folder, not both")


def nets_from_args(args: argparse.Namespace, device: str, folder: str | None) -> FusionNets:
    """The nets named by ``--initial`` and ``--boundary`` (both or neither), else those of the
    model ``folder`` (``--model``/``--models``; None: the default places); a file given as
    the folder is refused, saying so, and so are the files and a folder together (the files
    won, and the folder was not even looked at)."""
    from bafusion.fusion.models import _load_files

    check_net_options(args, folder)
    if args.initial or args.boundary:
        return _load_files(args.initial, args.boundary, device, "cli")  # worded for the command line
    try:
        return _load_saying_the_shipped_model(args, folder, device)
    except UserError as e:
        if folder is None or not Path(folder).is_file():
            if _model_option(args) == "--models" and "--model " in str(e):  # the spelling typed
                raise UserError(str(e).replace("--model ", "--models ")) from e
            raise
        # a net file given as the folder: "model folder not found" misled
        raise UserError(f"{folder}: is a file, not a model folder: pass the folder that holds initial.pt and "
                        "boundary.pt, or name the files with --initial and --boundary") from e
