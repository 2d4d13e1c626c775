"""``opd validate-world``: the world's properties 1 and 2 (docs/mini_world.md) as a table."""

from __future__ import annotations

import argparse
from pathlib import Path

from opd.commands._common import add_config_args, load, setup_threads


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("validate-world", help="measure the mini world's properties 1 and 2")
    add_config_args(p)
    p.add_argument(
        "--base-eval", type=Path, required=True, help="eval CSV of `opd evaluate --base`"
    )
    p.add_argument("--out-dir", type=Path, required=True)
    return p


def run(args: argparse.Namespace) -> int:
    from opd.validation import validate_world

    cfg = load(args)
    setup_threads(cfg)
    table = validate_world(cfg, args.base_eval, args.out_dir)
    failed = table[~table["passed"]]
    print(f"[opd] world validation: {len(table) - len(failed)}/{len(table)} checks pass")
    for _, row in failed.iterrows():
        print(f"  FAILED: {row['check']}: {row['value']} (want {row['threshold']})")
    return 0
