"""``opd ls``: list what is registered (samplers, objectives, scorers, methods)."""

from __future__ import annotations

import argparse

from opd import registry


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return sub.add_parser("ls", help="list registered samplers, objectives, scorers and methods")


def run(args: argparse.Namespace) -> int:
    for reg in (registry.SAMPLERS, registry.OBJECTIVES, registry.SCORERS, registry.METHODS):
        names = reg.names()
        print(f"{reg.kind}s: {', '.join(names) if names else '(none)'}")
    return 0
