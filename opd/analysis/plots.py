"""Figures and generated captions of the analyses (headless: the Agg backend is forced).

- :func:`grad_variance_figure` (the ``grad_variance`` figure): for each estimator, the trace of
  the gradient covariance (log scale) against the denoising step, one column of panels per noise
  level (the ODE, ``a = 0``, included: closed form only), one row per mode (fixed states; fresh
  rollouts), then the signal-to-noise ratio and the cosine to the closed-form gradient in rollout
  mode; line style per batch size, bands = the bootstrap confidence intervals. Zero variances
  (the closed form at fixed states) and zero SNRs cannot be drawn on a log axis and are left
  out (the caption says so).
- :func:`variance_caption`: sentences with the measured ratios, computed from the table.
- :func:`retention_figure` / :func:`retention_caption`: per-task curves of every method over
  training compute (mean over training seeds, ±1 std band), cascade stage boundaries as vertical
  lines, the task teacher's final value as a horizontal dashed line (the base model with CFG
  dotted), and the measured forgetting.
- :func:`recovery_figure` / :func:`recovery_caption`: per task, DiffusionOPD's and the paper's
  baselines' fractions of the task's headroom at every evaluated checkpoint over training compute
  (the student's including the teachers'), the teacher's fraction with its SE, and the student's
  recovery on a second axis (:func:`opd.analysis.properties.recovery_curves`).
- :func:`save_figure` writes PNG and PDF; :func:`write_caption` writes the caption next to them
  (``<name>.caption.txt`` and ``<name>.rst``, the latter for the Snakemake report).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=True)

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from opd.analysis.properties import BASELINES, ceilings, recovery_curves, standard_error
from opd.analysis.retention import main_columns, retention_curves, stage_boundaries, teacher_finals

__all__ = [
    "ESTIMATOR_LABELS",
    "grad_variance_figure",
    "recovery_caption",
    "recovery_figure",
    "retention_caption",
    "retention_figure",
    "save_figure",
    "variance_caption",
    "write_caption",
    "write_recovery_figure",
]

#: Display names of the estimators.
ESTIMATOR_LABELS: dict[str, str] = {
    "closed_form": "closed form",
    "ppo": "PPO-style",
    "logratio": "log-ratio REINFORCE",
    "ppo_rtg": "PPO-style (reward-to-go)",
    "grpo": "GRPO (task reward)",
}
_LINESTYLES = ("-", "--", ":", "-.")
_MODE_LABELS = {"fixed_state": "fixed states", "rollout": "fresh rollouts"}


def save_figure(fig: Figure, stem: str | Path, dpi: int = 150) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` (folders created) and close the figure."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.savefig(out[0], dpi=dpi, bbox_inches="tight")
    fig.savefig(out[1], bbox_inches="tight")
    plt.close(fig)
    return out


def write_caption(text: str, stem: str | Path) -> list[Path]:
    """Write the caption as ``<stem>.caption.txt`` and ``<stem>.rst`` (for the HTML report)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = [stem.parent / f"{stem.name}.caption.txt", stem.with_suffix(".rst")]
    for path in out:
        path.write_text(text.rstrip() + "\n", encoding="utf-8")
    return out


def _side_legend(fig: Figure, axes: np.ndarray) -> None:
    """One legend for all panels (each label once) to the right of the figure; tight layout."""
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()


def _palette(names: Sequence[str]) -> dict[str, Any]:
    colors = sns.color_palette("tab10", n_colors=max(len(names), 3))
    return dict(zip(names, colors, strict=False))


def _label(name: str) -> str:
    return ESTIMATOR_LABELS.get(name, name)


def _fmt_a(a: float) -> str:
    return "ODE (a = 0)" if a == 0 else f"a = {a:g}"


def _num(x: float, digits: int = 3) -> str:
    """A measured number for a caption; below 1e-12 in size it is rounding residue (a mean of
    equal values), printed as 0."""
    if x is None or not math.isfinite(x):
        return "inf" if x == math.inf else "n/a"
    if abs(x) < 1e-12:
        return "0"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


