"""``opd properties``: the world's properties 3 and 4 and the recovery bar from ``metrics.csv``.

``opd properties --config C --metrics results/<p>/metrics.csv --out-dir results/<p>/tables
[--ceilings results/<p>/tables/prompt_ceilings.json] [--figures-dir results/<p>/figures]``
writes ``properties.{csv,md}`` (:func:`opd.analysis.properties.write_property_checks`). The
ceilings are the config's bounds, else the world validation's best-of-16 clean renders per
prompt (``--ceilings``); with ``--figures-dir`` it also draws the ``recovery`` figure there
(:func:`opd.analysis.plots.write_recovery_figure`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from opd.commands._common import add_config_args, add_metrics_args, load


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("properties", help="check teacher gains, conflicts and OPD's recovery")
    add_config_args(p)
    add_metrics_args(p, "the tables folder")
    p.add_argument(
        "--ceilings",
        type=Path,
        default=None,
        help="prompt_ceilings.json of the world validation (columns without a config bound)",
    )
    p.add_argument(
        "--figures-dir", type=Path, default=None, help="where to draw the recovery figure"
    )
    return p


def run(args: argparse.Namespace) -> int:
    from opd.analysis.properties import write_property_checks
    from opd.reporting.collect import read_metrics

    cfg = load(args)
    metrics = read_metrics(args.metrics)
    table = write_property_checks(metrics, cfg, args.ceilings, args.out_dir)
    if args.figures_dir is not None:
        from opd.analysis.plots import write_recovery_figure  # matplotlib: only when drawn

        write_recovery_figure(metrics, cfg, args.ceilings, args.figures_dir)
    print(f"[opd] properties: {int(table['passed'].sum())}/{len(table)} checks pass")
    for _, row in table[~table["passed"]].iterrows():
        print(f"  FAILED ({row['property']}): {row['check']}: {row['value']} {row['threshold']}")
    return 0
