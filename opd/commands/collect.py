"""``opd collect``: the eval CSVs and training logs as one tidy table (``metrics.csv``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from opd.commands._common import add_config_args, load


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("collect", help="concatenate eval CSVs and training logs into metrics.csv")
    add_config_args(p)
    p.add_argument("--evals", type=Path, nargs="+", required=True, help="eval CSVs")
    p.add_argument(
        "--train-log",
        nargs=3,
        action="append",
        default=[],
        metavar=("RUN", "SEED", "DIR"),
        help="a run folder whose metrics.csv is folded in as train/<metric> rows; repeatable",
    )
    p.add_argument("--out", type=Path, required=True, help="metrics.csv to write")
    return p


def run(args: argparse.Namespace) -> int:
    from opd.evaluation import verify_eval_csv
    from opd.reporting.collect import collect, write_metrics
    from opd.training.loop import verify_run_log

    cfg = load(args)
    logs = [(run, int(seed), Path(d)) for run, seed, d in args.train_log]
    for path in args.evals:  # a truncated or altered input is named, never tabulated
        verify_eval_csv(path)
    for _run, _seed, run_dir in logs:
        verify_run_log(run_dir)
    df = collect(cfg, args.evals, logs)
    write_metrics(df, args.out)
    n_eval = int(df["eval_seed"].notna().sum())
    print(f"[opd] {args.out}: {len(df)} rows ({n_eval} evaluation, {len(df) - n_eval} training)")
    return 0
