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

It also lists every property check (``properties.csv``, ``world_validation.csv``) whose verdict
differs between the two runs. With ``--control`` (the tables of the reference code run again with
a harmless perturbation, which shows how far training chaos alone moves each entry) it judges
the new run the way a speed change is judged: its share of entries beyond 2 noise units is no
larger than the control's (a one-sided two-proportion test at 2 standard errors), none is
beyond 4, and no verdict changes that the control's does not; the exit status is then 0 when
all three hold and 1 when one does not.

    python benchmarks/compare_tables.py --new results/mini/tables
    python benchmarks/compare_tables.py --new NEW/tables --control CONTROL/tables
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


def verdicts(reference: Path, new: Path) -> list[dict[str, object]]:
    """Every property check found in both folders with both verdicts: ``properties.csv`` keyed
    by (property, task), ``world_validation.csv`` by (property, check)."""
    out: list[dict[str, object]] = []
    for name, key in (("properties.csv", "task"), ("world_validation.csv", "check")):
        if not ((reference / name).exists() and (new / name).exists()):
            continue
        a, b = (pd.read_csv(d / name).fillna({key: ""}) for d in (reference, new))
        right = {(str(r["property"]), str(r[key])): bool(r["passed"]) for _, r in b.iterrows()}
        for _, r in a.iterrows():
            k = (str(r["property"]), str(r[key]))
            if k in right:
                out.append(
                    {
                        "check": f"{name}: {k[0]} / {k[1]}",
                        "reference": bool(r["passed"]),
                        "new": right[k],
                    }
                )
    return out


def changed(checks: list[dict[str, object]]) -> list[str]:
    """The checks whose verdict differs."""
    return [str(c["check"]) for c in checks if c["reference"] != c["new"]]


def against_control(n: int, beyond_new: int, beyond_control: int) -> float:
    """One-sided two-proportion z of the new run's share of entries beyond 2 noise units over the
    control's (pooled standard error; 0 when neither has any)."""
    pooled = (beyond_new + beyond_control) / (2 * n)
    se = math.sqrt(pooled * (1 - pooled) * 2 / n)
    return 0.0 if se == 0 else (beyond_new - beyond_control) / n / se


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
    p.add_argument("--control", type=Path, default=None, help="a control run's tables")
    args = p.parse_args(argv)
    ref_world, new_world = world_version(args.reference), world_version(args.new)
    if ref_world and new_world and ref_world != new_world:
        print(
            f"error: the reference was made in world {ref_world}, the new tables in {new_world};"
            " tables of different worlds are not comparable",
            file=sys.stderr,
        )
        return 2
    ref_table = pd.read_csv(args.reference / "table1.csv")
    df = compare(ref_table, pd.read_csv(args.new / "table1.csv"))
    worst = df.loc[df["z"].abs().idxmax()]
    checks = verdicts(args.reference, args.new)
    summary = {
        "reference": str(args.reference),
        "new": str(args.new),
        "pairs": len(df),
        "within_2": int((df["z"].abs() <= 2).sum()),
        "within_3": int((df["z"].abs() <= 3).sum()),
        "max_abs_z": float(abs(worst["z"])),
        "worst": f"{worst['row']} / {worst['metric']}",
        "verdicts_changed": changed(checks),
        "rows": df.to_dict(orient="records"),
    }
    if args.control is not None:
        summary["control"] = judge(
            df, summary["verdicts_changed"], ref_table, args.reference, args.control
        )
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
    print(f"verdicts that changed: {', '.join(summary['verdicts_changed']) or 'none'}")
    if args.control is None:
        return 0 if summary["max_abs_z"] <= args.max_z else 1
    c = summary["control"]
    print(
        f"control run: {c['beyond_2']}/{len(df)} beyond 2 noise units against the new run's "
        f"{c['new_beyond_2']} (z {c['z_share']:.2f}; holds: {c['share_holds']}); beyond 4: new run"
        f" {c['new_beyond_4']}, control {c['beyond_4']}; verdicts the control changed: "
        f"{', '.join(c['verdicts_changed']) or 'none'}; new verdict changes it does not explain: "
        f"{', '.join(c['unexplained_verdicts']) or 'none'}. Holds: {c['holds']}"
    )
    return 0 if c["holds"] else 1


def judge(
    df: pd.DataFrame,
    new_changed: list[str],
    ref_table: pd.DataFrame,
    reference: Path,
    control: Path,
) -> dict:
    """The new run (``df``, the verdicts it changed) against the control run, both compared with
    the reference (its Table 1 ``ref_table``, its property checks in ``reference``)."""
    ctl = compare(ref_table, pd.read_csv(control / "table1.csv"))
    n = len(df)
    beyond_new, beyond_ctl = int((df["z"].abs() > 2).sum()), int((ctl["z"].abs() > 2).sum())
    z = against_control(n, beyond_new, beyond_ctl)
    ctl_changed = changed(verdicts(reference, control))
    unexplained = [v for v in new_changed if v not in ctl_changed]
    beyond_4 = int((df["z"].abs() > 4).sum())
    return {
        "tables": str(control),
        "pairs": len(ctl),
        "beyond_2": beyond_ctl,
        "beyond_4": int((ctl["z"].abs() > 4).sum()),  # the control's own, for scale
        "max_abs_z": float(ctl["z"].abs().max()),
        "new_beyond_2": beyond_new,
        "z_share": z,
        "share_holds": bool(z <= 2),
        "new_beyond_4": beyond_4,
        "verdicts_changed": ctl_changed,
        "unexplained_verdicts": unexplained,
        "holds": bool(z <= 2 and beyond_4 == 0 and not unexplained),
        "rows": ctl.to_dict(orient="records"),
    }


if __name__ == "__main__":
    sys.exit(main())
