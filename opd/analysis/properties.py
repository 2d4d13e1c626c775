"""The world's properties 3 and 4 (docs/mini_world.md) and the method's recovery, from
``metrics.csv``.

Definitions (results/README.md states them for the reader):

- Standard errors. A difference between two models (teacher against base) is paired per
  evaluation seed: each seed's value is the mean over the same prompts for both models, and the
  SE of the mean difference is ``sd / sqrt(n)`` over ``n >= 4`` evaluation seeds (fewer: no SE,
  and a check that needs one fails). A student's number (one per training seed) is reported as
  the mean and SE (``sd / sqrt(n)``) over training seeds.
- Headroom and gain. Against the base evaluated WITH CFG for every teacher and student, CFG-free
  ones included: CFG is there for free, so a CFG-free teacher that only beats the CFG-free base
  has not gained. A column's ceiling is the config's upper bound where it has one (compose and
  text: 1), else the best of 16 clean renders of each evaluation prompt, averaged as the column
  is (``prompt_ceilings.json`` of the world validation, :func:`opd.validation.prompt_ceilings`).
  A column's fraction of headroom, ``(x - base) / (ceiling - base)``, is capped at 1; a task's
  fraction is the mean of its own columns' capped fractions weighted by the task's reward mix
  (a column whose scorer is not in the reward is left out; when none is, the task's columns
  count equally). A column whose ceiling is missing or not above the base is left out and named.
- Property 3, per teacher: its task's fraction is >= 0.5 and its gain (the weighted, uncapped
  fraction, paired per evaluation seed) is >= 3 standard errors.
- Property 4: some teacher lowers another task's column by more than 2 paired standard errors.
  Here a CFG-free teacher is compared with the CFG-free base (:func:`base_run_for`): the
  property asks whether training on one task costs another, and against the CFG base the drop
  would include what dropping CFG does to that column, which is no conflict between tasks.
- Evaluation precision (``eval``): the composition task's bounded column has a per-seed SE over
  prompts (``opd.evaluation.column_se``, mean over evaluation seeds) of at most 0.02 at every
  run's final checkpoint.
- Recovery, per task: the student's fraction divided by the teacher's, per training seed, mean
  and SE over training seeds, with the teacher's fraction and its SE beside it; the bar is 0.9.
  When the teacher did not gain (fraction <= 0 or within one SE of 0, or no SE) the row keeps
  the number and says so, and fails.

:func:`recovery_curves` gives the same recovery at every evaluated checkpoint of the student
and the baselines' fractions, for the ``recovery`` figure (:mod:`opd.analysis.plots`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from opd.reporting.tables import checkpoint_values, final_values

BASE_RUN = "base_cfg"
BASE_NOCFG = "base_nocfg"
TEACHER_PREFIX = "teacher_"
#: the paper's baselines drawn beside the student in the recovery figure
BASELINES = ("multitask_grpo_guard", "multitask_nft", "cascade_nft")
MIN_EVAL_SEEDS = 4
GAIN_FRACTION, GAIN_SES, CONFLICT_SES, RECOVERY_BAR = 0.5, 3.0, 2.0, 0.9
#: the precision bar: the composition task's bounded columns (compose, GenEval) at every final
#: checkpoint have a per-seed standard error over prompts of at most this
PRECISION_TASK, PRECISION_SE = "composition", 0.02
COLUMNS = ["property", "task", "check", "value", "se", "threshold", "passed"]


def base_run_for(cfg: Mapping[str, Any], run: str) -> str:
    """The base evaluation property 4 compares a run with: without CFG for a run evaluated
    CFG-free (the NFT composition teacher), else with CFG, so a drop is never the guidance
    scale's doing. Headroom, gain and recovery always use the base with CFG."""
    from opd.evaluation import eval_guidance_of

    try:
        guidance = eval_guidance_of(dict(cfg), run)
    except KeyError:  # a run the config does not define (e.g. a unit table): the CFG base
        return BASE_RUN
    return BASE_NOCFG if guidance == 1.0 else BASE_RUN


