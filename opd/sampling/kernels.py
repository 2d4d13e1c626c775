"""Time grids and one-step transition kernels of the rectified flow: the shifted SD3 grid, the
Euler ODE step, the Flow-GRPO SDE step (noise level ``a``; ``a = 0`` is the ODE), the DanceGRPO
SDE step and a deterministic multistep DPM-Solver++(2M), with the Gaussian log-density of a
transition. Coefficients are computed in float64 from ``t`` (cached for Python-number times) and
cast to the compute dtype, the input dtype promoted to at least float32.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

TimeLike = float | Tensor
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------
# grid and small helpers
# --------------------------------------------------------------------------------------------
def time_grid(
    num_steps: int, shift: float = 3.0, device: torch.device | str | None = None
) -> Tensor:
    """The sampling grid ``1 = t_0 > t_1 > ... > t_N = 0`` (float32, length ``num_steps + 1``).

    ``t = linspace(1, 0, N + 1)`` is warped by SD3's shift ``t' = shift t / (1 + (shift-1) t)``
    (computed in float64, so the end points are exactly 1 and 0); ``shift = 1`` is uniform.
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if not shift > 0 or not math.isfinite(shift):
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    t = shift * t / (1.0 + (shift - 1.0) * t)
    t[0], t[-1] = 1.0, 0.0
    return t.to(device=device, dtype=torch.float32)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def _t64(t: TimeLike, device: torch.device) -> Tensor:
    """``t`` as a float64 tensor (0-d for a Python float, (B,) for a batch)."""
    return torch.as_tensor(t, dtype=torch.float64, device=device)


def _bcast(coef: Tensor, x: Tensor, dtype: torch.dtype) -> Tensor:
    """A 0-d or (B,) coefficient reshaped to broadcast over x's non-batch dims, cast to dtype."""
    if coef.dim() == 0:
        return coef.to(dtype)
    if coef.dim() != 1 or coef.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"time tensors must be scalars or (B,), got shape {tuple(coef.shape)}")
    return coef.to(dtype).reshape(coef.shape[0], *([1] * (x.dim() - 1)))


def _check_steps(t: Tensor, t_next: Tensor) -> None:
    if bool(((t - t_next) <= 0).any()):
        raise ValueError("each step needs t > t_next (the grid runs from 1 down to 0)")
    if bool(((t > 1) | (t_next < 0)).any()):
        raise ValueError("times must lie in [0, 1]")


Formula = Callable[[Tensor, Tensor, float], tuple[Tensor, ...]]


def _is_number(t: TimeLike) -> bool:
    return type(t) in (float, int)


def _coefficients(
    formula: Formula, t: TimeLike, t_next: TimeLike, param: float, x: Tensor, dtype: torch.dtype
) -> tuple[Tensor, ...]:
    """A step's coefficients ``formula(t, t_next, param)`` (float64 maths, checked times),
    cast to ``dtype`` and shaped to broadcast over ``x`` (0-d, or (B, 1, ...) for (B,) times).

    Times given as Python numbers (as :func:`rollout`, :func:`replay` and the trainers pass
    them) hit a cache, so a step costs no coefficient arithmetic after its first use; the
    values are the same ones, bit for bit, as for (B,) tensors of those times.
    """
    if _is_number(t) and _is_number(t_next):
        return _cached_coefficients(formula, float(t), float(t_next), param, dtype, x.device)
    tt, tn = _t64(t, x.device), _t64(t_next, x.device)
    _check_steps(tt, tn)
    return tuple(_bcast(c, x, dtype) for c in formula(tt, tn, param))


@functools.lru_cache(maxsize=4096)
def _cached_coefficients(
    formula: Formula,
    t: float,
    t_next: float,
    param: float,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, ...]:
    tt, tn = _t64(t, device), _t64(t_next, device)
    _check_steps(tt, tn)
    return tuple(c.to(dtype) for c in formula(tt, tn, param))


