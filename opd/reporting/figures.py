"""The paper's figures as pure functions of (metrics table, config, run info) -> :class:`Plot`.

Each function returns a matplotlib figure and a caption that states the measured numbers it
shows (written next to the figure as ``<name>.rst`` for the HTML report). The summary score is
Table 1's Average (mean of min-max-normalised metrics, same bounds) at every checkpoint; curves
show the mean over training seeds with a ±1 std band. The headless Agg backend is forced.
"""

from __future__ import annotations

import dataclasses
import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=True)

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from opd.reporting.collect import TEACHER_PREFIX
from opd.reporting.tables import (
    Bound,
    RunInfo,
    average_bounds,
    benchmark_columns,
    checkpoint_values,
    column_label,
    final_values,
    report_safe,
    row_label,
    summary_score,
    table1_rows,
    teacher_runs,
)

NO_DATA = "no runs of this kind in this profile"


@dataclasses.dataclass
class Plot:
    """A rendered figure and its caption (reStructuredText, numbers from the data)."""

    figure: Figure
    caption: str


def _lit(name: str) -> str:
    return f"``{name}``"


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _count(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def _style() -> None:
    sns.set_theme(style="whitegrid", context="paper", font_scale=0.9)


def _colors(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """One colour per run, stable across figures: Table-1 runs from ``tab10``, teachers from
    the dark palette, ablations from ``Set2``, the base model grey."""
    colors: dict[str, Any] = {"base_cfg": "0.35", "base_nocfg": "0.6"}
    groups = (
        (teacher_runs(cfg), "dark"),
        (list(cfg["table1"]), "tab10"),
        ([r for r in cfg["ablations"] if r not in cfg["table1"]], "Set2"),
    )
    for runs, name in groups:
        palette = sns.color_palette(name, n_colors=max(len(runs), 1))
        colors.update(zip(runs, palette, strict=False))
    return colors


def _no_data(ax: Any, what: str = NO_DATA) -> None:
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


@dataclasses.dataclass
class Scores:
    """Per-checkpoint values and summary scores with Table 1's bounds."""

    points: pd.DataFrame  # run, seed, step, stage, role, method, model_evals, ..., metrics, summary
    final: pd.DataFrame
    bounds: dict[str, Bound]


def scores(metrics: pd.DataFrame, cfg: Mapping[str, Any]) -> Scores:
    columns = benchmark_columns(cfg)
    points = checkpoint_values(metrics, columns)
    final = final_values(points)
    bounds = average_bounds(final, cfg, table1_rows(cfg))
    if not points.empty:
        points["summary"] = summary_score(points, bounds).to_numpy()
        final = final_values(points)
    else:
        points["summary"] = pd.Series(dtype=float)
        final = points
    return Scores(points, final, bounds)


def curve(
    points: pd.DataFrame, run: str, y: str = "summary", x: str = "model_evals"
) -> pd.DataFrame:
    """Mean and std over training seeds of ``y`` per checkpoint step, with the mean ``x``."""
    sub = points[points["run"] == run]
    if sub.empty:
        return pd.DataFrame(columns=["step", "x", "mean", "std", "n"])
    g = sub.groupby("step")
    out = pd.DataFrame(
        {"x": g[x].mean(), "mean": g[y].mean(), "std": g[y].std(ddof=1), "n": g[y].count()}
    )
    return out.reset_index()


def _draw_curve(ax: Any, c: pd.DataFrame, label: str, color: Any, offset: float = 0.0) -> None:
    x = c["x"].to_numpy(float) + offset
    m, s = c["mean"].to_numpy(float), c["std"].to_numpy(float)
    marker = "o" if len(c) <= 12 else None
    ax.plot(x, m, label=label, color=color, marker=marker, markersize=3, linewidth=1.5)
    ok = np.isfinite(s)
    if ok.any():
        ax.fill_between(x[ok], (m - s)[ok], (m + s)[ok], color=color, alpha=0.2, linewidth=0)


def _final_mean(final: pd.DataFrame, run: str, y: str = "summary") -> tuple[float, float, float]:
    """(mean, std over seeds, mean model evals) of a run's final ``y``."""
    sub = final[final["run"] == run]
    if sub.empty:
        return math.nan, math.nan, math.nan
    std = float(sub[y].std(ddof=1)) if len(sub) > 1 else math.nan
    return float(sub[y].mean()), std, float(sub["model_evals"].mean())


def _pm(mean: float, std: float) -> str:
    return _fmt(mean) if not math.isfinite(std) else f"{_fmt(mean)} ± {_fmt(std)}"


def _teacher_total_evals(final: pd.DataFrame, cfg: Mapping[str, Any]) -> float:
    sub = final[final["run"].isin(teacher_runs(cfg))]
    return float(sub.groupby("run")["model_evals"].mean().sum()) if not sub.empty else 0.0


def _present(points: pd.DataFrame, runs: Sequence[str]) -> list[str]:
    have = set(points["run"]) if not points.empty else set()
    return [r for r in dict.fromkeys(runs) if r in have]


# ---------------------------------------------------------------------------------------------
# Fig. 1: convergence against compute, and the radar of the eight metrics.


def convergence(metrics: pd.DataFrame, cfg: Mapping[str, Any], info: Mapping[str, RunInfo]) -> Plot:
    """Summary score vs model evaluations for every Table-1 run (teachers' compute included)."""
    _style()
    sc = scores(metrics, cfg)
    colors = _colors(cfg)
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    runs = _present(sc.points, cfg["table1"])
    teacher_evals = _teacher_total_evals(sc.final, cfg)
    lines = []
    for run in runs:
        uses = info.get(run, RunInfo(run)).needs_teachers
        offset = teacher_evals if uses else 0.0
        _draw_curve(ax, curve(sc.points, run), run, colors.get(run), offset)
        m, s, ev = _final_mean(sc.final, run)
        lines.append(f"{_lit(run)} {_pm(m, s)} at {_count(ev + offset)} evaluations")
    base, _, _ = _final_mean(sc.final, "base_cfg")
    if math.isfinite(base):
        ax.axhline(base, color="0.3", linestyle="--", linewidth=1, label="base + CFG")
    if not runs:
        _no_data(ax)
    else:
        ax.set_xlabel("model evaluations in training (incl. all teachers where used)")
        ax.set_ylabel("summary score (Table 1 Average)")
        ax.legend(fontsize=7, loc="best")
    ax.set_title("Convergence against compute")
    fig.tight_layout()
    cap = (
        "Summary score (Table 1's Average: mean of min-max-normalised metrics, same bounds) "
        "at every checkpoint against training model evaluations; mean and ±1 std band over "
        "training seeds. Runs that distil from teachers start at the teachers' total compute "
        f"({_count(teacher_evals)} model evaluations). Base + CFG: {_fmt(base)}. "
        "Final: " + ("; ".join(lines) if lines else NO_DATA) + "."
    )
    return Plot(fig, cap)


def radar(metrics: pd.DataFrame, cfg: Mapping[str, Any], info: Mapping[str, RunInfo]) -> Plot:
    """Normalised final metrics of base + CFG, the teachers and the Table-1 runs."""
    _style()
    sc = scores(metrics, cfg)
    colors = _colors(cfg)
    columns = benchmark_columns(cfg)
    runs = _present(sc.final, ["base_cfg", *teacher_runs(cfg), *cfg["table1"]])
    angles = np.linspace(0, 2 * np.pi, len(columns), endpoint=False)
    fig = plt.figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot(projection="polar")
    normed = {}
    for run in runs:
        sub = sc.final[sc.final["run"] == run]
        vals = np.array([sc.bounds[c].normalise(float(sub[c].mean())) for c in columns])
        normed[run] = vals
        closed = np.append(vals, vals[:1])
        ax.plot(
            np.append(angles, angles[:1]), closed, color=colors.get(run), label=row_label(run, cfg)
        )
    ax.set_xticks(angles)
    ax.set_xticklabels([column_label(cfg, c) for c in columns])
    finite = np.concatenate([v[np.isfinite(v)] for v in normed.values()] or [np.zeros(0)])
    ax.set_ylim(min(0.0, float(finite.min(initial=0.0))), max(1.0, float(finite.max(initial=1.0))))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.05, 1.0))
    ax.set_title("Final metrics, normalised with Table 1's bounds")
    if not runs:
        _no_data(ax)
    fig.tight_layout()
    bests = []
    for i, c in enumerate(columns):
        vals = {r: v[i] for r, v in normed.items() if math.isfinite(v[i])}
        if vals:
            best = max(vals, key=vals.get)
            bests.append(f"{column_label(cfg, c)}: {_lit(best)} ({_fmt(vals[best], 2)})")
    means = [
        f"{_lit(r)} {_fmt(float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else math.nan)}"
        for r, v in normed.items()
    ]
    cap = (
        "Final metrics (mean over training seeds) min-max normalised with Table 1's bounds "
        "(0 = floor, 1 = ceiling). Mean normalised score: "
        + ("; ".join(means) or NO_DATA)
        + ". Best row per metric: "
        + ("; ".join(bests) or NO_DATA)
        + "."
    )
    return Plot(fig, cap)


