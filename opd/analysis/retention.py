"""Per-task retention: how each method keeps (or forgets) every task's score over training.

Input: the tidy metrics table ``results/<p>/metrics.csv`` (columns profile, run, method, role,
seed, stage, step, model_evals, wall_seconds, task, metric, eval_seed, value; training-log rows,
which have no ``eval_seed``, are ignored) and the config, whose ``benchmarks`` map each metric
column to the task whose prompts it is scored on.

- :func:`retention_curves`: per run x training seed x checkpoint x metric column, the value
  averaged over evaluation seeds, with ``step``, ``model_evals`` and the stage label.
- :func:`retention_table`: per run x metric column, tidy rows ``statistic`` in
  ``best`` (the best checkpoint), ``final`` (the last), ``drop`` (= best - final: forgetting as
  the drop from a run's own best), each computed per training seed and averaged (``std`` over
  seeds, ``n_seeds``); for cascade runs (stage labels ``"<k>:<task>"``) ``stage_end`` (the value
  at the last checkpoint of each stage, ``stage`` column = the label: the score before/after
  every later stage) and ``drop_after_own_stage`` (value at the end of the last stage that
  trained the column's task minus the final value); for every non-teacher run
  ``gap_to_teacher`` (final minus the final of the task's teacher run ``teacher_<task>``).
  Every benchmark metric is treated as higher-is-better.
- :func:`teacher_finals`, :func:`stage_boundaries`, :func:`main_columns`: helpers used by the
  figure (:func:`opd.analysis.plots.retention_figure`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "CURVE_COLUMNS",
    "TABLE_COLUMNS",
    "main_columns",
    "parse_stage",
    "retention_curves",
    "retention_table",
    "stage_boundaries",
    "teacher_finals",
]

TEACHER_PREFIX = "teacher_"
CURVE_COLUMNS: tuple[str, ...] = (
    "run",
    "method",
    "role",
    "seed",
    "stage",
    "step",
    "model_evals",
    "wall_seconds",
    "task",
    "metric",
    "value",
)
TABLE_COLUMNS: tuple[str, ...] = (
    "run",
    "method",
    "role",
    "task",
    "metric",
    "statistic",
    "stage",
    "value",
    "std",
    "n_seeds",
)
_STAGE = re.compile(r"^\s*(\d+)\s*:\s*(.+?)\s*$")


def parse_stage(label: Any) -> tuple[int, str] | None:
    """``"1:composition"`` -> ``(1, "composition")``; None for non-cascade labels."""
    if not isinstance(label, str):
        return None
    m = _STAGE.match(label)
    return (int(m.group(1)), m.group(2)) if m else None


def main_columns(cfg: Mapping[str, Any]) -> list[str]:
    """Each task's main column: the first benchmark column scored on that task's prompts."""
    seen: dict[str, str] = {}
    for col, spec in (cfg.get("benchmarks") or {}).items():
        seen.setdefault(str(spec["task"]), col)
    return list(seen.values())


def _eval_rows(df: pd.DataFrame, cfg: Mapping[str, Any]) -> pd.DataFrame:
    if "metric" not in df.columns and "column" in df.columns:
        df = df.rename(columns={"column": "metric"})
    columns = cfg.get("benchmarks") or {}
    ev = df[df["metric"].isin(list(columns))]
    if "eval_seed" in ev.columns:
        ev = ev[pd.to_numeric(ev["eval_seed"], errors="coerce").notna()]
    ev = ev.copy()
    for col, default in (("role", "other"), ("method", ""), ("stage", "")):
        if col not in ev.columns:
            ev[col] = default
    for col in ("model_evals", "wall_seconds"):
        ev[col] = pd.to_numeric(ev[col], errors="coerce") if col in ev.columns else np.nan
    ev["stage"] = ev["stage"].fillna("").astype(str)
    ev["method"] = ev["method"].fillna("").astype(str)
    ev["task"] = ev["metric"].map(lambda c: str(columns[c]["task"]))
    ev["value"] = pd.to_numeric(ev["value"])
    return ev


def retention_curves(df: pd.DataFrame, cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Per run x seed x checkpoint x metric column: the mean over evaluation seeds."""
    ev = _eval_rows(df, cfg)
    if ev.empty:
        return pd.DataFrame(columns=list(CURVE_COLUMNS))
    keys = ["run", "method", "role", "seed", "stage", "step", "task", "metric"]
    out = ev.groupby(keys, dropna=False, sort=True).agg(
        model_evals=("model_evals", "mean"),
        wall_seconds=("wall_seconds", "mean"),
        value=("value", "mean"),
    )
    out = out.reset_index()
    out["step"] = out["step"].astype(int)
    return out[list(CURVE_COLUMNS)].sort_values(["run", "seed", "metric", "step"], kind="stable")


