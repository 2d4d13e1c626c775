"""The README's Table 1: a short form of the reference run's ``table1.csv``.

The README shows the first columns of each benchmark task (compose, text, and the aesthetics
task's pick, clip and hps), the Average and the compute of every Table-1 row of
``benchmarks/reference/mini/table1.csv``, between the markers ``<!-- table1:begin -->`` and
``<!-- table1:end -->``. ``tests/docs/test_readme_table.py`` checks that the two agree; after
replacing the reference, rewrite the block:

    python benchmarks/readme_table.py --write
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pandas as pd

from opd.reporting.tables import format_mean_std

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "benchmarks" / "reference" / "mini" / "table1.csv"
README = REPO / "README.md"
BEGIN, END = "<!-- table1:begin -->", "<!-- table1:end -->"
COLUMNS = ("compose", "text", "pick", "clip", "hps", "average")


def _count(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    return f"{x / 1e3:.0f}k" if x >= 1e3 else f"{x:.0f}"


def render(csv: Path = REFERENCE) -> str:
    """The Markdown table of ``csv`` (a Table-1 CSV written by ``opd tables``)."""
    frame = pd.read_csv(csv)
    head = ["model", *(c if c != "average" else "Average" for c in COLUMNS), "model evals"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    # per column: 3 decimals for scores within [-1, 1], 2 for the learned scorers' wider scales
    decimals = {c: 3 if frame[f"{c}_mean"].abs().max() < 1 else 2 for c in COLUMNS}
    for _, row in frame.iterrows():
        cells = [str(row["row"])]
        for c in COLUMNS:
            mean, std = float(row[f"{c}_mean"]), float(row[f"{c}_std"])
            cells.append(format_mean_std(mean, std, decimals[c]))
        cells.append(_count(float(row["evals_total"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_block(text: str) -> str:
    """The table between the markers of the README's ``text``."""
    match = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    if not match:
        raise ValueError(f"the README has no {BEGIN} ... {END} block")
    return match.group(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="rewrite the README's block")
    args = p.parse_args()
    table = render()
    if not args.write:
        print(table)
        return
    text = README.read_text(encoding="utf-8")
    old = readme_block(text)
    README.write_text(text.replace(old, table), encoding="utf-8")
    print(f"README.md: Table 1 block {'unchanged' if old == table else 'rewritten'}")


if __name__ == "__main__":
    main()
