"""MINI.md's properties 3 and 4, and the method's recovery bar, measured from ``metrics.csv``.

Property 3: each single-task teacher gains at least half of its task's headroom, ``(teacher -
base) / (ceiling - base) >= 0.5`` on its own columns (the benchmark columns of its task whose
scorer is in its reward; all columns of the task if none is); ceiling = the column's score on
clean renders (``world_bounds.json`` of the world validation) or the config's upper bound.
Property 4: some teacher lowers another task's column by more than 2 standard errors of the
paired difference over evaluation seeds (teacher and base see the same prompts and seeds).
Recovery: the DiffusionOPD student's gain over the base on each teacher's own columns is at least
90% of the teacher's (mean over training seeds). A run evaluated without CFG (the NFT
composition teacher) is compared with the base without CFG, every other run with the base with
CFG. Every number comes from the evaluations, and a failed check is reported as failed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from opd.validation import check_row as _row

BASE_RUN = "base_cfg"
BASE_NOCFG = "base_nocfg"
TEACHER_PREFIX = "teacher_"


def base_run_for(cfg: Mapping[str, Any], run: str) -> str:
    """The base evaluation a run is compared with: without CFG for a run evaluated CFG-free (the
    NFT composition teacher), else with CFG, so a drop is never the guidance scale's doing."""
    from opd.evaluation import eval_guidance_of

    try:
        guidance = eval_guidance_of(dict(cfg), run)
    except KeyError:  # a run the config does not define (e.g. a unit table): the CFG base
        return BASE_RUN
    return BASE_NOCFG if guidance == 1.0 else BASE_RUN


def own_columns(cfg: Mapping[str, Any], task: str) -> list[str]:
    """The benchmark columns a task's teacher is trained for."""
    benches = cfg["benchmarks"]
    reward = set(cfg["tasks"][task].get("reward", {}))
    of_task = [c for c, b in benches.items() if b.get("task") == task]
    rewarded = [c for c in of_task if benches[c].get("scorer") in reward]
    return rewarded or of_task


def final_by_eval_seed(metrics: pd.DataFrame, run: str, column: str) -> pd.DataFrame:
    """Values of ``run`` on ``column`` at each seed's last evaluated step: seed x eval_seed."""
    rows = metrics[
        (metrics["run"] == run) & (metrics["metric"] == column) & metrics["eval_seed"].notna()
    ]
    if rows.empty:
        return pd.DataFrame()
    last = rows.groupby("seed")["step"].transform("max")
    rows = rows[rows["step"] == last]
    return rows.pivot_table(index="seed", columns="eval_seed", values="value", aggfunc="mean")


def ceilings(cfg: Mapping[str, Any], bounds_file: Path | None) -> dict[str, float]:
    """Each column's ceiling: clean renders (world validation) first, else the config's bound."""
    out: dict[str, float] = {}
    for col, bench in cfg["benchmarks"].items():
        if bench.get("bounds") is not None:
            out[col] = float(bench["bounds"][1])
    if bounds_file is not None and Path(bounds_file).exists():
        for col, b in json.loads(Path(bounds_file).read_text()).items():
            out[col] = float(b["ceiling"])
    return out


class _Finals:
    """Cached final evaluations of one metrics table: per-eval-seed tables and their means, and
    each run's base (each pivot and registry lookup is done once)."""

    def __init__(self, metrics: pd.DataFrame, cfg: Mapping[str, Any]) -> None:
        self.metrics, self.cfg = metrics, cfg
        self._tables: dict[tuple[str, str], pd.DataFrame] = {}
        self._bases: dict[str, str] = {}

    def table(self, run: str, col: str) -> pd.DataFrame:
        key = (run, col)
        if key not in self._tables:
            self._tables[key] = final_by_eval_seed(self.metrics, run, col)
        return self._tables[key]

    def mean(self, run: str, col: str) -> float:
        vals = self.table(run, col)
        return float(vals.mean(axis=1).mean()) if not vals.empty else math.nan

    def base(self, run: str) -> str:
        if run not in self._bases:
            self._bases[run] = base_run_for(self.cfg, run)
        return self._bases[run]