def _rows(coef: Tensor, batch: int) -> Tensor:
    """A coefficient from :func:`_coefficients` as a fresh (B,) tensor (a per-sample std)."""
    return coef.reshape(-1).expand(batch).clone()


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor | float, reduce: str = "mean") -> Tensor:
    """Per-sample log N(x; mean, std^2 I), computed in (at least) float32.

    ``std`` is a float, a (B,) tensor or anything broadcastable to ``x``. The element-wise
    log-density ``-(x-mean)^2/(2 std^2) - log std - log sqrt(2 pi)`` is averaged
    (``reduce="mean"``, Flow-GRPO's convention, the default) or summed (``reduce="sum"``, the
    true log-density of the whole latent) over the non-batch dims; returns a (B,) tensor.
    """
    if reduce not in ("mean", "sum"):
        raise ValueError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
    dtype = torch.promote_types(_compute_dtype(x), _compute_dtype(mean))
    x, mean = x.to(dtype), mean.to(dtype)
    s = torch.as_tensor(std, device=x.device)
    s = s.to(torch.promote_types(s.dtype, dtype))
    if s.dim() == 1 and x.dim() > 1:
        s = s.reshape(-1, *([1] * (x.dim() - 1)))
    elem = -((x - mean) ** 2) / (2.0 * s**2) - torch.log(s) - _LOG_SQRT_2PI
    elem = elem.expand(x.shape)
    dims = tuple(range(1, x.dim()))
    if not dims:
        return elem
    return elem.mean(dim=dims) if reduce == "mean" else elem.sum(dim=dims)


# --------------------------------------------------------------------------------------------
# single steps
# --------------------------------------------------------------------------------------------
@dataclass
class StepOutput:
    """One transition: the next state, the kernel mean and std, and the log-prob of the state.

    ``std`` is a (B,) tensor (zeros for deterministic steps); ``log_prob`` is a (B,) tensor
    (element-mean convention) or ``None`` for deterministic steps.
    """

    prev_sample: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor | None


def ode_step(x: Tensor, v: Tensor, t: TimeLike, t_next: TimeLike) -> Tensor:
    """Euler step of the flow ODE: ``x - h v`` with ``h = t - t_next``."""
    dtype = _compute_dtype(x)
    (h,) = _coefficients(_ode_coefficients, t, t_next, 0.0, x, dtype)
    return x.to(dtype) - h * v.to(dtype)


def _ode_coefficients(tt: Tensor, tn: Tensor, _param: float) -> tuple[Tensor]:
    return (tt - tn,)


def flow_sde_sigma(t: TimeLike, t_next: TimeLike, noise_level: float) -> Tensor:
    """Flow-GRPO's ``sigma_t = a sqrt(t / (1 - t))``; at t = 1 the denominator uses ``t_next``.

    Returned in float64 with the broadcast shape of ``t`` and ``t_next`` (0-d for floats).
    The kernel std is ``sigma_t sqrt(h)``.
    """
    dev = t.device if isinstance(t, Tensor) else None
    tt, tn = _t64(t, dev), _t64(t_next, dev)
    denom = torch.where(tt >= 1.0, 1.0 - tn, 1.0 - tt)
    return float(noise_level) * torch.sqrt(tt / denom)


def transition_coefficient(t: TimeLike, t_next: TimeLike, noise_level: float) -> Tensor:
    """``c_j`` of the Flow-GRPO mean ``mu = A_j x + c_j (-h) v`` (float64 tensor).

    ``c_j = 1 + sigma_t^2 (1-t)/(2t)``, which is analytically ``1 + a^2/2`` for t < 1 and
    exactly 1 at t = 1 (there sigma uses the next grid point and ``1 - t = 0``); those closed
    forms are returned so the value carries no rounding. ``t_next`` only fixes the shape.
    """
    dev = t.device if isinstance(t, Tensor) else None
    tt, tn = _t64(t, dev), _t64(t_next, dev)
    a = float(noise_level)
    one = torch.ones_like(tt + tn)
    return torch.where(tt >= 1.0, one, one * (1.0 + 0.5 * a * a))


