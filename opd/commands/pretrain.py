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
    return p


def run(args: argparse.Namespace) -> int:
    from opd.training.pretrain import pretrain_base

    cfg = load(args)
    setup_threads(cfg)
    summary = pretrain_base(cfg, args.out, progress=bool(cfg.get("progress", True)))
    print(f"[opd] pretrain: {json.dumps(summary)}")
    return 0