def _headroom_row(f: _Finals, task: str, ceiling: Mapping[str, float]) -> dict[str, Any]:
    """Property 3 for one task's teacher."""
    teacher = f"{TEACHER_PREFIX}{task}"
    base = f.base(teacher)
    parts, fracs = [], []
    for col in own_columns(f.cfg, task):
        b, t, c = f.mean(base, col), f.mean(teacher, col), ceiling.get(col)
        if c is None or not c > b:
            parts.append(f"{col} {b:.3g} -> {t:.3g} (no headroom above the base)")
            continue
        fracs.append((t - b) / (c - b))
        parts.append(f"{col} {b:.3g} ({base}) -> {t:.3g} of ceiling {c:.3g}")
    value = float(np.mean(fracs)) if fracs else math.nan
    return _row(
        "3", f"{task} teacher gains half its headroom: " + "; ".join(parts), value, ">=", 0.5
    )


def _conflict_row(f: _Finals, tasks: list[str]) -> dict[str, Any] | None:
    """Property 4: the largest paired drop a teacher causes on another task's column."""
    conflicts = []
    for task in tasks:
        teacher = f"{TEACHER_PREFIX}{task}"
        base = f.base(teacher)
        for col, bench in f.cfg["benchmarks"].items():
            t, b = f.table(teacher, col), f.table(base, col)
            if bench.get("task") == task or t.empty or b.empty:
                continue
            d = (t.iloc[0] - b.iloc[0]).dropna()  # paired over evaluation seeds
            if len(d) < 2:
                continue
            se = float(d.std(ddof=1)) / math.sqrt(len(d))
            z = -float(d.mean()) / se if se > 0 else (math.inf if d.mean() < 0 else 0.0)
            conflicts.append((z, task, col, base, float(b.iloc[0].mean()), float(t.iloc[0].mean())))
    if not conflicts:
        return None
    z, task, col, base, b, t = max(conflicts)
    n = sum(1 for c in conflicts if c[0] > 2)
    check = (
        f"largest drop of another task's column by a teacher, in paired standard errors: "
        f"{task} teacher on {col} {b:.3g} ({base}) -> {t:.3g}; {n} of {len(conflicts)} "
        "(teacher, column) pairs drop by more than 2"
    )
    return _row("4", check, z, ">", 2.0)


def _recovery_row(f: _Finals, task: str, method: str) -> dict[str, Any]:
    """The student's gain over its base as a fraction of the task teacher's over its base."""
    teacher = f"{TEACHER_PREFIX}{task}"
    ratios, parts = [], []
    for col in own_columns(f.cfg, task):
        tb, t = f.mean(f.base(teacher), col), f.mean(teacher, col)
        ob, o = f.mean(f.base(method), col), f.mean(method, col)
        if not t > tb:
            parts.append(f"{col}: the teacher did not gain ({tb:.3g} -> {t:.3g})")
            ratios.append(math.nan)
            continue
        ratios.append((o - ob) / (t - tb))
        parts.append(f"{col} teacher {tb:.3g} -> {t:.3g}, {method} {ob:.3g} -> {o:.3g}")
    value = float(np.mean(ratios)) if ratios else math.nan
    check = f"{method} recovers 90% of the {task} teacher's gain: " + "; ".join(parts)
    return _row("recovery", check, value, ">=", 0.9)


def property_checks(
    metrics: pd.DataFrame, cfg: Mapping[str, Any], ceiling: Mapping[str, float], method: str = "opd"
) -> pd.DataFrame:
    """One row per check (property 3 per task, property 4 overall, recovery per task)."""
    f = _Finals(metrics, cfg)
    runs = set(metrics["run"])
    tasks = [t for t in cfg["tasks"] if f"{TEACHER_PREFIX}{t}" in runs]
    rows = [_headroom_row(f, task, ceiling) for task in tasks]
    conflict = _conflict_row(f, tasks)
    if conflict is not None:
        rows.append(conflict)
    if method in runs:
        rows += [_recovery_row(f, task, method) for task in tasks]
    return pd.DataFrame(rows, columns=["property", "check", "value", "threshold", "passed"])


def write_property_checks(
    metrics: pd.DataFrame, cfg: Mapping[str, Any], bounds_file: Path | None, out_dir: Path
) -> pd.DataFrame:
    """Write ``properties.{csv,md}`` under ``out_dir`` and return the table."""
    table = property_checks(metrics, cfg, ceilings(cfg, bounds_file))
    world = cfg.get("world", {}).get("version", "none") if cfg.get("world") else "none"
    table.insert(0, "world_version", world)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "properties.csv", index=False)
    (out_dir / "properties.md").write_text(table.to_markdown(index=False) + "\n")
    return table