def _kernel_from_mean(
    mean: Tensor,
    std: Tensor,
    stochastic: bool,
    noise: Tensor | None,
    prev_sample: Tensor | None,
) -> StepOutput:
    """Draw or score the next state of N(mean, std^2 I); ``std`` is (B,) in mean's dtype."""
    if not stochastic:
        nxt = mean if prev_sample is None else prev_sample.to(mean.dtype)
        return StepOutput(nxt, mean, torch.zeros_like(std), None)
    if prev_sample is None:
        if noise is None:
            noise = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype)
        if noise.shape != mean.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != state {tuple(mean.shape)}")
        prev_sample = mean + _bcast(std, mean, mean.dtype) * noise.to(mean.dtype)
    # The sample is a fixed point of the kernel: no gradient flows through it (as in Flow-GRPO).
    log_prob = gaussian_log_prob(prev_sample.detach(), mean, std)
    return StepOutput(prev_sample, mean, std, log_prob)


def sde_step(
    x: Tensor,
    v: Tensor,
    t: TimeLike,
    t_next: TimeLike,
    noise_level: float,
    noise: Tensor | None = None,
    prev_sample: Tensor | None = None,
) -> StepOutput:
    """One Flow-GRPO SDE step (docs/method.md), noise level ``a = noise_level``.

    ``sigma_t = a sqrt(t/(1-t))`` (next grid point in the denominator at t = 1);
    mean ``mu = x - h [v + sigma_t^2/(2t) (x + (1-t) v)]``, evaluated as ``A x - c h v`` with
    ``A = 1 - h sigma_t^2/(2t)`` and ``c`` from :func:`transition_coefficient`; std
    ``s = sigma_t sqrt(h)``; next state ``mu + s z``. ``prev_sample`` given: it is scored
    instead of drawing; else ``noise`` (z) given: it is used; else z is drawn with
    ``torch.randn``. ``a = 0`` reproduces :func:`ode_step` bit for bit (std 0, log_prob None).
    """
    a = float(noise_level)
    if a < 0 or not math.isfinite(a):
        raise ValueError(f"noise_level must be finite and >= 0, got {noise_level!r}")
    dtype = _compute_dtype(x)
    coef_x, coef_v, std = _coefficients(_sde_coefficients, t, t_next, a, x, dtype)
    mean = coef_x * x.to(dtype) - coef_v * v.to(dtype)
    return _kernel_from_mean(mean, _rows(std, x.shape[0]), a > 0, noise, prev_sample)


