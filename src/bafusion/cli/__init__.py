"""The ``bafusion`` command line: argument parsing only, calling the plain functions of
:mod:`bafusion.data`, :mod:`bafusion.nets`, :mod:`bafusion.fusion` and
:mod:`bafusion.evaluation`. May import anything; nothing imports it but the entry point.
"""

from bafusion.cli.app import (
    Parser,
    build_parser,
    install_sigterm_handler,
    main,
    one_line,
)

__all__ = ["Parser", "build_parser", "install_sigterm_handler", "main", "one_line"]