def column_weights(cfg: Mapping[str, Any], task: str) -> dict[str, float]:
    """A task's own benchmark columns and their weights: the columns of the task whose scorer is
    in its reward, at that scorer's weight; all columns of the task at 1 when none is."""
    benches = cfg["benchmarks"]
    reward = cfg["tasks"][task].get("reward") or {}
    of_task = [c for c, b in benches.items() if b.get("task") == task]
    rewarded = {
        c: float(reward[benches[c]["scorer"]])
        for c in of_task
        if benches[c].get("scorer") in reward
    }
    return rewarded or dict.fromkeys(of_task, 1.0)


def own_columns(cfg: Mapping[str, Any], task: str) -> list[str]:
    """The benchmark columns a task's teacher is trained for."""
    return list(column_weights(cfg, task))


def standard_error(values: Sequence[float] | np.ndarray | pd.Series, least: int = 2) -> float:
    """``sd / sqrt(n)`` of ``values`` (NaNs dropped); NaN with fewer than ``least`` values."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) >= max(least, 2) else math.nan


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


def ceilings(cfg: Mapping[str, Any], ceilings_file: Path | None) -> dict[str, float]:
    """Each column's ceiling: the config's upper bound first (compose, text: 1), else the best
    of 16 clean renders per evaluation prompt (``prompt_ceilings.json``)."""
    out: dict[str, float] = {}
    if ceilings_file is not None and Path(ceilings_file).exists():
        for col, c in json.loads(Path(ceilings_file).read_text()).items():
            out[col] = float(c["ceiling"])
    for col, bench in cfg["benchmarks"].items():
        if bench.get("bounds") is not None:
            out[col] = float(bench["bounds"][1])
    return out


class _Finals:
    """Cached final evaluations of one metrics table (each pivot and base lookup done once)."""

    def __init__(self, metrics: pd.DataFrame, cfg: Mapping[str, Any]) -> None:
        self.metrics, self.cfg = metrics, cfg
        self._tables: dict[tuple[str, str], pd.DataFrame] = {}
        self._bases: dict[str, str] = {}

    def table(self, run: str, col: str) -> pd.DataFrame:
        key = (run, col)
        if key not in self._tables:
            self._tables[key] = final_by_eval_seed(self.metrics, run, col)
        return self._tables[key]

    def per_eval_seed(self, run: str, col: str) -> pd.Series:
        """Per evaluation seed, the mean over training seeds (teachers and the base have one)."""
        vals = self.table(run, col)
        return vals.mean(axis=0) if not vals.empty else pd.Series(dtype=float)

    def mean(self, run: str, col: str) -> float:
        vals = self.table(run, col)
        return float(vals.mean(axis=1).mean()) if not vals.empty else math.nan

    def base(self, run: str) -> str:
        if run not in self._bases:
            self._bases[run] = base_run_for(self.cfg, run)
        return self._bases[run]


@dataclasses.dataclass(frozen=True)
class Headroom:
    """One task's own columns that have headroom above the base with CFG: reward weights, base
    means and ceilings; ``skipped`` names the columns left out and why."""

    task: str
    columns: tuple[str, ...]
    weights: np.ndarray
    base: np.ndarray
    ceiling: np.ndarray
    skipped: tuple[str, ...] = ()

    def fraction(self, gains: np.ndarray) -> Any:
        """Reward-weighted mean of the capped fractions of headroom of ``gains`` (a gain is a
        value minus the base's mean; last axis: the columns; one row gives a number)."""
        capped = np.minimum(np.asarray(gains, float) / (self.ceiling - self.base), 1.0)
        return capped @ self.weights / self.weights.sum()

    def uncapped(self, gains: np.ndarray) -> Any:
        """The same weighted fraction without the cap (linear in the gains: what the SE is of)."""
        per_column = np.asarray(gains, float) / (self.ceiling - self.base)
        return per_column @ self.weights / self.weights.sum()

    def describe(self) -> str:
        parts = [
            f"{c} base {b:.3g} -> ceiling {h:.3g} (weight {w:.3g})"
            for c, b, h, w in zip(self.columns, self.base, self.ceiling, self.weights, strict=True)
        ]
        return "; ".join(parts + list(self.skipped))


def headroom(f: _Finals, task: str, ceiling: Mapping[str, float]) -> Headroom:
    """The task's own columns against the base with CFG and their ceilings."""
    cols, weights, base, ceil, skipped = [], [], [], [], []
    for col, w in column_weights(f.cfg, task).items():
        b, c = f.mean(BASE_RUN, col), ceiling.get(col)
        if c is None or not c > b:
            skipped.append(
                f"{col} left out (base {b:.3g}, ceiling {c if c is None else f'{c:.3g}'})"
            )
            continue
        cols.append(col)
        weights.append(w)
        base.append(b)
        ceil.append(c)
    return Headroom(
        task, tuple(cols), np.array(weights), np.array(base), np.array(ceil), tuple(skipped)
    )


@dataclasses.dataclass(frozen=True)
class Gain:
    """A teacher's gain on its task: the capped weighted ``fraction`` of headroom (from the mean
    paired gains), the uncapped ``gain`` and its paired ``se`` over ``n`` evaluation seeds."""

    fraction: float
    gain: float
    se: float
    n: int

    @property
    def z(self) -> float:
        return self.gain / self.se if self.se > 0 else (math.inf if self.gain > 0 else math.nan)

    @property
    def gained(self) -> bool:
        """Positive and more than one SE from 0 (an unmeasurable SE is no evidence of a gain)."""
        return math.isfinite(self.se) and self.fraction > 0 and self.fraction > self.se


def teacher_gain(f: _Finals, head: Headroom, run: str) -> Gain:
    """``run``'s gain over the base with CFG on ``head``'s columns, paired per evaluation seed."""
    if not head.columns:
        return Gain(math.nan, math.nan, math.nan, 0)
    diffs = pd.DataFrame(
        {c: f.per_eval_seed(run, c) - f.per_eval_seed(BASE_RUN, c) for c in head.columns}
    ).dropna()
    if diffs.empty:
        return Gain(math.nan, math.nan, math.nan, 0)
    per_seed = head.uncapped(diffs[list(head.columns)].to_numpy())
    mean_gains = diffs[list(head.columns)].mean().to_numpy()
    return Gain(
        float(head.fraction(mean_gains)),
        float(per_seed.mean()),
        standard_error(per_seed, MIN_EVAL_SEEDS),
        len(per_seed),
    )


def student_fractions(f: _Finals, head: Headroom, run: str) -> pd.Series:
    """Per training seed, ``run``'s capped weighted fraction of headroom at its final checkpoint
    (each seed's value is its mean over evaluation seeds)."""
    if not head.columns:
        return pd.Series(dtype=float)
    per_seed = pd.DataFrame({c: f.table(run, c).mean(axis=1) for c in head.columns}).dropna()
    if per_seed.empty:
        return pd.Series(dtype=float)
    gains = per_seed[list(head.columns)].to_numpy() - head.base
    return pd.Series(head.fraction(gains), index=per_seed.index)


def _sig(x: float) -> float:
    return float(f"{x:.3g}") if math.isfinite(x) else x


def _row(
    prop: str, task: str, check: str, value: float, se: float, threshold: str, passed: bool
) -> dict[str, Any]:
    value = round(value, 4) if math.isfinite(value) else value
    return dict(
        zip(COLUMNS, [prop, task, check, value, _sig(se), threshold, bool(passed)], strict=True)
    )


def _pm(x: float, se: float) -> str:
    return f"{x:.3g}" if not math.isfinite(se) else f"{x:.3g} ± {se:.2g}"


def _no_se(n: int) -> str:
    return f"no SE: {n} evaluation seeds, {MIN_EVAL_SEEDS} needed"


def _gain_row(f: _Finals, head: Headroom, g: Gain) -> dict[str, Any]:
    """Property 3 for one task's teacher."""
    teacher = f"{TEACHER_PREFIX}{head.task}"
    means = "; ".join(
        f"{c} {f.mean(BASE_RUN, c):.3g} -> {f.mean(teacher, c):.3g}" for c in head.columns
    )
    cfg_free = f.base(teacher) == BASE_NOCFG
    note = " (evaluated without CFG, against the base with CFG)" if cfg_free else ""
    sig = f"gain {g.z:.2g} SE over {g.n} evaluation seeds" if math.isfinite(g.se) else _no_se(g.n)
    check = (
        f"{head.task} teacher gains half its headroom and {GAIN_SES:g} SE{note}: {means}; "
        f"{head.describe()}; fraction {_pm(g.fraction, g.se)}, {sig}"
    )
    ok = g.fraction >= GAIN_FRACTION and math.isfinite(g.se) and g.z >= GAIN_SES
    return _row(
        "3", head.task, check, g.fraction, g.se, f">= {GAIN_FRACTION} and >= {GAIN_SES:g} SE", ok
    )


def _conflict_row(f: _Finals, tasks: list[str]) -> dict[str, Any] | None:
    """Property 4: the largest paired drop a teacher causes on another task's column."""
    conflicts, short = [], []
    for task in tasks:
        teacher = f"{TEACHER_PREFIX}{task}"
        base = f.base(teacher)
        for col, bench in f.cfg["benchmarks"].items():
            t, b = f.per_eval_seed(teacher, col), f.per_eval_seed(base, col)
            if bench.get("task") == task or t.empty or b.empty:
                continue
            d = (t - b).dropna()  # paired over evaluation seeds
            se = standard_error(d, MIN_EVAL_SEEDS)
            if not math.isfinite(se):
                short.append(len(d))
                continue
            z = -float(d.mean()) / se if se > 0 else (math.inf if d.mean() < 0 else 0.0)
            conflicts.append((z, task, col, base, float(b.mean()), float(t.mean()), se))
    if not conflicts:
        if not short:
            return None
        check = (
            f"a teacher lowers another task's column: {_no_se(max(short))} in any of "
            f"{len(short)} (teacher, column) pairs"
        )
        return _row("4", "", check, math.nan, math.nan, f"> {CONFLICT_SES:g}", False)
    z, task, col, base, b, t, se = max(conflicts)
    n = sum(1 for c in conflicts if c[0] > CONFLICT_SES)
    check = (
        f"largest drop of another task's column by a teacher, in paired standard errors: "
        f"{task} teacher on {col} {b:.3g} ({base}) -> {t:.3g} (SE {se:.2g}); {n} of "
        f"{len(conflicts)} (teacher, column) pairs drop by more than {CONFLICT_SES:g}"
    )
    return _row("4", "", check, z, math.nan, f"> {CONFLICT_SES:g}", z > CONFLICT_SES)


def _precision_rows(metrics: pd.DataFrame, cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Evaluation precision: per bounded column of the composition task, the largest per-seed
    SE over prompts (mean over evaluation seeds) among the final checkpoints of every run."""
    if "se" not in metrics.columns:
        return []
    rows = []
    for col, bench in cfg["benchmarks"].items():
        if bench.get("task") != PRECISION_TASK or not bench.get("bounds"):
            continue
        m = metrics[(metrics["metric"] == col) & metrics["eval_seed"].notna()]
        m = m[m["step"] == m.groupby(["run", "seed"])["step"].transform("max")]
        se = pd.to_numeric(m["se"], errors="coerce").groupby([m["run"], m["seed"]]).mean()
        if se.dropna().empty:
            continue
        (run, seed), worst = se.idxmax(), float(se.max())
        n = pd.to_numeric(m["n"], errors="coerce").max() if "n" in m.columns else math.nan
        check = (
            f"{col}: per-seed SE over prompts at every final checkpoint (largest {worst:.3g}: "
            f"{run} seed {seed}; {len(se)} evaluations, up to {n:.0f} images per seed)"
        )
        rows.append(
            _row(
                "eval",
                PRECISION_TASK,
                check,
                worst,
                math.nan,
                f"<= {PRECISION_SE}",
                bool(worst <= PRECISION_SE),
            )
        )
    return rows


def _recovery_row(f: _Finals, head: Headroom, g: Gain, method: str) -> dict[str, Any]:
    """The student's fraction of headroom over the teacher's, per training seed."""
    s = student_fractions(f, head, method)
    ratios = s / g.fraction if g.fraction != 0 else s * math.nan
    value, se = float(ratios.mean()) if len(ratios) else math.nan, standard_error(ratios)
    check = (
        f"{method} recovers {RECOVERY_BAR:.0%} of the {head.task} teacher's gain: {method} "
        f"fraction {_pm(float(s.mean()) if len(s) else math.nan, standard_error(s))} over "
        f"{len(s)} training seeds, teacher {_pm(g.fraction, g.se)}"
    )
    if not g.gained:
        why = (
            _no_se(g.n)
            if not math.isfinite(g.se)
            else "fraction <= 0"
            if not g.fraction > 0
            else "fraction within one SE of 0"
        )
        check += f"; the teacher did not gain ({why}): the ratio is no recovery"
    return _row(
        "recovery",
        head.task,
        check,
        value,
        se,
        f">= {RECOVERY_BAR}",
        g.gained and value >= RECOVERY_BAR,
    )


def _teachers(
    f: _Finals, tasks: Sequence[str], ceiling: Mapping[str, float]
) -> dict[str, tuple[Headroom, Gain]]:
    out = {}
    for task in tasks:
        head = headroom(f, task, ceiling)
        out[task] = (head, teacher_gain(f, head, f"{TEACHER_PREFIX}{task}"))
    return out


def _tasks(metrics: pd.DataFrame, cfg: Mapping[str, Any]) -> list[str]:
    runs = set(metrics["run"])
    return [t for t in cfg["tasks"] if f"{TEACHER_PREFIX}{t}" in runs]


def property_checks(
    metrics: pd.DataFrame, cfg: Mapping[str, Any], ceiling: Mapping[str, float], method: str = "opd"
) -> pd.DataFrame:
    """One row per check (property 3 per task, property 4 overall, recovery per task, and the
    evaluation's precision on composition)."""
    f = _Finals(metrics, cfg)
    tasks = _tasks(metrics, cfg)
    teachers = _teachers(f, tasks, ceiling)
    rows = [_gain_row(f, head, g) for head, g in teachers.values()]
    conflict = _conflict_row(f, tasks)
    if conflict is not None:
        rows.append(conflict)
    if method in set(metrics["run"]):
        rows += [_recovery_row(f, head, g, method) for head, g in teachers.values()]
    rows += _precision_rows(metrics, cfg)
    return pd.DataFrame(rows, columns=COLUMNS)


@dataclasses.dataclass
class RecoveryCurves:
    """What the recovery figure draws: per (task, run, seed, checkpoint) the capped weighted
    ``fraction`` of headroom and ``compute`` (model evaluations; the student's include the
    teachers' total, ``teacher_evals``), and each task's teacher gain."""

    points: pd.DataFrame  # task, run, seed, step, model_evals, compute, fraction
    teachers: dict[str, Gain]
    teacher_evals: float
    method: str


def recovery_curves(
    metrics: pd.DataFrame,
    cfg: Mapping[str, Any],
    ceiling: Mapping[str, float],
    method: str = "opd",
    baselines: Sequence[str] = BASELINES,
) -> RecoveryCurves:
    """Every evaluated checkpoint of ``method`` and the baselines as fractions of each task's
    headroom (the student's recovery is its fraction over the teacher's)."""
    f = _Finals(metrics, cfg)
    teachers = _teachers(f, _tasks(metrics, cfg), ceiling)
    points = checkpoint_values(metrics, list(cfg["benchmarks"]))
    final = final_values(points)
    ends = final[final["run"].str.startswith(TEACHER_PREFIX)]
    teacher_evals = (
        float(ends.groupby("run")["model_evals"].mean().sum()) if not ends.empty else 0.0
    )
    runs = points[points["run"].isin([method, *baselines])]
    parts = []
    for task, (head, _) in teachers.items():
        if runs.empty or not head.columns:
            continue
        gains = runs[list(head.columns)].to_numpy(float) - head.base
        part = runs[["run", "seed", "step", "model_evals"]].assign(
            task=task, fraction=head.fraction(gains)
        )
        parts.append(part)
    cols = ["task", "run", "seed", "step", "model_evals", "compute", "fraction"]
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)
    out["compute"] = out["model_evals"].astype(float) + np.where(
        out["run"] == method, teacher_evals, 0.0
    )
    out = out[cols].sort_values(["task", "run", "seed", "step"]).reset_index(drop=True)
    return RecoveryCurves(out, {t: g for t, (_, g) in teachers.items()}, teacher_evals, method)


def write_property_checks(
    metrics: pd.DataFrame,
    cfg: Mapping[str, Any],
    ceilings_file: Path | None,
    out_dir: Path,
) -> pd.DataFrame:
    """Write ``properties.{csv,md}`` under ``out_dir`` and return the table (the ``recovery``
    figure: :func:`opd.analysis.plots.write_recovery_figure`)."""
    ceiling = ceilings(cfg, ceilings_file)
    table = property_checks(metrics, cfg, ceiling)
    world = cfg.get("world", {}).get("version", "none") if cfg.get("world") else "none"
    table.insert(0, "world_version", world)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "properties.csv", index=False)
    (out_dir / "properties.md").write_text(table.to_markdown(index=False) + "\n")
    return table
