"""The ``opd`` console script: list what is registered and run the suite's steps.

Sub-commands are thin: they parse arguments, load a validated config and call the library.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_ls(args: argparse.Namespace) -> int:
    from opd import registry

    for reg in (registry.SAMPLERS, registry.OBJECTIVES, registry.SCORERS, registry.METHODS):
        names = reg.names()
        print(f"{reg.kind}s: {', '.join(names) if names else '(none)'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ls", help="list registered samplers, objectives, scorers and methods")
    p.set_defaults(func=_cmd_ls)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
