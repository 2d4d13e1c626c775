"""Table 1 and the ablation table from the tidy metrics table (``metrics.csv``) and the config.

Rows of Table 1: the base model without and with CFG, each task's teacher, each ``table1`` run
at its final checkpoint. Columns: the config's ``benchmarks`` in order; per training seed a
value is the mean over evaluation seeds, shown as mean ± std over training seeds. The Average is
the mean of min-max-normalised metrics with explicit bounds: ``benchmarks.<col>.bounds`` where
given, otherwise floor = base w/o CFG and ceiling = the best row (the bounds used are printed
under the table). Compute is the final checkpoint's model evaluations and wall hours, both with
parallel teachers (longest teacher + student) and in total (all teachers + student) for runs that
distil from teachers, and the run's own otherwise. A downloaded teacher (``teacher.pretrained``)
counts its authors' reported GPU hours (its released entry's ``reported.train_hours``) and no
model evaluations, which are unknown: its cells and those of the runs distilling it say so.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from opd.config import resolve_method
from opd.released import downloaded_teacher_hours
from opd.reporting.collect import BASE_RUNS, TEACHER_PREFIX

PAPER_TABLE = Path(__file__).with_name("paper_table1.csv")
COMPUTE = ("evals_parallel", "evals_total", "hours_parallel", "hours_total")
COMPUTE_LABELS = {
    "evals_parallel": "evals (parallel)",
    "evals_total": "evals (total)",
    "hours_parallel": "hours (parallel)",
    "hours_total": "hours (total)",
}
BASE_LABELS = {"base_nocfg": "base w/o CFG", "base_cfg": "base + CFG"}


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What the tables and figures need to know of a run's method."""

    method: str
    needs_teachers: bool = False
    noise_level: float | None = None


@dataclasses.dataclass(frozen=True)
class Bound:
    """Min-max bounds of one metric in the Average, and where they come from."""

    lo: float
    hi: float
    source: str

    @property
    def usable(self) -> bool:
        """Finite with ceiling > floor; a degenerate metric is left out of the Average."""
        return math.isfinite(self.lo) and math.isfinite(self.hi) and self.hi > self.lo

    def normalise(self, x: Any) -> Any:
        return (x - self.lo) / (self.hi - self.lo) if self.usable else x * math.nan


def run_info(cfg: Mapping[str, Any]) -> dict[str, RunInfo]:
    """RunInfo of every configured run, resolved through the method registry."""
    info = {}
    for run in cfg.get("methods", {}):
        cls, mcfg, raw = resolve_method(dict(cfg), run)
        noise = getattr(mcfg, "noise_level", None)
        info[run] = RunInfo(
            method=str(raw.get("method", run)),
            needs_teachers=bool(cls.needs_teachers),
            noise_level=None if noise is None else float(noise),
        )
    return info


# ---------------------------------------------------------------------------------------------
# Values per checkpoint and per final checkpoint.


def benchmark_columns(cfg: Mapping[str, Any]) -> list[str]:
    return list(cfg["benchmarks"])


def column_label(cfg: Mapping[str, Any], col: str) -> str:
    return str(cfg["benchmarks"][col].get("label", col))


def teacher_runs(cfg: Mapping[str, Any]) -> list[str]:
    return [f"{TEACHER_PREFIX}{t}" for t in cfg["tasks"]]


def row_label(run: str, cfg: Mapping[str, Any]) -> str:
    """Row names: base w/o CFG, base + CFG, '<task> teacher', else the run name."""
    if run in BASE_LABELS:
        return BASE_LABELS[run]
    if run in teacher_runs(cfg):
        return f"{run.removeprefix(TEACHER_PREFIX)} teacher"
    return run


