"""``opd released``: the table of released models, published adapters scored here beside the
values their authors report (``released.csv`` and ``released.md``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from opd.commands._common import add_config_args, load
from opd.released import adapters, read_record


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("released", help="the table of released models vs their reported numbers")
    add_config_args(p)
    p.add_argument(
        "--base-eval", type=Path, required=True, help="eval CSV of released.base (with its record)"
    )
    p.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="NAME=CSV",
        help="eval CSV of the released adapter NAME (with its record); one per adapter",
    )
    p.add_argument("--out-dir", type=Path, required=True, help="where released.{csv,md} go")
    return p


def run(args: argparse.Namespace) -> int:
    from opd.reporting.released import released_table, write_released

    cfg = load(args)
    evals = {"base": args.base_eval}
    for item in args.eval:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"opd released: --eval takes NAME=CSV, got {item!r}")
        evals[name] = Path(path)
    missing = [n for n in adapters(cfg) if n not in evals]
    if missing:
        raise SystemExit(f"opd released: no --eval for released adapter(s) {', '.join(missing)}")
    records = {name: read_record(path) for name, path in evals.items()}
    table = released_table(cfg, evals, records)
    for path in write_released(table, cfg, args.out_dir):
        print(path)
    return 0
