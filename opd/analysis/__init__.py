"""Analyses: the measured gradient variance of the OPD estimators and per-task retention.

Gradient variance (:mod:`opd.analysis.variance`, its statistics in
:mod:`opd.analysis.gradient_stats`):

- :func:`gradient_stats` / :func:`estimate_gradient_stats`: model-agnostic statistics of a
  stochastic gradient estimator from independent draws (trace of the covariance of a batch-B
  estimate, norm of the expected gradient, SNR, cosine to a reference; bootstrap intervals).
- :func:`estimator_losses`: one denoising step's estimators (closed form, PPO-style, log-ratio
  REINFORCE, reward-to-go PPO, GRPO) as per-sample losses on the summed log-density.
- :func:`linear_gaussian_moments`: their exact means and covariance traces for a linear-Gaussian
  step (the known answer the tests check the measurement against).
- :func:`variance_study`: the study on a `FlowModel` (teacher and student adapters), per
  estimator x mode (``fixed_state`` / ``rollout``) x noise level x batch size x step, as a tidy
  table; ``opd variance`` runs it from a config.

Retention (:mod:`opd.analysis.retention`): :func:`retention_curves` and :func:`retention_table`
(best / final / drop, cascade stage ends, gaps to the teachers) from ``metrics.csv``;
``opd retention`` writes them with the figure.

Properties (:mod:`opd.analysis.properties`): the world's properties 3 and 4 (docs/mini_world.md) and
DiffusionOPD's recovery of each teacher's gain from ``metrics.csv``; ``opd properties`` writes
the table and the ``recovery`` figure.

Figures (:mod:`opd.analysis.plots`, Agg backend): :func:`grad_variance_figure`,
:func:`variance_caption`, :func:`retention_figure`, :func:`retention_caption`,
:func:`recovery_figure`, :func:`recovery_caption`, :func:`write_recovery_figure`,
:func:`save_figure`, :func:`write_caption`.
Importing :mod:`opd.analysis` loads torch and pandas but not matplotlib: the plotting names load
:mod:`opd.analysis.plots` on first use.
"""

from __future__ import annotations

from typing import Any

from opd.analysis.retention import (
    main_columns,
    retention_curves,
    retention_table,
    stage_boundaries,
    teacher_finals,
)
from opd.analysis.variance import (
    ESTIMATORS,
    METRICS,
    MODES,
    GradientStats,
    LoraRowGrads,
    MetricEstimate,
    estimate_gradient_stats,
    estimator_losses,
    gradient_stats,
    linear_gaussian_moments,
    variance_study,
)

_PLOTS = (
    "grad_variance_figure",
    "recovery_caption",
    "recovery_figure",
    "retention_caption",
    "retention_figure",
    "save_figure",
    "variance_caption",
    "write_caption",
    "write_recovery_figure",
)

__all__ = [
    "ESTIMATORS",
    "METRICS",
    "MODES",
    "GradientStats",
    "LoraRowGrads",
    "MetricEstimate",
    "estimate_gradient_stats",
    "estimator_losses",
    "gradient_stats",
    "linear_gaussian_moments",
    "main_columns",
    "retention_curves",
    "retention_table",
    "stage_boundaries",
    "teacher_finals",
    "variance_study",
    *_PLOTS,
]


def __getattr__(name: str) -> Any:
    if name in _PLOTS:
        from opd.analysis import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'opd.analysis' has no attribute {name!r}")
