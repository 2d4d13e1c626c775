"""``opd figures``: the paper's figures (PNG, PDF and a generated caption) from metrics.csv."""

from __future__ import annotations

import argparse
from pathlib import Path

from opd.commands._common import add_bounds_arg, add_config_args, load
from opd.reporting import FIGURES


def _labelled(item: str) -> tuple[str, Path]:
    if "=" not in item:
        raise argparse.ArgumentTypeError(f"--samples expects LABEL=NPZ, got {item!r}")
    label, path = item.split("=", 1)
    return label, Path(path)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("figures", help="render the figures from metrics.csv and eval samples")
    add_config_args(p)
    p.add_argument("--metrics", type=Path, required=True, help="metrics.csv of `opd collect`")
    p.add_argument(
        "--samples",
        type=_labelled,
        action="append",
        default=[],
        metavar="LABEL=NPZ",
        help="evaluation samples of one model for the sample grid (row order); repeatable",
    )
    p.add_argument("--only", nargs="+", choices=FIGURES, default=None, help="a subset")
    p.add_argument("--out-dir", type=Path, required=True)
    add_bounds_arg(p)
    return p


def run(args: argparse.Namespace) -> int:
    from opd.reporting.collect import read_metrics
    from opd.reporting.figures import load_samples, write_figures
    from opd.reporting.tables import run_info, with_world_bounds

    cfg = with_world_bounds(load(args), args.bounds)
    samples = {label: load_samples(path) for label, path in args.samples if path.exists()}
    missing = [str(path) for _, path in args.samples if not path.exists()]
    if missing:
        print(f"[opd] figures: missing sample files (rows left out): {', '.join(missing)}")
    metrics = read_metrics(args.metrics)
    for path in write_figures(metrics, cfg, run_info(cfg), samples, args.out_dir, args.only):
        print(f"[opd] wrote {path}")
    return 0
