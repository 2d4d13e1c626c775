"""Compare a reproduction's Table 1 with a kept reference run, in units of seed noise.

A speed change that alters floating-point bits (another thread count, a reused computation)
moves every trained number a little: training amplifies the last bit into a different sample
path. What must hold is that the tables agree within seed noise. For each (row, metric) this
prints the difference and ``z = diff / noise``, where noise is the standard error of the
difference of two means over seeds: ``sqrt(s_ref^2 / n_ref + s_new^2 / n_new)``. Rows evaluated
on one seed (the base model, the teachers) have no spread of their own; they take the metric's
median seed standard deviation over the multi-seed rows of both runs, with n = 1; so does a
row whose seeds all gave the same number (teacher_merge: it trains nothing). Writes JSON
(default ``results/mini/compare_to_reference.json``, beside the run it compares; the kept record
``benchmarks/results/mini_vs_reference.json`` is written only when named with ``--out``) and
prints a table; exits 1 if any ``|z|`` exceeds ``--max-z`` (default 3).

    python benchmarks/compare_tables.py --new results/mini/tables
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

METRICS = ("compose", "text", "pick", "clip", "hps", "quality", "pref2", "judge", "average")


def compare(ref: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """One row per (table row, metric): both means, the difference, its noise and z."""
    ref, new = ref.set_index("row"), new.set_index("row")
    out = []
    for metric in METRICS:
        stds = pd.concat([ref[f"{metric}_std"], new[f"{metric}_std"]]).dropna()
        typical = float(stds[stds > 0].median()) if (stds > 0).any() else math.nan
        for row in ref.index.intersection(new.index):
            a, b = ref.loc[row], new.loc[row]
            parts = []
            for r in (a, b):
                n = int(r["n_seeds"])
                s = r[f"{metric}_std"]
                s = typical if n < 2 or pd.isna(s) or s == 0 else float(s)
                parts.append(s * s / max(n, 1))
            noise = math.sqrt(sum(parts))
            diff = float(b[f"{metric}_mean"]) - float(a[f"{metric}_mean"])
            out.append(
                {
                    "row": row,
                    "metric": metric,
                    "reference": float(a[f"{metric}_mean"]),
                    "new": float(b[f"{metric}_mean"]),
                    "diff": diff,
                    "noise": noise,
                    "z": diff / noise if noise > 0 else (0.0 if diff == 0 else math.inf),
                }
            )
    return pd.DataFrame(out)


def world_version(tables: Path) -> str | None:
    """The world version a tables folder was made in (from ``world_validation.csv``)."""
    path = tables / "world_validation.csv"
    if not path.exists():
        return None
    versions = pd.read_csv(path)["world_version"].astype(str).unique()
    return str(versions[0]) if len(versions) == 1 else ",".join(sorted(versions))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, default=Path("benchmarks/reference/mini"))
    p.add_argument("--new", type=Path, default=Path("results/mini/tables"))
    p.add_argument("--out", type=Path, default=Path("results/mini/compare_to_reference.json"))
    p.add_argument("--max-z", type=float, default=3.0)
    args = p.parse_args(argv)
    ref_world, new_world = world_version(args.reference), world_version(args.new)
    if ref_world and new_world and ref_world != new_world:
        print(
            f"error: the reference was made in world {ref_world}, the new tables in {new_world};"
            " tables of different worlds are not comparable",
            file=sys.stderr,
        )
        return 2
    df = compare(pd.read_csv(args.reference / "table1.csv"), pd.read_csv(args.new / "table1.csv"))
    worst = df.loc[df["z"].abs().idxmax()]
    summary = {
        "reference": str(args.reference),
        "new": str(args.new),
        "pairs": len(df),
        "within_2": int((df["z"].abs() <= 2).sum()),
        "within_3": int((df["z"].abs() <= 3).sum()),
        "max_abs_z": float(abs(worst["z"])),
        "worst": f"{worst['row']} / {worst['metric']}",
        "rows": df.to_dict(orient="records"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    table = df.pivot(index="row", columns="metric", values="z").reindex(columns=list(METRICS))
    print("z = (new - reference) / seed noise")
    print(table.round(2).to_string())
    print(
        f"\n{summary['within_2']}/{len(df)} within 2 noise units, "
        f"{summary['within_3']}/{len(df)} within 3; largest |z| {summary['max_abs_z']:.2f} "
        f"({summary['worst']}). JSON: {args.out}"
    )
    return 0 if summary["max_abs_z"] <= args.max_z else 1


if __name__ == "__main__":
    sys.exit(main())
