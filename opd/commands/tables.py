"""``opd tables``: Table 1 and the ablation table (Markdown, LaTeX, CSV) from metrics.csv."""

from __future__ import annotations

import argparse

from opd.commands._common import add_bounds_arg, add_config_args, add_metrics_args, load


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("tables", help="write Table 1 and the ablation table from metrics.csv")
    add_config_args(p)
    add_metrics_args(p, "the tables folder")
    add_bounds_arg(p)
    return p


def run(args: argparse.Namespace) -> int:
    from opd.reporting.collect import read_metrics
    from opd.reporting.tables import make_tables, run_info, with_world_bounds, write_tables

    cfg = with_world_bounds(load(args), args.bounds)
    tables = make_tables(read_metrics(args.metrics), cfg, run_info(cfg))
    for path in write_tables(tables, cfg, args.out_dir):
        print(f"[opd] wrote {path}")
    return 0