def checkpoint_values(metrics: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """One row per (run, seed, step): each metric's mean over evaluation seeds, and compute.

    Columns: run, seed, step, stage, role, method, model_evals, wall_seconds, samples, then the
    metric columns (NaN where a checkpoint lacks a metric).
    """
    ev = metrics[metrics["eval_seed"].notna() & metrics["metric"].isin(list(columns))]
    keys = ["run", "seed", "step"]
    if ev.empty:
        empty = pd.DataFrame(columns=[*keys, "stage", "role", "method", *columns])
        return empty.astype({"seed": int, "step": int})
    values = ev.pivot_table(index=keys, columns="metric", values="value", aggfunc="mean")
    values = values.reindex(columns=list(columns))
    values.columns.name = None
    meta = ev.groupby(keys, sort=True).agg(
        stage=("stage", "last"),
        role=("role", "first"),
        method=("method", "first"),
        model_evals=("model_evals", "max"),
        wall_seconds=("wall_seconds", "max"),
        samples=("samples", "max"),
    )
    return meta.join(values).reset_index()


def final_values(points: pd.DataFrame) -> pd.DataFrame:
    """The final checkpoint of each (run, seed): stage ``final`` if present, else the last step."""
    if points.empty:
        return points
    is_final = points["stage"].astype(str) == "final"
    has_final = is_final.groupby([points["run"], points["seed"]]).transform("any")
    last = points["step"] == points.groupby(["run", "seed"])["step"].transform("max")
    pick = (has_final & is_final) | (~has_final & last)
    return points[pick].drop_duplicates(["run", "seed"], keep="last").reset_index(drop=True)


def row_means(final: pd.DataFrame, runs: Iterable[str], columns: Sequence[str]) -> pd.DataFrame:
    """Mean over training seeds of each run's final values (index: run)."""
    sub = final[final["run"].isin(list(runs))]
    return sub.groupby("run")[list(columns)].mean()


# ---------------------------------------------------------------------------------------------
# The Average and its bounds.


WORLD_SOURCE = "world: random-weight model -> clean renders"


def with_world_bounds(cfg: Mapping[str, Any], path: Path | None) -> dict[str, Any]:
    """``cfg`` with each benchmark column's floor and ceiling from the world validation's
    ``world_bounds.json`` as ``world_bounds`` (a copy; ``cfg`` unchanged; no file: as is)."""
    out = dict(cfg)
    if path is None or not Path(path).exists():
        return out
    world = json.loads(Path(path).read_text())
    out["benchmarks"] = {
        col: (
            {**bench, "world_bounds": [world[col]["floor"], world[col]["ceiling"]]}
            if col in world
            else dict(bench)
        )
        for col, bench in cfg["benchmarks"].items()
    }
    return out


def average_bounds(
    final: pd.DataFrame, cfg: Mapping[str, Any], rows: Sequence[str]
) -> dict[str, Bound]:
    """Bounds per metric: the config's; else the world's (``world_bounds``: a random-weight model
    and clean renders, see :func:`with_world_bounds`), which no method's result can move; else
    floor = base w/o CFG and ceiling = the best row (the paper profile)."""
    columns = benchmark_columns(cfg)
    means = row_means(final, rows, columns)
    bounds = {}
    for col in columns:
        given = cfg["benchmarks"][col].get("bounds")
        if given is not None:
            bounds[col] = Bound(float(given[0]), float(given[1]), "config")
            continue
        world = cfg["benchmarks"][col].get("world_bounds")
        if world is not None:
            bounds[col] = Bound(float(world[0]), float(world[1]), WORLD_SOURCE)
            continue
        col_means = means[col].dropna() if col in means else pd.Series(dtype=float)
        if col_means.empty:
            bounds[col] = Bound(math.nan, math.nan, "no data")
            continue
        if "base_nocfg" in col_means.index:
            lo, lo_src = float(col_means["base_nocfg"]), "floor: base w/o CFG"
        else:
            lo, lo_src = float(col_means.min()), f"floor: worst row ({col_means.idxmin()})"
        best = col_means.idxmax()
        bounds[col] = Bound(lo, float(col_means[best]), f"{lo_src}; ceiling: best row ({best})")
    return bounds


def summary_score(values: pd.DataFrame, bounds: Mapping[str, Bound]) -> pd.Series:
    """Mean of the min-max-normalised metrics with usable bounds (NaN where one is missing)."""
    cols = [c for c, b in bounds.items() if b.usable]
    if not cols:
        return pd.Series(math.nan, index=values.index)
    normed = pd.DataFrame({c: bounds[c].normalise(values[c].astype(float)) for c in cols})
    return normed.mean(axis=1, skipna=False)


# ---------------------------------------------------------------------------------------------
# The table.


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna().astype(float)
    if values.empty:
        return math.nan, math.nan
    std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return float(values.mean()), std


def _teacher_compute(final: pd.DataFrame, cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Each teacher's final compute (mean over its seeds): model_evals, wall_seconds."""
    sub = final[final["run"].isin(teacher_runs(cfg))]
    return sub.groupby("run")[["model_evals", "wall_seconds"]].mean()


def _downloaded(cfg: Mapping[str, Any]) -> dict[str, float]:
    """Teacher run -> its authors' reported GPU hours (NaN where not reported), for every
    downloaded teacher."""
    hours = downloaded_teacher_hours(cfg)
    return {f"{TEACHER_PREFIX}{t}": math.nan if h is None else h for t, h in hours.items()}


def build_table(
    final: pd.DataFrame,
    cfg: Mapping[str, Any],
    rows: Sequence[str],
    bounds: Mapping[str, Bound],
    info: Mapping[str, RunInfo],
) -> pd.DataFrame:
    """Numeric table: one row per run with ``<col>_mean``/``<col>_std``, Average and compute
    (``teachers``: ``downloaded`` on a downloaded teacher's row and on the rows of the runs that
    distil from one)."""
    columns = benchmark_columns(cfg)
    downloaded = _downloaded(cfg)
    teachers = _teacher_compute(final, cfg)
    teachers = teachers.drop(index=[r for r in downloaded if r in teachers.index])
    records = []
    for run in rows:
        sub = final[final["run"] == run]
        if sub.empty:
            continue
        rec: dict[str, Any] = {
            "row": row_label(run, cfg),
            "run": run,
            "role": str(sub["role"].iloc[0]),
            "n_seeds": int(sub["seed"].nunique()),
            "needs_teachers": bool(info.get(run, RunInfo(run)).needs_teachers),
        }
        for col in columns:
            rec[f"{col}_mean"], rec[f"{col}_std"] = _mean_std(sub[col])
        rec["average_mean"], rec["average_std"] = _mean_std(summary_score(sub, bounds))
        rec["teachers"] = ""
        if run in BASE_RUNS:
            rec.update(dict.fromkeys(COMPUTE, math.nan))
        elif run in downloaded:  # not trained here: reported hours, unknown evaluations
            rec.update({k: math.nan if k.startswith("evals") else downloaded[run] for k in COMPUTE})
            rec["teachers"] = "downloaded"
        else:
            evals = float(sub["model_evals"].mean())
            hours = float(sub["wall_seconds"].mean()) / 3600.0
            needs = info.get(run, RunInfo(run)).needs_teachers
            uses = needs and not teachers.empty
            t_evals = teachers["model_evals"] if uses else pd.Series([0.0])
            t_hours = teachers["wall_seconds"] / 3600.0 if uses else pd.Series([0.0])
            if needs and downloaded:
                t_hours = pd.concat([t_hours, pd.Series(list(downloaded.values()))])
                t_hours = t_hours.reset_index(drop=True)
                rec["teachers"] = "downloaded"
            rec["evals_parallel"] = evals + float(t_evals.max())
            rec["evals_total"] = evals + float(t_evals.sum())
            # a downloaded teacher without reported hours leaves them unknown (NaN)
            rec["hours_parallel"] = hours + float(t_hours.max(skipna=False))
            rec["hours_total"] = hours + float(t_hours.sum(skipna=False))
        records.append(rec)
    cols = ["row", "run", "role", "n_seeds", "needs_teachers"]
    cols += [f"{c}_{s}" for c in columns for s in ("mean", "std")]
    cols += ["average_mean", "average_std", *COMPUTE, "teachers"]
    return pd.DataFrame(records, columns=cols)


def table1_rows(cfg: Mapping[str, Any]) -> list[str]:
    return [*BASE_RUNS, *teacher_runs(cfg), *cfg["table1"]]


def ablation_rows(cfg: Mapping[str, Any]) -> list[str]:
    """The reference (``opd`` if it is a Table-1 run) followed by the ablations."""
    ref = [r for r in cfg["table1"] if r == "opd" and r not in cfg["ablations"]]
    return [*ref, *cfg["ablations"]]


@dataclasses.dataclass
class Table:
    """A built table: numeric rows, the bounds of its Average and its context."""

    name: str
    data: pd.DataFrame
    bounds: dict[str, Bound]
    columns: list[str]
    labels: dict[str, str]
    seeds: list[int]
    eval_seeds: list[int]


def make_tables(
    metrics: pd.DataFrame, cfg: Mapping[str, Any], info: Mapping[str, RunInfo]
) -> dict[str, Table]:
    """Table 1 and the ablation table (the ablations use Table 1's bounds)."""
    columns = benchmark_columns(cfg)
    final = final_values(checkpoint_values(metrics, columns))
    bounds = average_bounds(final, cfg, table1_rows(cfg))
    labels = {c: column_label(cfg, c) for c in columns}
    eval_seeds = sorted(int(s) for s in metrics["eval_seed"].dropna().unique())
    out = {}
    for name, rows in (("table1", table1_rows(cfg)), ("ablations", ablation_rows(cfg))):
        data = build_table(final, cfg, rows, bounds, info)
        seeds = sorted(int(s) for s in final[final["run"].isin(rows)]["seed"].unique())
        out[name] = Table(name, data, bounds, columns, labels, seeds, eval_seeds)
    return out


# ---------------------------------------------------------------------------------------------
# Formatting.


def decimals_for(values: Iterable[float]) -> int:
    """Decimals to print a column with: 1 from 100 up, 2 from 10, else 3."""
    finite = [abs(v) for v in values if isinstance(v, float | int) and math.isfinite(v)]
    top = max(finite, default=0.0)
    return 1 if top >= 100 else 2 if top >= 10 else 3


def format_mean_std(mean: float, std: float, decimals: int) -> str:
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def format_count(x: float) -> str:
    """Model evaluations as 1.2k / 3.4M / 5.6G."""
    if not math.isfinite(x):
        return "–"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def format_hours(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.3g}"


def display_frame(table: Table) -> pd.DataFrame:
    """The table as strings: mean ± std per metric, Average, compute."""
    df = table.data
    out = pd.DataFrame({"model": df["row"]})
    for col in table.columns:
        d = decimals_for(df[f"{col}_mean"].tolist())
        pairs = zip(df[f"{col}_mean"], df[f"{col}_std"], strict=True)
        out[table.labels[col]] = [format_mean_std(m, s, d) for m, s in pairs]
    pairs = zip(df["average_mean"], df["average_std"], strict=True)
    out["Average"] = [format_mean_std(m, s, 3) for m, s in pairs]
    for key in COMPUTE:
        cells = []
        for value, role, teachers in zip(df[key], df["role"], df["teachers"], strict=True):
            if key.startswith("evals"):
                cell = format_count(value)
                if teachers == "downloaded":
                    cell = "downloaded" if role == "teacher" else f"{cell} + downloaded"
            else:
                cell = format_hours(value)
                if teachers == "downloaded" and not math.isfinite(value):
                    cell = "not reported" if role == "teacher" else "– (teachers: not reported)"
                elif teachers == "downloaded":
                    cell += " (reported)" if role == "teacher" else " (teachers: reported)"
            cells.append(cell)
        out[COMPUTE_LABELS[key]] = cells
    return out


def bounds_lines(table: Table) -> list[str]:
    lines = []
    for col, b in table.bounds.items():
        lo, hi = (f"{v:.4g}" if math.isfinite(v) else "–" for v in (b.lo, b.hi))
        note = "" if b.usable else "; degenerate, left out of the Average"
        lines.append(f"{table.labels[col]}: [{lo}, {hi}] ({b.source}{note})")
    return lines


def fairness_lines(table: Table, reference: str = "opd") -> list[str]:
    """docs/mini_world.md's fairness rule, checked on the measured compute: every trained run that
    learns without teachers (multi-task, cascade, weighted-sum RL) should have used at least the
    model evaluations of the teachers plus DiffusionOPD (``reference``'s total). A header line,
    then one line per run with its ratio, a ratio below 1 flagged; empty without the reference
    row."""
    df = table.data
    ref = df[df["run"] == reference]
    if ref.empty or not float(ref["evals_total"].iloc[0]) > 0:
        return []
    if (ref["teachers"] == "downloaded").any():
        baselines = df[~df["role"].isin(["base", "teacher"]) & ~df["needs_teachers"]]
        if baselines.empty:
            return []
        return [
            "Fairness (docs/mini_world.md): not checked on measured compute: the teachers were "
            "downloaded, so their model evaluations are unknown; the baselines' budgets are the "
            "profile's steps, sized from the paper's GPU hours (see its `methods` comment)."
        ]
    budget = float(ref["evals_total"].iloc[0])
    lines = []
    for _, r in df.iterrows():
        evals = float(r["evals_total"])
        if r["role"] in ("base", "teacher") or r["needs_teachers"] or not evals > 0:
            continue
        flag = "" if evals >= budget else " (BELOW the teachers + DiffusionOPD budget)"
        lines.append(f"  - {r['run']}: {format_count(evals)} evals = {evals / budget:.2f}x{flag}")
    if not lines:
        return []
    head = (
        "Fairness (docs/mini_world.md): the runs without teachers against the teachers + "
        f"{reference} total of {format_count(budget)} model evaluations:"
    )
    return [head, *lines]


def downloaded_lines(table: Table) -> list[str]:
    """A note on downloaded teachers, where Table 1 has any."""
    df = table.data
    rows = df[(df["role"] == "teacher") & (df["teachers"] == "downloaded")]
    if rows.empty:
        return []
    names = ", ".join(rows["row"])
    return [
        f"Teachers downloaded, not trained here ({names}): their hours are their authors' "
        "reported GPU hours ('reported'; on the authors' GPUs, not ours) and their model "
        "evaluations are unknown ('downloaded'), in their rows and in those of the runs that "
        "distil from them."
    ]


def notes(table: Table) -> list[str]:
    seeds = ", ".join(map(str, table.seeds)) or "–"
    evs = ", ".join(map(str, table.eval_seeds)) or "–"
    return [
        f"Final checkpoints; mean ± std over training seeds ({seeds}) of each seed's mean over "
        f"evaluation seeds ({evs}); a single seed shows no std.",
        "Average: mean of the min-max-normalised metrics, with these bounds:",
        *[f"  - {line}" for line in bounds_lines(table)],
        "Compute: model evaluations and wall-clock hours of training. For runs that distil "
        "from teachers, 'parallel' adds the longest teacher (teachers trained in parallel) and "
        "'total' adds every teacher; other runs show their own compute in both.",
        *downloaded_lines(table),
        *fairness_lines(table),
    ]


def read_paper_table() -> pd.DataFrame:
    return pd.read_csv(PAPER_TABLE, comment="#", dtype=str)


def to_markdown(table: Table, title: str, paper: pd.DataFrame | None = None) -> str:
    body = display_frame(table).to_markdown(index=False, disable_numparse=True)
    text = [f"## {title}", "", body, "", *notes(table), ""]
    if paper is not None:
        text += [
            "## The paper's published Table 1 (SD3.5-M, hours as printed; not produced here)",
            "",
            paper.drop(columns="run").to_markdown(index=False, disable_numparse=True),
            "",
        ]
    return "\n".join(text)


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&")):
        s = s.replace(a, b)
    return s.replace("±", r"$\pm$").replace("–", "--")


def _tex_tabular(df: pd.DataFrame) -> list[str]:
    lines = [r"\begin{tabular}{l" + "r" * (len(df.columns) - 1) + "}", r"\toprule"]
    lines.append(" & ".join(_tex_escape(str(c)) for c in df.columns) + r" \\")
    lines.append(r"\midrule")
    for _, row in df.iterrows():
        lines.append(" & ".join(_tex_escape(str(v)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return lines


def to_latex(table: Table, caption: str, paper: pd.DataFrame | None = None) -> str:
    lines = [r"% Generated by `opd tables`; needs \usepackage{booktabs}.", r"\begin{table*}[t]"]
    lines += [r"\centering", r"\small", *_tex_tabular(display_frame(table))]
    lines.append(r"\caption{" + _tex_escape(caption) + "}")
    lines.append(r"\label{tab:" + table.name + "}")
    lines.append(r"\end{table*}")
    if paper is not None:
        lines += [r"\begin{table*}[t]", r"\centering", r"\small"]
        lines += _tex_tabular(paper.drop(columns="run"))
        lines.append(r"\caption{The paper's published Table 1 (SD3.5-M; not produced here).}")
        lines.append(r"\end{table*}")
    return "\n".join(lines) + "\n"


def _rst_literal(name: str) -> str:
    return f"``{name}``"


def caption(table: Table, cfg: Mapping[str, Any]) -> str:
    """A caption stating the measured headline numbers (for the HTML report)."""
    df = table.data
    what = "Table 1" if table.name == "table1" else "Ablations"
    head = (
        f"{what} of profile {_rst_literal(cfg['profile'])}: {len(df)} rows, "
        f"{len(table.columns)} metrics at the final checkpoints."
    )
    parts = [head]
    ranked = df.dropna(subset=["average_mean"]).sort_values("average_mean", ascending=False)
    if not ranked.empty:
        best = ranked.iloc[0]
        parts.append(
            f"Highest Average: {_rst_literal(best['run'])} "
            f"({format_mean_std(best['average_mean'], best['average_std'], 3)})."
        )
    for run in ("base_cfg", "opd"):
        hit = df[df["run"] == run]
        if not hit.empty and run != (ranked.iloc[0]["run"] if not ranked.empty else None):
            r = hit.iloc[0]
            parts.append(
                f"{_rst_literal(run)}: Average "
                f"{format_mean_std(r['average_mean'], r['average_std'], 3)}."
            )
    text = " ".join(parts) + "\n\n" + "\n\n".join(n.strip() for n in notes(table)[:2])
    text += "\n\n" + "\n".join(f"- {line}" for line in bounds_lines(table)) + "\n"
    fair = fairness_lines(table)
    if fair:
        text += "\n" + fair[0] + "\n\n" + "\n".join(x.strip() for x in fair[1:]) + "\n"
    return text


def report_safe(caption: str) -> str:
    """The caption as Snakemake's report reads it (a Jinja template): braces kept literal."""
    text = caption.strip()
    if "{" in text or "}" in text:
        text = "{% raw %}" + text + "{% endraw %}"
    return text + "\n"


def write_tables(tables: Mapping[str, Table], cfg: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write ``table1.{md,tex,csv,rst}`` and ``ablations.{md,csv,rst}`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paper = read_paper_table() if cfg.get("profile") == "paper" else None
    written = []
    for name, table in tables.items():
        title = (
            f"Table 1 (profile {cfg['profile']})"
            if name == "table1"
            else f"Ablations (profile {cfg['profile']})"
        )
        p = paper if name == "table1" else None
        files = {
            "csv": None,
            "md": to_markdown(table, title, p),
            "rst": report_safe(caption(table, cfg)),
        }
        if name == "table1":
            files["tex"] = to_latex(table, title + ". " + " ".join(notes(table)[:2]), p)
        for ext, text in files.items():
            path = out_dir / f"{name}.{ext}"
            if text is None:
                table.data.to_csv(path, index=False, float_format="%.6g")
            else:
                path.write_text(text, encoding="utf-8")
            written.append(path)
    return written
