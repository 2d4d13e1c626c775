"""``opd retention``: per-task retention table and figure from ``metrics.csv``.

``opd retention --config C --metrics results/<p>/metrics.csv --out-dir results/<p>`` writes
``tables/retention.csv`` (:func:`opd.analysis.retention_table`), ``figures/retention.png/.pdf``
(:func:`opd.analysis.plots.retention_figure`) and the generated caption
``figures/retention.caption.txt`` (also as ``retention.rst`` for the HTML report).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from opd.commands._common import add_config_args, add_metrics_args, load


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("retention", help="per-task retention table and figure")
    add_config_args(p)
    add_metrics_args(p, "results root (tables/, figures/)")
    return p


def read_metrics(path: Path):
    """:func:`opd.reporting.collect.read_metrics`, imported on use (the CLI loads no pandas)."""
    from opd.reporting.collect import read_metrics as read

    return read(path)


def write_retention(df, cfg, out_dir: Path) -> list[Path]:
    """Table, figure and caption of ``df`` (the metrics table) under ``out_dir``."""
    from opd.analysis.plots import retention_caption, retention_figure, save_figure, write_caption
    from opd.analysis.retention import retention_table

    table = retention_table(df, cfg)
    out = Path(out_dir)
    csv = out / "tables" / "retention.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv.with_suffix(".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(csv)
    stem = out / "figures" / "retention"
    files = [csv, *save_figure(retention_figure(df, cfg), stem)]
    return files + write_caption(retention_caption(df, cfg, table), stem)


def run(args: argparse.Namespace) -> int:
    cfg = load(args)
    for path in write_retention(read_metrics(args.metrics), cfg, args.out_dir):
        print(f"opd retention: wrote {path}", flush=True)
    return 0
