"""Sub-commands of the ``opd`` console script, one module each (``add_parser`` and ``run``),
and the dispatch that both the console script (:mod:`opd.cli`) and the warm server
(:mod:`opd.warmstart`) run a command line through.

Shared argument helpers live in :mod:`opd.commands._common`.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from opd.config import ConfigError
from opd.registry import UnknownNameError


def build_parser() -> argparse.ArgumentParser:
    """The ``opd`` parser, with every module of this package (but ``_*``) as a sub-command."""
    parser = argparse.ArgumentParser(prog="opd", description="DiffusionOPD reproduction suite")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        p = module.add_parser(sub)
        p.set_defaults(func=module.run)
    return parser


def dispatch(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run its command; a bad config or input prints one line and returns
    non-zero instead of a traceback."""
    from opd.training.checkpoint import CheckpointError  # torch: only once a command runs

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UnknownNameError) as err:
        print(f"opd {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (CheckpointError, FloatingPointError, FileNotFoundError) as err:
        # damaged or foreign checkpoints, NaN/Inf (NonFiniteError), missing inputs: the
        # message names the culprit; the traceback would only bury it
        print(f"opd {args.command}: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