def _per_seed_final(curves: pd.DataFrame) -> pd.DataFrame:
    idx = curves.groupby(["run", "seed", "metric"])["step"].idxmax()
    return curves.loc[idx]


def teacher_finals(df: pd.DataFrame, cfg: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    """``{(task, column): final value of run teacher_<task> (mean over its seeds)}``."""
    curves = retention_curves(df, cfg)
    teach = curves[curves["run"].astype(str).str.startswith(TEACHER_PREFIX)]
    if "role" in teach.columns:
        teach = teach[teach["role"].isin(["teacher", "other"])]
    if teach.empty:
        return {}
    final = _per_seed_final(teach)
    out: dict[tuple[str, str], float] = {}
    for (run, metric), g in final.groupby(["run", "metric"]):
        out[(str(run).removeprefix(TEACHER_PREFIX), str(metric))] = float(g["value"].mean())
    return out


def stage_boundaries(curves: pd.DataFrame) -> dict[str, list[float]]:
    """Per cascade run, the training compute (``model_evals``, mean over seeds) at the last
    checkpoint of every stage but the final one."""
    out: dict[str, list[float]] = {}
    for run, d in curves.groupby("run"):
        parsed = d["stage"].map(parse_stage)
        if parsed.isna().all():
            continue
        d = d.assign(_k=parsed.map(lambda p: p[0] if p else -1))
        ends = d[d["_k"] >= 0].groupby(["seed", "_k"])["model_evals"].max().groupby("_k").mean()
        out[str(run)] = [float(x) for x in ends.sort_index().to_numpy()[:-1]]
    return out


def _summ(values: pd.Series) -> tuple[float, float, int]:
    v = values.to_numpy(float)
    return float(np.mean(v)), float(np.std(v, ddof=1)) if v.size > 1 else 0.0, int(v.size)


def retention_table(df: pd.DataFrame, cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Best / final / drop, cascade stage-end values and gaps to the teachers (tidy rows)."""
    curves = retention_curves(df, cfg)
    curves = curves[curves["role"] != "base"]
    if curves.empty:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    teachers = teacher_finals(df, cfg)
    rows: list[dict[str, Any]] = []
    for (run, metric), d in curves.groupby(["run", "metric"], sort=True):
        first = d.iloc[0]
        base = {
            "run": run,
            "method": first["method"],
            "role": first["role"],
            "task": first["task"],
            "metric": metric,
        }
        per_seed = d.groupby("seed")
        best = per_seed["value"].max()
        final = d.loc[per_seed["step"].idxmax()].set_index("seed")["value"]
        for stat, series in (("best", best), ("final", final), ("drop", best - final)):
            m, s, n = _summ(series)
            rows.append(
                {**base, "statistic": stat, "stage": "", "value": m, "std": s, "n_seeds": n}
            )
        parsed = d["stage"].map(parse_stage)
        if parsed.notna().any():
            d = d.assign(_k=parsed.map(lambda p: p[0] if p else -1))
            labels = d[d["_k"] >= 0].groupby("_k")["stage"].first().sort_index()
            ends: dict[int, pd.Series] = {}
            for k, label in labels.items():
                dk = d[d["_k"] == k]
                ends[k] = dk.loc[dk.groupby("seed")["step"].idxmax()].set_index("seed")["value"]
                m, s, n = _summ(ends[k])
                rows.append(
                    {
                        **base,
                        "statistic": "stage_end",
                        "stage": label,
                        "value": m,
                        "std": s,
                        "n_seeds": n,
                    }
                )
            own = [k for k, label in labels.items() if parse_stage(label)[1] == first["task"]]
            if own:
                k = max(own)
                loss = (ends[k] - final).dropna()
                if len(loss):
                    m, s, n = _summ(loss)
                    rows.append(
                        {
                            **base,
                            "statistic": "drop_after_own_stage",
                            "stage": labels[k],
                            "value": m,
                            "std": s,
                            "n_seeds": n,
                        }
                    )
        tv = teachers.get((str(first["task"]), str(metric)))
        is_teacher = str(run).startswith(TEACHER_PREFIX) or first["role"] == "teacher"
        if tv is not None and not is_teacher:
            m, s, n = _summ(final - tv)
            rows.append(
                {
                    **base,
                    "statistic": "gap_to_teacher",
                    "stage": "",
                    "value": m,
                    "std": s,
                    "n_seeds": n,
                }
            )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
