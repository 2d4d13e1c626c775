"""``opd tables``: Table 1 and the ablation table (Markdown, LaTeX, CSV) from metrics.csv."""

from __future__ import annotations

import argparse
from pathlib import Path

from opd.commands._common import add_config_args, load


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("tables", help="write Table 1 and the ablation table from metrics.csv")
    add_config_args(p)
    p.add_argument("--metrics", type=Path, required=True, help="metrics.csv of `opd collect`")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument(
        "--bounds",
        type=Path,
        default=None,
        help="world_bounds.json of the world validation: the Average's floor and ceiling",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from opd.reporting.collect import read_metrics
    from opd.reporting.tables import make_tables, run_info, with_world_bounds, write_tables

    cfg = with_world_bounds(load(args), args.bounds)
    tables = make_tables(read_metrics(args.metrics), cfg, run_info(cfg))
    for path in write_tables(tables, cfg, args.out_dir):
        print(f"[opd] wrote {path}")
    return 0
