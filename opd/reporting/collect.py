"""The tidy long table ``results/<p>/metrics.csv``: every evaluation and every training log.

One row per (run, seed, checkpoint step, task, metric, evaluation seed) from the evaluation CSVs
of ``opd evaluate`` (the metric is the benchmark column), plus one row per logged training
quantity from each run's ``metrics.csv`` (metric prefixed ``train/``, no evaluation seed, compute
columns empty). Each row carries the profile, the world version and the run's role (base,
teacher, table1 or ablation). Tables and figures read only this table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from opd.config import method_section
from opd.reporting import METRIC_COLUMNS

BASE_RUNS = ("base_nocfg", "base_cfg")
TEACHER_PREFIX = "teacher_"
COMPUTE_COLUMNS = ("samples", "forward_evals", "backward_evals", "model_evals", "wall_seconds")


def role_of(run: str, cfg: Mapping[str, Any]) -> str:
    """``base``, ``teacher``, ``table1``, ``ablation`` (or ``other`` for an unlisted run)."""
    if run in BASE_RUNS:
        return "base"
    if run.startswith(TEACHER_PREFIX) and run.removeprefix(TEACHER_PREFIX) in cfg["tasks"]:
        return "teacher"
    if run in cfg.get("table1", []):
        return "table1"
    if run in cfg.get("ablations", []):
        return "ablation"
    return "other"


def method_of(run: str, cfg: Mapping[str, Any]) -> str:
    """The registered method name of a run (``base`` for the base model's rows; a run the
    config does not define, or a teacher that trains nothing, is named after itself)."""
    if run in BASE_RUNS:
        return "base"
    try:
        return method_section(cfg, run)[0]
    except KeyError:
        return run


def world_version(cfg: Mapping[str, Any]) -> str:
    return str((cfg.get("world") or {}).get("version", "none"))


def read_eval(path: Path) -> pd.DataFrame:
    """One eval CSV of ``opd evaluate`` with ``column`` renamed to ``metric`` (an ``se`` the
    evaluation could not estimate, written ``nan``, reads as missing)."""
    df = pd.read_csv(path, keep_default_na=False, na_values=["", "nan"])
    missing = {"run", "seed", "step", "column", "eval_seed", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    return df.rename(columns={"column": "metric"})


def read_train_log(path: Path, run: str, seed: int) -> pd.DataFrame:
    """A run's training log (step, stage, task, metric, value) as ``train/<metric>`` rows."""
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    df = df.assign(run=run, seed=int(seed), metric="train/" + df["metric"].astype(str))
    return df


def tidy(frames: Iterable[pd.DataFrame], cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Concatenate eval and training rows and add profile, world version, method and role."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    df = pd.concat(frames, ignore_index=True, sort=False)
    for col in METRIC_COLUMNS:
        if col not in df.columns:
            df[col] = pd.NA
    known = df["method"].notna() & (df["method"].astype(str) != "")
    df["method"] = df["method"].where(known, df["run"].map(lambda r: method_of(r, cfg)))
    df["role"] = df["run"].map(lambda r: role_of(r, cfg))
    df["profile"] = cfg["profile"]
    df["world_version"] = world_version(cfg)
    df["stage"] = df["stage"].map(lambda s: "" if pd.isna(s) else str(s))
    df["seed"] = df["seed"].astype(int)
    df["step"] = df["step"].astype(int)
    df["eval_seed"] = pd.to_numeric(df["eval_seed"]).astype("Int64")
    for col in (*COMPUTE_COLUMNS, "value", "n", "se"):
        df[col] = pd.to_numeric(df[col])
    df = df[list(METRIC_COLUMNS)]
    order = ["role", "run", "seed", "step", "metric", "eval_seed"]
    df = df.assign(_role=df["role"].map(_ROLE_RANK)).sort_values(
        ["_role", *order[1:]], kind="stable"
    )
    return df.drop(columns="_role").reset_index(drop=True)


_ROLE_RANK = {"base": 0, "teacher": 1, "table1": 2, "ablation": 3, "other": 4}


def collect(
    cfg: Mapping[str, Any],
    evals: Iterable[Path],
    train_logs: Iterable[tuple[str, int, Path]] = (),
) -> pd.DataFrame:
    """The tidy table from eval CSVs and ``(run, seed, run_dir)`` training-log folders.

    A run folder without ``metrics.csv`` (a method that trains nothing) contributes no rows.
    """
    frames = [read_eval(Path(p)) for p in evals]
    for run, seed, run_dir in train_logs:
        log = Path(run_dir) / "metrics.csv"
        if log.exists() and log.stat().st_size:
            frames.append(read_train_log(log, run, int(seed)))
    return tidy(frames, cfg)


def write_metrics(df: pd.DataFrame, path: Path) -> Path:
    """Write the table atomically (a half-written metrics.csv never looks complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def read_metrics(path: Path) -> pd.DataFrame:
    """Read ``metrics.csv`` back with its column types (empty stage labels stay ``""``)."""
    df = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"stage": str})
    if "stage" in df.columns:
        df["stage"] = df["stage"].fillna("")
    if "eval_seed" in df.columns:
        df["eval_seed"] = pd.to_numeric(df["eval_seed"]).astype("Int64")
    return df
