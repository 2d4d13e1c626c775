"""The ``opd`` console script: list what is registered and run the suite's steps.

Each sub-command lives in its own module under ``opd.commands`` with ``add_parser(sub)`` and
``run(args) -> int``; the modules are discovered, so adding a command is adding a file. Commands
are thin: they parse arguments, load the validated config and call the library.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

import opd.commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opd", description="DiffusionOPD reproduction suite")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(opd.commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"opd.commands.{info.name}")
        p = module.add_parser(sub)
        p.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and os.environ.get("OPD_WARM_SOCKET"):
        # a workflow job with a warm server (opd.warmstart): run there, else start cold
        from opd.warmstart import run_client

        rc = run_client(sys.argv[1:])
        if rc is not None:
            return rc
    parser = build_parser()
    args = parser.parse_args(argv)
    from opd.config import ConfigError
    from opd.registry import UnknownNameError
    from opd.training.checkpoint import CheckpointError

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


if __name__ == "__main__":
    sys.exit(main())