def _sde_coefficients(tt: Tensor, tn: Tensor, a: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(A, c h, s)`` of the Flow-GRPO kernel (see :func:`sde_step`), float64."""
    h = tt - tn
    sigma = flow_sde_sigma(tt, tn, a)
    coef_x = 1.0 - h * sigma**2 / (2.0 * tt)
    coef_v = transition_coefficient(tt, tn, a) * h
    return coef_x, coef_v, sigma * torch.sqrt(h)


def dance_sde_step(
    x: Tensor,
    v: Tensor,
    t: TimeLike,
    t_next: TimeLike,
    eta: float = 0.3,
    noise: Tensor | None = None,
    prev_sample: Tensor | None = None,
) -> StepOutput:
    """One DanceGRPO SDE step: constant-std kernel ``N(mu, eta^2 h I)``.

    mean ``mu = x - h v - h eta^2/(2t) x1_hat`` with the noise estimate
    ``x1_hat = x + (1-t) v`` (DanceGRPO's ``x + dt v + 1/2 eta^2 score dt``, score
    ``-x1_hat/t``); std ``eta sqrt(h)``. ``noise`` / ``prev_sample`` as in :func:`sde_step`;
    ``eta = 0`` is the Euler ODE step (std 0, log_prob None).
    """
    e = float(eta)
    if e < 0 or not math.isfinite(e):
        raise ValueError(f"eta must be finite and >= 0, got {eta!r}")
    dtype = _compute_dtype(x)
    coef_x, coef_v, std = _coefficients(_dance_coefficients, t, t_next, e, x, dtype)
    mean = coef_x * x.to(dtype) - coef_v * v.to(dtype)
    return _kernel_from_mean(mean, _rows(std, x.shape[0]), e > 0, noise, prev_sample)


def _dance_coefficients(tt: Tensor, tn: Tensor, e: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(coef_x, coef_v, std)`` of the DanceGRPO kernel (see :func:`dance_sde_step`), float64."""
    h = tt - tn
    k = h * e * e / (2.0 * tt)  # weight of x1_hat
    return 1.0 - k, h + k * (1.0 - tt), e * torch.sqrt(h)


@dataclass
class DPMSolverState:
    """State carried between DPM-Solver++(2M) steps: the previous data prediction and its time."""

    x0_hat: Tensor
    t: Tensor  # float64, 0-d or (B,)


def dpm_solver_2m_step(
    x: Tensor,
    v: Tensor,
    t: TimeLike,
    t_next: TimeLike,
    state: DPMSolverState | None = None,
) -> tuple[Tensor, DPMSolverState]:
    """One deterministic DPM-Solver++(2M) step in the flow parameterisation.

    Data prediction ``x0_hat = x - t v``; ``alpha_t = 1 - t``, ``sigma_t = t``,
    ``lambda = log((1-t)/t)``, ``h = lambda(t_next) - lambda(t)``. First-order part
    ``(t_next/t) x + a0 x0_hat`` with ``a0 = (1-t_next)(1 - e^{-h}) =
    (1-t_next) - (1-t) t_next / t`` (finite at both end points; it equals the Euler step);
    second-order correction ``+ a0/(2r) (x0_hat - x0_prev)`` with ``r = h_prev / h``. The
    correction is dropped (first order) where no previous prediction exists, where either
    lambda is infinite (a step from t = 1 or the previous step from t = 1) and on the final step
    to t = 0, which therefore returns ``x0_hat`` exactly (diffusers' ``lower_order_final``).
    """
    dtype = _compute_dtype(x)
    prev = None if state is None else state.t
    if _is_number(t) and _is_number(t_next) and (prev is None or prev.dim() == 0):
        tt, coefs = _cached_dpm_coefficients(
            float(t), float(t_next), None if prev is None else float(prev), dtype, x.device
        )
        t_x, a_x, a_0, coef = coefs
    else:
        tt, tn = _t64(t, x.device), _t64(t_next, x.device)
        _check_steps(tt, tn)
        raw = _dpm_coefficients(tt, tn, None if prev is None else prev.to(x.device))
        t_x, a_x, a_0, coef = (None if c is None else _bcast(c, x, dtype) for c in raw)
    x, v = x.to(dtype), v.to(dtype)
    x0 = x - t_x * v
    out = a_x * x + a_0 * x0
    if coef is not None:
        out = out + coef * (x0 - state.x0_hat.to(dtype))  # type: ignore[union-attr]
    return out, DPMSolverState(x0_hat=x0, t=tt)


def _dpm_coefficients(
    tt: Tensor, tn: Tensor, tp: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(t, a_x, a_0, correction)`` of :func:`dpm_solver_2m_step` (float64); the second-order
    correction is None where it vanishes (no previous step, or every entry dropped)."""
    a_x = tn / tt
    a_0 = (1.0 - tn) - (1.0 - tt) * tn / tt
    coef = None
    if tp is not None:
        lam = lambda s: torch.log1p(-s) - torch.log(s)  # noqa: E731
        lam_t, lam_n, lam_p = lam(tt), lam(tn), lam(tp)
        ok = torch.isfinite(lam_t) & torch.isfinite(lam_n) & torch.isfinite(lam_p)
        h = lam_n - lam_t
        r = torch.where(ok, (lam_t - lam_p) / torch.where(ok, h, 1.0), 1.0)
        c = torch.where(ok, 0.5 * a_0 / r, 0.0)
        if bool((c != 0).any()):
            coef = c
    return tt, a_x, a_0, coef


@functools.lru_cache(maxsize=4096)
def _cached_dpm_coefficients(
    t: float, t_next: float, t_prev: float | None, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """:func:`_dpm_coefficients` of number times: the float64 ``t`` (the next state's) and the
    coefficients cast to ``dtype``, computed once per (t, t_next, t_prev)."""
    tt, tn = _t64(t, device), _t64(t_next, device)
    _check_steps(tt, tn)
    tp = None if t_prev is None else _t64(t_prev, device)
    raw = _dpm_coefficients(tt, tn, tp)
    return tt, tuple(None if c is None else c.to(dtype) for c in raw)
