"""``opd pretrain``: build the corpus and pretrain the mini world's base model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from opd.commands._common import add_config_args, load, setup_threads


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("pretrain", help="pretrain the mini world's base model")
    add_config_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder of the saved base model")
    p.add_argument(
        "--state",
        type=Path,
        help="pretraining state file: written with --stop-at, resumed from when it exists",
    )
    p.add_argument(
        "--stop-at", type=int, help="stop after this many steps and save the state to --state"
    )
    return p


def run(args: argparse.Namespace) -> int:
    from opd.training.pretrain import pretrain_base

    cfg = load(args)
    setup_threads(cfg)
    if args.stop_at is not None and args.state is None:
        raise SystemExit("opd pretrain: --stop-at needs --state")
    summary = pretrain_base(
        cfg,
        args.out,
        progress=bool(cfg.get("progress", True)),
        state=args.state,
        stop_at=args.stop_at,
    )
    print(f"[opd] pretrain: {json.dumps(summary)}")
    return 0