# --------------------------------------------------------------------------------------------
# gradient variance
# --------------------------------------------------------------------------------------------
def grad_variance_figure(df: pd.DataFrame) -> Figure:
    """The ``grad_variance`` figure from the table of :func:`opd.analysis.variance_study`."""
    sns.set_theme(style="whitegrid", context="paper")
    if df.empty:
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.text(0.5, 0.5, "no gradient-variance data", ha="center", va="center")
        ax.set_axis_off()
        return fig
    levels = sorted(df["noise_level"].unique())
    sizes = sorted(df["batch_size"].unique())
    names = [e for e in ESTIMATOR_LABELS if e in set(df["estimator"])]
    names += sorted(set(df["estimator"]) - set(names))
    colors = _palette(names)
    styles = {b: _LINESTYLES[i % len(_LINESTYLES)] for i, b in enumerate(sizes)}
    panels = [
        ("trace_cov", "fixed_state", "tr Cov(g), fixed states", True),
        ("trace_cov", "rollout", "tr Cov(g), fresh rollouts", True),
        ("snr", "rollout", "SNR, fresh rollouts", True),
        ("cosine", "rollout", "cosine to closed form, rollouts", False),
    ]
    modes = set(df["mode"])
    panels = [p for p in panels if p[1] in modes]
    fig, axes = plt.subplots(
        len(panels),
        len(levels),
        figsize=(3.2 * len(levels) + 1.5, 2.5 * len(panels)),
        squeeze=False,
        sharex=True,
    )
    for r, (metric, mode, ylabel, log) in enumerate(panels):
        for c, a in enumerate(levels):
            ax = axes[r][c]
            sub = df[(df["metric"] == metric) & (df["mode"] == mode) & (df["noise_level"] == a)]
            for name in names:
                for b in sizes:
                    d = sub[(sub["estimator"] == name) & (sub["batch_size"] == b)]
                    d = d.sort_values("step")
                    ok = np.isfinite(d["value"].to_numpy(float))
                    if log:
                        ok &= d["value"].to_numpy(float) > 0
                    d = d[ok]
                    if d.empty:
                        continue
                    ax.plot(
                        d["step"],
                        d["value"],
                        color=colors[name],
                        linestyle=styles[b],
                        lw=1.3,
                        marker="o",
                        ms=2.5,
                    )
                    lo = d["ci_low"].to_numpy(float)
                    hi = d["ci_high"].to_numpy(float)
                    if log:
                        lo = np.where(lo > 0, lo, np.nan)
                    ax.fill_between(d["step"], lo, hi, color=colors[name], alpha=0.15, lw=0)
            if log and ax.has_data():
                ax.set_yscale("log")
            if r == 0:
                ax.set_title(_fmt_a(a))
            if c == 0:
                ax.set_ylabel(ylabel)
            if r == len(panels) - 1:
                ax.set_xlabel("denoising step j")
            zero = sub[(sub["estimator"] == "closed_form") & (sub["value"] == 0)]
            if log and metric == "trace_cov" and not zero.empty:
                ax.text(
                    0.03,
                    0.03,
                    "closed form: zero variance",
                    transform=ax.transAxes,
                    fontsize=7,
                    color=colors.get("closed_form", "0.3"),
                    va="bottom",
                )
            if not ax.has_data() and zero.empty:
                ax.text(
                    0.5,
                    0.5,
                    "no estimator\ndefined",
                    ha="center",
                    va="center",
                    transform=ax.transAxes,
                    fontsize=8,
                    color="0.4",
                )
    handles = [plt.Line2D([], [], color=colors[n], lw=2, label=_label(n)) for n in names] + [
        plt.Line2D([], [], color="0.3", linestyle=styles[b], label=f"batch {b}") for b in sizes
    ]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def _median_ratio(df: pd.DataFrame, num: str, den: str, **keys: Any) -> tuple[float, float, float]:
    """Median, min and max over steps of trace_cov(num) / trace_cov(den) at fixed keys."""
    sub = df[df["metric"] == "trace_cov"]
    for k, v in keys.items():
        sub = sub[sub[k] == v]
    a = sub[sub["estimator"] == num].set_index("step")["value"]
    b = sub[sub["estimator"] == den].set_index("step")["value"]
    joined = pd.concat([a.rename("n"), b.rename("d")], axis=1).dropna()
    joined = joined[joined["d"] > 0]
    if joined.empty:
        return math.nan, math.nan, math.nan
    r = joined["n"] / joined["d"]
    return float(r.median()), float(r.min()), float(r.max())


def _median_metric(df: pd.DataFrame, metric: str, **keys: Any) -> float:
    sub = df[df["metric"] == metric]
    for k, v in keys.items():
        sub = sub[sub[k] == v]
    vals = sub["value"].to_numpy(float)
    vals = vals[np.isfinite(vals)]
    return float(np.median(vals)) if vals.size else math.nan


