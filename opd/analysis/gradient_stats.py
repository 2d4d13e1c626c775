"""Statistics of repeated gradient draws: per estimator, the trace of the covariance of the
per-draw gradients at a batch size, the norm of their mean, the signal-to-noise ratio and the
cosine to a reference mean, each with a bootstrap interval (:func:`gradient_stats`), and the
plain :func:`flat_grad` of a loss. :mod:`opd.analysis.variance` draws the gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

#: Metric names of the tidy table.
METRICS: tuple[str, ...] = ("trace_cov", "mean_norm", "snr", "cosine")
_DETERMINISTIC_RTOL = 1e-10
F64 = torch.float64


# --------------------------------------------------------------------------------------------
# core statistics
# --------------------------------------------------------------------------------------------
@dataclass
class MetricEstimate:
    """A point estimate with its bootstrap percentile interval and standard error."""

    value: float
    ci_low: float
    ci_high: float
    se: float


@dataclass
class GradientStats:
    """Statistics of one batch-B gradient estimator (see the module docstring for definitions).

    ``mean`` is the mean gradient over all draws (P,), float64; ``draws`` the number ``M`` of
    batch-B estimates; ``metrics`` maps each name of :data:`METRICS` to a :class:`MetricEstimate`
    (``cosine`` only when a reference was given).
    """

    mean: Tensor | None
    draws: int
    batch_size: int
    metrics: dict[str, MetricEstimate] = field(default_factory=dict)
    deterministic: bool = False

    def __getitem__(self, name: str) -> MetricEstimate:
        return self.metrics[name]


def _batch_means(x: Tensor, batch_size: int) -> Tensor:
    """(M, P) means of consecutive non-overlapping groups of ``batch_size`` rows of ``x``."""
    m = x.shape[0] // batch_size
    return x[: m * batch_size].reshape(m, batch_size, -1).mean(dim=1)


def _interval(values: np.ndarray, level: float) -> tuple[float, float, float]:
    finite = values[np.isfinite(values)]
    if finite.size < max(2, values.size // 2):
        return float("nan"), float("nan"), float("nan")
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi), float(np.std(finite, ddof=1))


def gradient_stats(
    samples: Tensor,
    *,
    batch_size: int = 1,
    reference: Tensor | None = None,
    reference_samples: Tensor | None = None,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> GradientStats:
    """Statistics of the batch-B estimator built from ``N`` i.i.d. single-draw gradients.

    ``samples`` (N, P): one flat gradient estimate per draw. ``batch_size`` B: the estimator is
    the mean of B draws; ``N // B`` non-overlapping batch estimates are used (the remainder is
    dropped). ``reference`` (P,): fixed reference gradient for ``cosine``; or
    ``reference_samples`` (N, P): reference draws aligned with ``samples`` (leave-own-draws-out
    reference mean). Definitions, intervals and the deterministic case: see the module docstring.
    The bootstrap works on the (M, M) Gram matrix or on the (M, P) estimates, whichever is
    cheaper, so its cost is O(min(M, P) M n_boot).
    """
    x = samples.detach().to(torch.float64).cpu()
    if x.dim() != 2:
        raise ValueError(f"samples must be (N, P), got shape {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n, p = x.shape
    m = n // batch_size
    if m < 2:
        raise ValueError(f"{n} draws give {m} batch-{batch_size} estimates; need at least 2")
    g = _batch_means(x, batch_size)  # (M, P)
    sq = (g * g).sum(dim=1)  # ||g_i||^2
    mean = g.mean(dim=0)
    mean_sq = float(mean @ mean)
    trace = float((sq.sum() - m * mean_sq) / (m - 1))
    deterministic = trace <= _DETERMINISTIC_RTOL * max(mean_sq, 1e-300)

    # per-estimate cosines to the reference (the reference is not resampled)
    cos: Tensor | None = None
    norms = torch.sqrt(sq)
    if reference is not None:
        r = reference.detach().to(torch.float64).cpu().reshape(-1)
        cos = (g @ r) / (norms * torch.linalg.vector_norm(r))
    elif reference_samples is not None:
        y_all = reference_samples.detach().to(torch.float64).cpu()
        if y_all.shape != x.shape:
            raise ValueError(f"reference_samples {tuple(y_all.shape)} != samples {(n, p)}")
        y = _batch_means(y_all, batch_size)
        total = y.sum(dim=0)
        # leave-own-draws-out reference r_i = (S - y_i) / (M - 1)
        dot = (g @ total - (g * y).sum(dim=1)) / (m - 1)
        r_sq = (total @ total - 2 * (y @ total) + (y * y).sum(dim=1)) / (m - 1) ** 2
        cos = dot / (norms * torch.sqrt(torch.clamp(r_sq, min=0.0)))
    if cos is not None:
        cos = torch.nan_to_num(cos, nan=0.0)

    def point(mean_sq_: Tensor, trace_: Tensor) -> dict[str, Tensor]:
        if deterministic:
            trace_ = torch.zeros_like(trace_)
        signal = torch.clamp(mean_sq_ - trace_ / m, min=0.0)
        # deterministic: infinite SNR; identically zero gradient: undefined (NaN)
        inf = torch.where(mean_sq_ > 0, math.inf, math.nan)
        snr = torch.where(trace_ > 0, signal / trace_, inf)
        return {"trace_cov": trace_, "mean_norm": torch.sqrt(signal), "snr": snr}

    est = point(torch.tensor([mean_sq], dtype=F64), torch.tensor([trace], dtype=F64))
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, m, (int(n_boot), m), generator=gen)
    counts = torch.zeros(int(n_boot), m, dtype=F64)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=F64))
    if p <= m:  # feature space
        boot_mean_sq = ((counts @ g) ** 2).sum(dim=1) / m**2
    else:  # Gram space
        gram = g @ g.T
        boot_mean_sq = ((counts @ gram) * counts).sum(dim=1) / m**2
    boot_trace = (counts @ sq - m * boot_mean_sq) / (m - 1)
    boot = point(boot_mean_sq, boot_trace)
    metrics: dict[str, MetricEstimate] = {}
    for name in ("trace_cov", "mean_norm", "snr"):
        value = float(est[name][0])
        if deterministic and name in ("trace_cov", "snr"):
            metrics[name] = MetricEstimate(value, value, value, 0.0)
            continue
        lo, hi, se = _interval(boot[name].numpy(), level)
        metrics[name] = MetricEstimate(value, lo, hi, se)
    if cos is not None:
        value = float(cos.mean())
        lo, hi, se = _interval(((counts @ cos) / m).numpy(), level)
        metrics["cosine"] = MetricEstimate(value, lo, hi, se)
    return GradientStats(mean, m, batch_size, metrics, deterministic)


def estimate_gradient_stats(
    grad_fn: Callable[[int], Tensor],
    draws: int,
    *,
    batch_size: int = 1,
    reference: Tensor | None = None,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> GradientStats:
    """Call ``grad_fn(i)`` for ``i < draws * batch_size`` (independent single-draw estimates)
    and return :func:`gradient_stats` of the batch-``batch_size`` estimator (``draws`` batch
    estimates)."""
    samples = torch.stack(
        [grad_fn(i).detach().reshape(-1).to(torch.float64) for i in range(draws * batch_size)]
    )
    return gradient_stats(
        samples, batch_size=batch_size, reference=reference, n_boot=n_boot, level=level, seed=seed
    )


def flat_grad(loss: Tensor, params: Sequence[Tensor], retain_graph: bool = False) -> Tensor:
    """``torch.autograd.grad`` of ``loss`` w.r.t. ``params`` as one flat vector (0 if unused)."""
    grads = torch.autograd.grad(loss, list(params), retain_graph=retain_graph, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )
