"""``opd scorers``: train the mini world's learned scorers (pick, hps, clip, pref2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from opd.commands._common import add_config_args, load


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("scorers", help="train the learned scorers of the mini world")
    add_config_args(p)
    p.add_argument("--out", type=Path, required=True, help="scorer folder (summary.json inside)")
    return p


def run(args: argparse.Namespace) -> int:
    from opd.rewards.train_scorers import train_all_scorers

    cfg = load(args)
    seed = int((cfg.get("scorer_training") or {}).get("seed", 0))
    train_all_scorers(
        cfg,
        seed=seed,
        out_dir=args.out,
        threads=int(cfg.get("threads", 1)),
        names=list(cfg.get("learned_scorers", [])),
    )
    return 0