def variance_caption(df: pd.DataFrame) -> str:
    """A caption stating the measured variance ratios (every number computed from ``df``)."""
    if df.empty:
        return "Gradient-variance study: no data."
    draws = int(df["draws"].max())
    levels = sorted(df["noise_level"].unique())
    sizes = sorted(df["batch_size"].unique())
    b_big = max(sizes)
    steps = sorted(df["step"].unique())
    parts = [
        "Gradient variance of the DiffusionOPD estimators w.r.t. the student's LoRA weights "
        f"(trace of the covariance of one batch-B gradient; {len(steps)} denoising steps, "
        f"noise levels {', '.join(f'{a:g}' for a in levels)}, batch sizes "
        f"{', '.join(str(b) for b in sizes)}, up to {draws} batch estimates per point; bands: "
        "95% bootstrap intervals; SNR = ||E g||^2 / tr Cov(g), 0 where the mean is not resolved "
        "from the noise with these draws). All estimators use the summed log-density."
    ]
    for a in [x for x in levels if x > 0]:
        for mode in ("rollout", "fixed_state"):
            keys = {"noise_level": a, "mode": mode, "batch_size": b_big}
            sentences = []
            for name in ("ppo", "logratio", "ppo_rtg"):
                med, lo, hi = _median_ratio(df, name, "closed_form", **keys)
                if math.isfinite(med):
                    sentences.append(
                        f"the {_label(name)} estimator's variance is {_num(med)}x the closed "
                        f"form's (median over steps; {_num(lo)}x to {_num(hi)}x)"
                    )
            if mode == "rollout" and sentences:
                parts.append(
                    f"At a = {a:g}, batch {b_big}, over fresh rollouts, "
                    + "; ".join(sentences)
                    + "."
                )
            if mode == "fixed_state":
                sub = df[(df["metric"] == "trace_cov") & (df["estimator"] == "closed_form")]
                sub = sub[(sub["noise_level"] == a) & (sub["mode"] == mode)]
                if not sub.empty and bool((sub["value"] == 0).all()):
                    snr = _median_metric(df, "snr", estimator="ppo", **keys)
                    text = (
                        f"At a = {a:g} and fixed states the closed form has zero variance (its "
                        "only randomness is which states are visited)"
                    )
                    if math.isfinite(snr):
                        text += (
                            f"; the PPO-style estimator's median SNR there is {_num(snr)} at "
                            f"batch {b_big}"
                        )
                    parts.append(text + ".")
        snrs = []
        for name in ("closed_form", "ppo", "logratio", "ppo_rtg", "grpo"):
            v = _median_metric(
                df, "snr", estimator=name, noise_level=a, mode="rollout", batch_size=b_big
            )
            if math.isfinite(v):
                snrs.append(f"{_label(name)} {_num(v)}")
        if snrs:
            note = ""
            if (df["estimator"] == "grpo").any():
                note = " (GRPO follows the task reward, a different objective: compare SNRs only)"
            parts.append(
                f"Median SNR over rollouts at a = {a:g}, batch {b_big}: {'; '.join(snrs)}{note}."
            )
    grpo = df[(df["estimator"] == "grpo") & df["metric"].isin(["trace_cov", "mean_norm"])]
    dead = sorted(a for a, g in grpo.groupby("noise_level") if bool((g["value"] == 0).all()))
    if dead:
        parts.append(
            "The task reward was constant over the rollouts at a = "
            + ", ".join(f"{a:g}" for a in dead)
            + ": the GRPO gradient is identically zero there (SNR undefined)."
        )
    ode = _median_metric(
        df, "snr", estimator="closed_form", noise_level=0.0, mode="rollout", batch_size=b_big
    )
    if 0.0 in levels:
        if math.isfinite(ode):
            parts.append(f"The ODE objective's median SNR over rollouts is {_num(ode)}.")
        parts.append(
            "PPO-style, log-ratio, reward-to-go and GRPO estimators need a stochastic kernel: "
            "they are undefined for the ODE (a = 0) and absent there."
        )
    if (df["metric"] == "trace_cov").any():
        parts.append(
            "Zero variances (closed form at fixed states) and zero SNRs are not drawn on the "
            "log axes."
        )
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# retention
# --------------------------------------------------------------------------------------------
def retention_figure(
    df: pd.DataFrame,
    cfg: Mapping[str, Any],
    *,
    columns: Sequence[str] | None = None,
    roles: Sequence[str] = ("table1", "ablation"),
) -> Figure:
    """Per-task curves over training compute from the tidy metrics table.

    One panel per metric column (default: each task's main column, the first benchmark column
    scored on that task's prompts); every run of ``roles`` as a line over ``model_evals`` (mean
    over training seeds, ±1 std band), cascade stage ends as vertical lines in the run's colour,
    the panel task's teacher final value as a dashed line and the base model with CFG dotted.
    """
    sns.set_theme(style="whitegrid", context="paper")
    cols = list(columns) if columns is not None else main_columns(cfg)
    curves = retention_curves(df, cfg)
    runs = curves[curves["role"].isin(list(roles))]
    run_names = list(dict.fromkeys(runs.sort_values(["role", "run"])["run"]))
    # tab20 up to 20 runs: husl's evenly spaced hues made neighbours (cascade_nft and
    # multitask_grpo_guard in the mini run) near-identical
    n = len(run_names)
    palette = "tab10" if n <= 10 else "tab20" if n <= 20 else "husl"
    colors = dict(
        zip(run_names, sns.color_palette(palette, n_colors=max(len(run_names), 3)), strict=False)
    )
    ncol = min(len(cols), 3) or 1
    nrow = max(math.ceil(len(cols) / ncol), 1)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol + 2.0, 3.0 * nrow), squeeze=False)
    teachers = teacher_finals(df, cfg)
    bounds = stage_boundaries(curves)
    base = curves[(curves["run"] == "base_cfg")]
    for k, col in enumerate(cols):
        ax = axes[k // ncol][k % ncol]
        task = cfg["benchmarks"][col]["task"]
        sub = runs[runs["metric"] == col]
        for run in run_names:
            d = sub[sub["run"] == run]
            if d.empty:
                continue
            agg = d.groupby("step").agg(
                x=("model_evals", "mean"), y=("value", "mean"), sd=("value", "std")
            )
            agg = agg.sort_values("x")
            role = str(d["role"].iloc[0])
            style = "-" if role == "table1" else ":"
            ax.plot(
                agg["x"], agg["y"], style, color=colors[run], lw=1.4, marker="o", ms=2.5, label=run
            )
            sd = agg["sd"].fillna(0.0)
            ax.fill_between(agg["x"], agg["y"] - sd, agg["y"] + sd, color=colors[run], alpha=0.12)
            for x in bounds.get(run, []):
                ax.axvline(x, color=colors[run], lw=0.8, alpha=0.6, linestyle=(0, (4, 2)))
        tv = teachers.get((task, col))
        if tv is not None and math.isfinite(tv):
            ax.axhline(tv, color="black", lw=1.0, linestyle="--", label="task teacher (final)")
        b = base[base["metric"] == col]["value"]
        if len(b):
            ax.axhline(float(b.mean()), color="0.5", lw=1.0, linestyle=":", label="base + CFG")
        ax.set_title(f"{col} ({task} prompts)")
        ax.set_xlabel("training compute (model evaluations)")
        _count_ticks(ax)
        ax.set_ylabel(col)
        if not ax.has_data():
            ax.text(0.5, 0.5, "no evaluations", ha="center", va="center", transform=ax.transAxes)
    for k in range(len(cols), nrow * ncol):
        axes[k // ncol][k % ncol].set_axis_off()
    _side_legend(fig, axes)
    return fig


def retention_caption(df: pd.DataFrame, cfg: Mapping[str, Any], table: pd.DataFrame) -> str:
    """Caption of the retention figure with the measured forgetting (from ``table``, the
    output of :func:`opd.analysis.retention.retention_table`)."""
    cols = main_columns(cfg)
    parts = [
        "Per-task retention: each task's main benchmark column ("
        + ", ".join(f"{c} for {cfg['benchmarks'][c]['task']}" for c in cols)
        + ") at every evaluated checkpoint over training compute, mean over training seeds "
        "(±1 std band); dashed: the task teacher's final value; dotted grey: the base model "
        "with CFG; vertical lines: ends of cascade stages."
    ]
    if table.empty:
        return parts[0] + " No evaluations yet."
    main = table[table["metric"].isin(cols)]
    own = main[main["statistic"] == "drop_after_own_stage"]
    finals = (
        table[table["statistic"] == "stage_end"]
        .groupby("run")["stage"]
        .agg(lambda labels: max(labels, key=lambda lab: int(str(lab).split(":", 1)[0])))
    )
    for row in own.itertuples():
        if row.stage == finals.get(row.run):
            continue  # the task's own stage is the last one: nothing came after it
        verb = "loses" if row.value >= 0 or abs(row.value) < 1e-12 else "gains"
        parts.append(
            f"{row.run} {verb} {_num(abs(row.value))} on {row.metric} after its last "
            f"{cfg['benchmarks'][row.metric]['task']} stage ({row.stage})."
        )
    drops = main[(main["statistic"] == "drop") & main["role"].isin(["table1", "ablation"])]
    if not drops.empty:
        worst = drops.sort_values("value", ascending=False).iloc[0]
        parts.append(
            f"Largest drop from a run's best checkpoint to its final one: {worst['run']} on "
            f"{worst['metric']} ({_num(float(worst['value']))})."
        )
        zero = drops.groupby("run")["value"].max()
        kept = sorted(zero[zero <= 0].index)
        if kept:
            parts.append(f"No drop from best on any main column: {', '.join(kept)}.")
    gaps = main[main["statistic"] == "gap_to_teacher"]
    gaps = gaps[gaps["role"] == "table1"]
    for run, g in gaps.groupby("run", sort=True):
        items = ", ".join(
            f"{r.metric} {'+' if r.value >= 0 else '-'}{_num(abs(r.value))}" for r in g.itertuples()
        )
        parts.append(f"{run} final minus teacher final: {items}.")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# recovery
# --------------------------------------------------------------------------------------------
def _by_step(points: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint step: mean compute, mean fraction and its SE over training seeds."""
    g = points.groupby("step")
    out = pd.DataFrame(
        {
            "x": g["compute"].mean(),
            "mean": g["fraction"].mean(),
            "se": g["fraction"].agg(standard_error),
            "n": g["fraction"].count(),
        }
    )
    return out.reset_index().sort_values("x")


def _recovery_runs(curves: Any) -> list[str]:
    have = set(curves.points["run"])
    return [r for r in (curves.method, *BASELINES) if r in have]


def recovery_figure(curves: Any) -> Figure:
    """The ``recovery`` figure from :func:`opd.analysis.properties.recovery_curves`: one panel
    per task, the student's and the baselines' fractions of the task's headroom at every
    evaluated checkpoint over training compute (mean, ±1 SE band over training seeds), the
    teacher's fraction with its paired SE band, 90% of it dotted, and the student's recovery
    (fraction over the teacher's) on the right axis where the teacher gained."""
    sns.set_theme(style="whitegrid", context="paper")
    tasks = list(curves.teachers)
    fig, axes = plt.subplots(
        1, max(len(tasks), 1), figsize=(4.4 * max(len(tasks), 1) + 1.5, 3.4), squeeze=False
    )
    runs = _recovery_runs(curves)
    colors = _palette(runs)
    for ax, task in zip(axes[0], tasks, strict=False):
        g = curves.teachers[task]
        sub = curves.points[curves.points["task"] == task]
        for run in runs:
            agg = _by_step(sub[sub["run"] == run])
            if agg.empty:
                continue
            style = "-" if run == curves.method else "--"
            ax.plot(
                agg["x"],
                agg["mean"],
                style,
                color=colors[run],
                lw=1.5,
                marker="o",
                ms=2.5,
                label=run,
            )
            se = agg["se"].fillna(0.0)
            ax.fill_between(
                agg["x"],
                agg["mean"] - se,
                agg["mean"] + se,
                color=colors[run],
                alpha=0.15,
                linewidth=0,
            )
        if math.isfinite(g.fraction):
            ax.axhline(g.fraction, color="black", lw=1.0, label="task teacher (final)")
            if math.isfinite(g.se):
                ax.axhspan(g.fraction - g.se, g.fraction + g.se, color="black", alpha=0.08)
        if g.gained:
            ax.axhline(
                0.9 * g.fraction,
                color="black",
                lw=1.0,
                linestyle=":",
                label="90% of the teacher's gain",
            )
            t = g.fraction
            sec = ax.secondary_yaxis(
                "right", functions=(lambda y, t=t: y / t, lambda r, t=t: r * t)
            )
            sec.set_ylabel("recovery (of the teacher's gain)")
        ax.axhline(0.0, color="0.5", lw=0.8)
        if curves.teacher_evals > 0:
            ax.axvline(
                curves.teacher_evals, color="0.5", lw=0.8, linestyle=":", label="teachers' compute"
            )
        state = "" if g.gained else ", did not gain"
        ax.set_title(f"{task}: teacher {_num(g.fraction)} ± {_num(g.se, 2)}{state}", fontsize=9)
        ax.set_xlabel(f"training model evaluations ({curves.method}: incl. the teachers')")
        _count_ticks(ax)
        if sub.empty:
            ax.text(0.5, 0.5, "no evaluations", ha="center", va="center", transform=ax.transAxes)
    if not tasks:
        axes[0][0].text(0.5, 0.5, "no teachers evaluated", ha="center", va="center")
        axes[0][0].set_axis_off()
    axes[0][0].set_ylabel("fraction of headroom (capped, reward-weighted)")
    _side_legend(fig, axes)
    return fig


def _count(x: float) -> str:
    """A tick label for a count: 0, 950, 200k, 1.2M (six-digit ticks collide otherwise)."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.4g}{suffix}"
    return f"{x:.4g}"


def _count_ticks(ax: Any) -> None:
    """Label the x axis's ticks as `_count` does."""
    from matplotlib.ticker import FuncFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: _count(x)))


def _evals(x: float) -> str:
    """A model-evaluation count for a caption (thousands separated)."""
    return f"{x:,.0f}" if math.isfinite(x) else "n/a"


def _first_reach(agg: pd.DataFrame, target: float) -> float:
    hit = agg[agg["mean"] >= target]
    return float(hit["x"].iloc[0]) if not hit.empty else math.nan


def recovery_caption(curves: Any) -> str:
    """Caption of the recovery figure with the measured numbers per task."""
    m, te = curves.method, curves.teacher_evals
    parts = [
        f"Recovery of each task's teacher by {m} against training compute. At every evaluated "
        "checkpoint, a run's fraction of the task's headroom: per own column (value - base with "
        "CFG) / (ceiling - base with CFG), capped at 1, weighted by the task's reward mix; mean "
        f"and ±1 SE band over training seeds. {m}'s compute includes the teachers' total "
        f"({_evals(te)} model evaluations, dotted vertical line); the baselines' is their own. "
        "Black: the teacher's final fraction with its SE (paired over evaluation seeds); "
        f"dotted: 90% of it. Right axis: {m}'s recovery, its fraction over the teacher's, "
        "where the teacher gained."
    ]
    pts = curves.points
    for task, g in curves.teachers.items():
        sub = pts[pts["task"] == task]
        line = f"{task}: teacher {_num(g.fraction)} ± {_num(g.se, 2)}"
        if not g.gained:
            line += " (did not gain: no recovery to speak of)"
        items = []
        for run in _recovery_runs(curves):
            agg = _by_step(sub[sub["run"] == run])
            if agg.empty:
                continue
            last = agg.iloc[-1]
            item = (
                f"{run} final {_num(last['mean'])} ± {_num(last['se'], 2)} "
                f"at {_evals(last['x'])} evaluations"
            )
            if run == m and g.gained:
                r = last["mean"] / g.fraction
                reach = _first_reach(agg, 0.9 * g.fraction)
                where = (
                    f"reaches 90% at {_evals(reach - te)} own evaluations ({_evals(reach)} in all)"
                    if math.isfinite(reach)
                    else "does not reach 90%"
                )
                item += f" (recovery {_num(r)}; {where})"
            items.append(item)
        parts.append(line + ("; " + "; ".join(items) if items else "; no evaluations") + ".")
    if not curves.teachers:
        parts.append("No teacher was evaluated.")
    return " ".join(parts)


def write_recovery_figure(
    metrics: pd.DataFrame,
    cfg: Mapping[str, Any],
    ceilings_file: Path | None,
    figures_dir: Path,
) -> list[Path]:
    """Draw the ``recovery`` figure (PNG, PDF) and its caption under ``figures_dir``, from the
    metrics table and the ceilings that :func:`~opd.analysis.properties.write_property_checks`
    uses; returns the figure's paths."""
    curves = recovery_curves(metrics, cfg, ceilings(cfg, ceilings_file))
    stem = Path(figures_dir) / "recovery"
    paths = save_figure(recovery_figure(curves), stem)
    write_caption(recovery_caption(curves), stem)
    return paths