# ---------------------------------------------------------------------------------------------
# Fig. 3: per-task reward against compute.


def task_columns(cfg: Mapping[str, Any], task: str) -> list[str]:
    """Benchmark columns measuring ``task``: those scored by its training reward's scorers,
    else those scored on its prompt set."""
    reward = set((cfg["tasks"][task].get("reward") or {}).keys())
    cols = [c for c, spec in cfg["benchmarks"].items() if spec["scorer"] in reward]
    return cols or [c for c, spec in cfg["benchmarks"].items() if spec["task"] == task]


def _task_score(df: pd.DataFrame, bounds: Mapping[str, Bound], cols: Sequence[str]) -> pd.Series:
    """Mean of the task's normalised columns (those with usable bounds)."""
    cols = [c for c in cols if bounds[c].usable]
    if not cols:
        return pd.Series(math.nan, index=df.index)
    normed = pd.DataFrame({c: bounds[c].normalise(df[c].astype(float)) for c in cols})
    return normed.mean(axis=1, skipna=False)


def per_task(metrics: pd.DataFrame, cfg: Mapping[str, Any], info: Mapping[str, RunInfo]) -> Plot:
    """Each task's normalised metric vs the student's compute; teachers' finals as lines."""
    _style()
    sc = scores(metrics, cfg)
    colors = _colors(cfg)
    tasks = list(cfg["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.0 * len(tasks), 3.6), squeeze=False)
    runs = [
        r
        for r in _present(sc.points, cfg["table1"])
        if sc.points[sc.points["run"] == r]["step"].nunique() > 1
    ]
    lines = []
    for ax, task in zip(axes[0], tasks, strict=True):
        cols = task_columns(cfg, task)
        pts = sc.points.assign(task_score=_task_score(sc.points, sc.bounds, cols).to_numpy())
        fin = final_values(pts)
        parts = []
        for run in runs:
            _draw_curve(ax, curve(pts, run, y="task_score"), run, colors.get(run))
            m, s, _ = _final_mean(fin, run, "task_score")
            parts.append(f"{_lit(run)} {_pm(m, s)}")
        for teacher in teacher_runs(cfg):
            m, _, _ = _final_mean(fin, teacher, "task_score")
            if math.isfinite(m):
                style = "-" if teacher == f"{TEACHER_PREFIX}{task}" else ":"
                ax.axhline(
                    m,
                    color=colors.get(teacher),
                    linestyle=style,
                    linewidth=1,
                    label=row_label(teacher, cfg),
                )
                parts.append(f"{row_label(teacher, cfg)} {_fmt(m)}")
        ax.set_title(f"{task} ({', '.join(column_label(cfg, c) for c in cols)})")
        ax.set_xlabel("student model evaluations")
        if not runs:
            _no_data(ax)
        lines.append(f"{task}: " + "; ".join(parts))
    axes[0][0].set_ylabel("normalised task metric")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    if handles:
        fig.legend(
            handles,
            labels,
            fontsize=7,
            loc="lower center",
            ncol=min(len(labels), 5),
            bbox_to_anchor=(0.5, -0.02),
        )
        fig.tight_layout(rect=(0, 0.1, 1, 1))
    else:
        fig.tight_layout()
    cap = (
        "Each task's metric (its reward's benchmark columns, min-max normalised with Table 1's "
        "bounds and averaged) against the student's training model evaluations; mean and ±1 std "
        "band over seeds. Horizontal lines: the teachers' final values (solid: the task's own "
        "teacher). Final values — " + " | ".join(lines) + "."
    )
    return Plot(fig, cap)


# ---------------------------------------------------------------------------------------------
# Figs. 4/5 and 6: the distillation and loss / noise ablations.


def _compare_curves(
    ax: Any, sc: Scores, runs: Sequence[str], labels: Mapping[str, str], colors: Mapping[str, Any]
) -> list[str]:
    parts = []
    for run in runs:
        _draw_curve(ax, curve(sc.points, run), labels.get(run, run), colors.get(run))
        m, s, ev = _final_mean(sc.final, run)
        parts.append(f"{_lit(run)} {_pm(m, s)} ({_count(ev)} evaluations)")
    if runs:
        ax.set_xlabel("student model evaluations")
        ax.set_ylabel("summary score")
        ax.legend(fontsize=7)
    else:
        _no_data(ax)
    return parts


def distill_ablation(
    metrics: pd.DataFrame, cfg: Mapping[str, Any], info: Mapping[str, RunInfo]
) -> Plot:
    """OPD (ODE objective) against the other ways to use the teachers (SFT, estimators, merge)."""
    _style()
    sc = scores(metrics, cfg)
    colors = _colors(cfg)
    listed = [*cfg["table1"], *cfg["ablations"]]
    ref = [r for r in listed if info.get(r) and info[r].method == "opd" and not info[r].noise_level]
    others = [
        r for r in listed if info.get(r) and info[r].needs_teachers and info[r].method != "opd"
    ]
    runs = _present(sc.points, [*ref[:1], *others])
    labels = {r: r if r == info[r].method else f"{r} ({info[r].method})" for r in runs}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    parts = _compare_curves(ax1, sc, runs, labels, colors)
    ax1.set_title("Summary score during training")
    finals = sc.final[sc.final["run"].isin(runs)]
    if not finals.empty:
        sns.barplot(
            data=finals,
            x="run",
            y="summary",
            hue="run",
            order=runs,
            hue_order=runs,
            palette={r: colors.get(r) for r in runs},
            errorbar="sd",
            ax=ax2,
            legend=False,
        )
        ax2.set_xlabel("")
        ax2.set_ylabel("final summary score")
        ax2.tick_params(axis="x", rotation=20)
    else:
        _no_data(ax2)
    ax2.set_title("Final (mean ± std over seeds)")
    fig.tight_layout()
    cap = (
        "Distillation ablation: DiffusionOPD against the other methods that learn from the same "
        "teachers (off-policy SFT on teacher samples, the PPO-style and log-ratio estimators, "
        "merging the teachers' weights). Summary score = Table 1's Average. Final: "
        + ("; ".join(parts) or NO_DATA)
        + "."
    )
    return Plot(fig, cap)


def _evals_to_reach(c: pd.DataFrame, target: float) -> float:
    hit = c[c["mean"] >= target]
    return float(hit["x"].iloc[0]) if not hit.empty else math.nan


def loss_noise(metrics: pd.DataFrame, cfg: Mapping[str, Any], info: Mapping[str, RunInfo]) -> Plot:
    """(a) closed form vs PPO-style (and log-ratio) at a = 0.7; (b) the noise-level sweep."""
    _style()
    sc = scores(metrics, cfg)
    colors = _colors(cfg)
    listed = [*cfg["table1"], *cfg["ablations"]]

    def at(run: str, a: float) -> bool:
        n = info[run].noise_level if run in info else None
        return n is not None and abs(n - a) < 1e-9

    est = _present(
        sc.points, [r for r in listed if info.get(r) and info[r].needs_teachers and at(r, 0.7)]
    )
    est_labels = {
        r: ("closed form" if info[r].method == "opd" else info[r].method) + " (a=0.7)" for r in est
    }
    sweep = [r for r in listed if info.get(r) and info[r].method == "opd"]
    sweep = sorted(_present(sc.points, sweep), key=lambda r: info[r].noise_level or 0.0)
    sweep_labels = {
        r: ("ODE (a=0)" if not info[r].noise_level else f"SDE a={info[r].noise_level:g}")
        for r in sweep
    }
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    parts_a = _compare_curves(ax1, sc, est, est_labels, colors)
    ax1.set_title("Estimators at noise level a = 0.7")
    palette = sns.color_palette("viridis", n_colors=max(len(sweep), 1))
    sweep_colors = dict(zip(sweep, palette, strict=False))
    parts_b = _compare_curves(ax2, sc, sweep, sweep_labels, sweep_colors)
    ax2.set_title("Noise-level sweep (closed form)")
    fig.tight_layout()
    reach = []
    finals = [_final_mean(sc.final, r)[0] for r in sweep]
    finite = [f for f in finals if math.isfinite(f)]
    if finite:
        target = 0.9 * max(finite)
        for r in sweep:
            ev = _evals_to_reach(curve(sc.points, r), target)
            reach.append(f"{sweep_labels[r]} {_count(ev) if math.isfinite(ev) else 'not reached'}")
    cap = (
        "Left (a): the closed-form OPD objective against the PPO-style estimator (and the sampled "
        "log-ratio REINFORCE estimator) at a = 0.7. Final: "
        + ("; ".join(parts_a) or NO_DATA)
        + ". Right (b): the noise-level sweep of the closed form, the ODE objective included. "
        + "Final: "
        + ("; ".join(parts_b) or NO_DATA)
        + "."
    )
    if reach:
        cap += (
            f" Model evaluations to first reach 90% of the best final score ({_fmt(target)}): "
            + "; ".join(reach)
            + "."
        )
    return Plot(fig, cap)


# ---------------------------------------------------------------------------------------------
# Sample grid (like the paper's Fig. 2).


@dataclasses.dataclass
class Samples:
    images: np.ndarray  # uint8 (K, H, W, 3)
    prompts: list[str]
    tasks: list[str] | None = None


def load_samples(path: Path) -> Samples:
    with np.load(path, allow_pickle=False) as z:
        tasks = [str(t) for t in z["tasks"]] if "tasks" in z.files else None
        return Samples(np.asarray(z["images"]), [str(p) for p in z["prompts"]], tasks)


def _grid_prompts(first: Samples, cfg: Mapping[str, Any], per_task: int) -> list[str]:
    if first.tasks is None:
        return first.prompts[: per_task * max(len(cfg["tasks"]), 1)]
    chosen = []
    for task in cfg["tasks"]:
        idx = [i for i, t in enumerate(first.tasks) if t == task][:per_task]
        chosen += [first.prompts[i] for i in idx]
    return chosen


def sample_grid(samples: Mapping[str, Samples], cfg: Mapping[str, Any], per_task: int = 2) -> Plot:
    """The same prompts and seeds across runs: rows = runs, columns = prompts."""
    _style()
    labels = [k for k, s in samples.items() if len(s.prompts)]
    if not labels:
        fig, ax = plt.subplots(figsize=(4, 2))
        _no_data(ax, "no samples")
        return Plot(fig, "Sample grid: no samples were found.")
    prompts = _grid_prompts(samples[labels[0]], cfg, per_task)
    fig, axes = plt.subplots(
        len(labels),
        len(prompts),
        figsize=(1.4 * len(prompts) + 1.2, 1.4 * len(labels) + 0.8),
        squeeze=False,
    )
    missing = []
    for i, label in enumerate(labels):
        index = {p: k for k, p in enumerate(samples[label].prompts)}
        for j, prompt in enumerate(prompts):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            k = index.get(prompt)
            if k is None:
                missing.append(f"{label}: {prompt}")
                continue
            ax.imshow(samples[label].images[k], interpolation="nearest")
            if i == 0:
                ax.set_title("\n".join(textwrap.wrap(prompt, 18)[:3]), fontsize=6)
        axes[i][0].set_ylabel(
            row_label(label, cfg), fontsize=7, rotation=0, ha="right", va="center"
        )
    fig.tight_layout()
    cap = (
        f"Samples of {len(labels)} models on the same {len(prompts)} evaluation prompts with the "
        "same seeds (first evaluation seed, ODE sampler). Rows: "
        + ", ".join(_lit(label) for label in labels)
        + ". Prompts: "
        + "; ".join(f'"{p}"' for p in prompts)
        + "."
    )
    if missing:
        cap += f" Missing cells: {len(missing)}."
    return Plot(fig, cap)


# ---------------------------------------------------------------------------------------------
# Writing.

METRIC_FIGURES: dict[str, Callable[..., Plot]] = {
    "convergence": convergence,
    "radar": radar,
    "per_task": per_task,
    "distill_ablation": distill_ablation,
    "loss_noise": loss_noise,
}


def save(plot: Plot, out_dir: Path, name: str) -> list[Path]:
    """Write ``<name>.png``, ``<name>.pdf`` and the caption ``<name>.rst``; close the figure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf", out_dir / f"{name}.rst"]
    plot.figure.savefig(paths[0], dpi=150, bbox_inches="tight")
    plot.figure.savefig(paths[1], bbox_inches="tight")
    paths[2].write_text(report_safe(plot.caption), encoding="utf-8")
    plt.close(plot.figure)
    return paths


def write_figures(
    metrics: pd.DataFrame,
    cfg: Mapping[str, Any],
    info: Mapping[str, RunInfo],
    samples: Mapping[str, Samples],
    out_dir: Path,
    only: Sequence[str] | None = None,
) -> list[Path]:
    """Render and save every figure (or those in ``only``)."""
    written = []
    for name, fn in METRIC_FIGURES.items():
        if only and name not in only:
            continue
        written += save(fn(metrics, cfg, info), out_dir, name)
    if not only or "sample_grid" in only:
        written += save(sample_grid(samples, cfg), out_dir, "sample_grid")
    return written
