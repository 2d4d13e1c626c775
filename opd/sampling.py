"""Time grids, sampler steps, batch-layout-independent noise, rollouts and replays.

Pure tensor functions for the rectified-flow convention ``x_t = (1-t) x0 + t eps`` (t = 1 noise,
t = 0 data, the network predicts ``v ~ eps - x0``) used by every algorithm of the suite: the
shifted SD3 grid, the Euler ODE step, the Flow-GRPO SDE step (noise level ``a``; ``a = 0`` is the
ODE), the DanceGRPO SDE step, a deterministic multistep DPM-Solver++(2M), sampler objects
registered in :data:`opd.registry.SAMPLERS` (``ode``, ``flow_sde``, ``dance_sde``, ``dpm2m``),
per-sample noise keyed by (seed, step, sample id) so that a sample never depends on the batch it
was drawn in, :func:`rollout` (walks the grid and records a :class:`Trajectory`) and
:func:`replay` (re-evaluates the stored transitions, with grad if the caller has it enabled).
Coefficients are computed in float64 from ``t`` and cast to the compute dtype, which is the
input dtype promoted to at least float32; log-probabilities are Gaussian log-densities averaged
over the non-batch elements (Flow-GRPO's convention) unless ``reduce="sum"`` is asked for.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from opd.registry import SAMPLERS

__all__ = [
    "DPMSolver2MSampler",
    "DPMSolverState",
    "DanceSDESampler",
    "FlowSDESampler",
    "ODESampler",
    "ReplayOutput",
    "Sampler",
    "StepOutput",
    "Trajectory",
    "dance_sde_step",
    "dpm_solver_2m_step",
    "flow_sde_sigma",
    "gaussian_log_prob",
    "make_sampler",
    "ode_step",
    "replay",
    "rollout",
    "sde_step",
    "step_noise",
    "time_grid",
    "transition_coefficient",
]

TimeLike = float | Tensor
VelocityFn = Callable[[Tensor, Tensor], Tensor]
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


# --------------------------------------------------------------------------------------------
# sampler objects
# --------------------------------------------------------------------------------------------
class Sampler(Protocol):
    """Common sampler interface.

    ``step`` returns ``(StepOutput, new_state)``; ``new_state`` is ``None`` for single-step
    samplers and must be passed back as ``state=`` on the next step for multistep ones.
    """

    name: str
    stochastic: bool
    noise_level: float
    multistep: bool

    def step(
        self,
        x: Tensor,
        v: Tensor,
        t: TimeLike,
        t_next: TimeLike,
        *,
        noise: Tensor | None = None,
        prev_sample: Tensor | None = None,
        state: Any = None,
    ) -> tuple[StepOutput, Any]: ...


@SAMPLERS.register("ode")
@dataclass
class ODESampler:
    """Deterministic Euler ODE sampler (``noise_level`` 0; log_prob None)."""

    name: str = field(default="ode", init=False)
    stochastic: bool = field(default=False, init=False)
    noise_level: float = field(default=0.0, init=False)
    multistep: bool = field(default=False, init=False)

    def step(
        self,
        x: Tensor,
        v: Tensor,
        t: TimeLike,
        t_next: TimeLike,
        *,
        noise: Tensor | None = None,
        prev_sample: Tensor | None = None,
        state: Any = None,
    ) -> tuple[StepOutput, Any]:
        mean = ode_step(x, v, t, t_next)
        std = torch.zeros(x.shape[0], dtype=mean.dtype, device=x.device)
        return StepOutput(mean, mean, std, None), None


@SAMPLERS.register("flow_sde")
@dataclass
class FlowSDESampler:
    """Flow-GRPO SDE sampler with noise level ``a`` (:func:`sde_step`); ``a = 0`` is the ODE."""

    noise_level: float = 0.7
    name: str = field(default="flow_sde", init=False)
    multistep: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {self.noise_level}")

    @property
    def stochastic(self) -> bool:
        return self.noise_level > 0

    def step(
        self,
        x: Tensor,
        v: Tensor,
        t: TimeLike,
        t_next: TimeLike,
        *,
        noise: Tensor | None = None,
        prev_sample: Tensor | None = None,
        state: Any = None,
    ) -> tuple[StepOutput, Any]:
        out = sde_step(x, v, t, t_next, self.noise_level, noise=noise, prev_sample=prev_sample)
        return out, None


@SAMPLERS.register("dance_sde")
@dataclass
class DanceSDESampler:
    """DanceGRPO SDE sampler (:func:`dance_sde_step`); ``noise_level`` is ``eta``."""

    eta: float = 0.3
    name: str = field(default="dance_sde", init=False)
    multistep: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")

    @property
    def noise_level(self) -> float:
        return self.eta

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def step(
        self,
        x: Tensor,
        v: Tensor,
        t: TimeLike,
        t_next: TimeLike,
        *,
        noise: Tensor | None = None,
        prev_sample: Tensor | None = None,
        state: Any = None,
    ) -> tuple[StepOutput, Any]:
        out = dance_sde_step(x, v, t, t_next, self.eta, noise=noise, prev_sample=prev_sample)
        return out, None


@SAMPLERS.register("dpm2m")
@dataclass
class DPMSolver2MSampler:
    """Deterministic multistep DPM-Solver++(2M) (:func:`dpm_solver_2m_step`); carries state."""

    name: str = field(default="dpm2m", init=False)
    stochastic: bool = field(default=False, init=False)
    noise_level: float = field(default=0.0, init=False)
    multistep: bool = field(default=True, init=False)

    def step(
        self,
        x: Tensor,
        v: Tensor,
        t: TimeLike,
        t_next: TimeLike,
        *,
        noise: Tensor | None = None,
        prev_sample: Tensor | None = None,
        state: Any = None,
    ) -> tuple[StepOutput, Any]:
        nxt, new_state = dpm_solver_2m_step(x, v, t, t_next, state)
        std = torch.zeros(x.shape[0], dtype=nxt.dtype, device=x.device)
        return StepOutput(nxt, nxt, std, None), new_state


def make_sampler(name: str, **params: Any) -> Sampler:
    """Build the sampler registered as ``name``: ``make_sampler("flow_sde", noise_level=0.7)``."""
    return SAMPLERS.get(name)(**params)


def _resolve_sampler(sampler: Sampler | str) -> Sampler:
    return make_sampler(sampler) if isinstance(sampler, str) else sampler


# --------------------------------------------------------------------------------------------
# noise keyed by (seed, step, sample id)
# --------------------------------------------------------------------------------------------
_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _noise_key(seed: int, step: int, sample_id: int) -> int:
    z = _splitmix64(int(seed) & _MASK64)
    z = _splitmix64(z ^ (int(step) & _MASK64))
    z = _splitmix64(z ^ (int(sample_id) & _MASK64))
    return z & ((1 << 63) - 1)


def _ids_list(sample_ids: Sequence[int] | Tensor) -> list[int]:
    if isinstance(sample_ids, Tensor):
        return [int(i) for i in sample_ids.reshape(-1).tolist()]
    return [int(i) for i in sample_ids]


def step_noise(
    seed: int,
    step: int,
    sample_ids: Sequence[int] | Tensor,
    shape: tuple[int, ...],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of shape (B, *shape), row i keyed by (seed, step, sample_ids[i]).

    Each row comes from its own CPU ``torch.Generator`` seeded with a splitmix64 mix of the
    three integers (no Python ``hash``), drawn in float32 and then moved to ``device`` / cast to
    ``dtype``: a sample's noise is the same in any batch and on any device. The initial state of
    a rollout uses ``step = -1``.
    """
    rows = []
    for sid in _ids_list(sample_ids):
        g = torch.Generator(device="cpu")
        g.manual_seed(_noise_key(seed, step, sid))
        rows.append(torch.randn(tuple(shape), generator=g, dtype=torch.float32))
    if not rows:
        return torch.empty((0, *shape), device=device, dtype=dtype)
    return torch.stack(rows).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------
# trajectories
# --------------------------------------------------------------------------------------------
@dataclass
class Trajectory:
    """A recorded rollout over the grid ``timesteps`` (N+1,).

    ``states`` (N+1, B, ...) with ``states[j]`` the state at ``t_j`` (with ``record=False`` only
    the initial and final states are kept: shape (2, B, ...), and ``means`` is None); ``means``
    (N, B, ...); ``stds`` (N, B) (0 on deterministic steps); ``log_probs`` (N, B) element-mean
    log-probs of ``states[j+1]`` (NaN on deterministic steps), or None when no step was
    stochastic; ``sample_ids`` (B,) int64; ``seed`` the noise seed.
    """

    states: Tensor
    means: Tensor | None
    stds: Tensor
    log_probs: Tensor | None
    timesteps: Tensor
    sample_ids: Tensor
    seed: int

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0]) - 1

    @property
    def batch_size(self) -> int:
        return int(self.states.shape[1])

    @property
    def recorded(self) -> bool:
        """Whether every intermediate state is stored (needed by :func:`replay`)."""
        return int(self.states.shape[0]) == self.num_steps + 1

    @property
    def final(self) -> Tensor:
        """The final state ``x_{t_N}`` (B, ...)."""
        return self.states[-1]

    def to(self, device: torch.device | str) -> Trajectory:
        """A copy with every tensor moved to ``device``."""
        return self._replace(lambda x: x.to(device))

    def detach(self) -> Trajectory:
        """A copy with every tensor detached from the autograd graph."""
        return self._replace(lambda x: x.detach())

    def _replace(self, fn: Callable[[Tensor], Tensor]) -> Trajectory:
        return Trajectory(
            states=fn(self.states),
            means=None if self.means is None else fn(self.means),
            stds=fn(self.stds),
            log_probs=None if self.log_probs is None else fn(self.log_probs),
            timesteps=fn(self.timesteps),
            sample_ids=fn(self.sample_ids),
            seed=self.seed,
        )

    def index(self, batch_idx: int | slice | Sequence[int] | Tensor) -> Trajectory:
        """The sub-trajectory of the selected samples (an int keeps the batch dimension)."""
        if isinstance(batch_idx, int):
            batch_idx = slice(batch_idx, batch_idx + 1 if batch_idx != -1 else None)
        elif not isinstance(batch_idx, slice | Tensor):
            batch_idx = torch.as_tensor(list(batch_idx), dtype=torch.long)
        if isinstance(batch_idx, Tensor):
            batch_idx = batch_idx.to(self.states.device)
        ids_idx = batch_idx.cpu() if isinstance(batch_idx, Tensor) else batch_idx

        def sel(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[:, batch_idx]

        return Trajectory(
            states=self.states[:, batch_idx],
            means=sel(self.means),
            stds=self.stds[:, batch_idx],
            log_probs=sel(self.log_probs),
            timesteps=self.timesteps,
            sample_ids=self.sample_ids.cpu()[ids_idx].to(self.sample_ids.device),
            seed=self.seed,
        )

    __getitem__ = index

    @staticmethod
    def cat(trajs: Sequence[Trajectory]) -> Trajectory:
        """Concatenate trajectories over the batch (same grid; the first one's seed is kept)."""
        if not trajs:
            raise ValueError("nothing to concatenate")
        first = trajs[0]
        for tr in trajs[1:]:
            if not torch.equal(tr.timesteps.cpu(), first.timesteps.cpu()):
                raise ValueError("trajectories on different grids cannot be concatenated")

        def cat_opt(xs: list[Tensor | None]) -> Tensor | None:
            if any(x is None for x in xs):
                return None
            return torch.cat(xs, dim=1)  # type: ignore[arg-type]

        return Trajectory(
            states=torch.cat([tr.states for tr in trajs], dim=1),
            means=cat_opt([tr.means for tr in trajs]),
            stds=torch.cat([tr.stds for tr in trajs], dim=1),
            log_probs=cat_opt([tr.log_probs for tr in trajs]),
            timesteps=first.timesteps,
            sample_ids=torch.cat([tr.sample_ids for tr in trajs]),
            seed=first.seed,
        )


def rollout(
    velocity_fn: VelocityFn,
    shape: Sequence[int],
    grid: Tensor,
    sampler: Sampler | str,
    seed: int,
    sample_ids: Sequence[int] | Tensor,
    *,
    x_init: Tensor | None = None,
    grad: bool = False,
    record: bool = True,
    device: torch.device | str | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
    final_sampler: Sampler | str | None = None,
) -> Trajectory:
    """Walk ``grid`` from ``t_0 = 1`` to ``t_N = 0`` with ``sampler`` and record the trajectory.

    ``shape`` is the per-sample state shape (C, H, W); the batch is ``B = len(sample_ids)``.
    ``velocity_fn(x, t)`` gets the (B, C, H, W) state and a (B,) float32 time tensor (CFG is the
    closure's business). The initial state is ``step_noise(seed, -1, sample_ids, shape)`` unless
    ``x_init`` is given; step j of a stochastic sampler uses ``step_noise(seed, j, ...)``, so a
    sample's trajectory does not depend on the batch it is in; the sampler's ``step`` gets the
    grid times as Python floats (its coefficients are then cached across steps and rollouts,
    with the same values as for (B,) tensors). Runs under ``torch.no_grad()``
    unless ``grad=True``. ``callback(j, x_next)`` is called after every step. ``device``
    defaults to ``x_init``'s device, else the CPU. ``final_sampler`` (e.g. ``"ode"``) takes
    the last step ``t_{N-1} -> 0`` instead of ``sampler`` (it gets the multistep state; noise is
    drawn only if it is stochastic): the earlier states are those of ``sampler`` alone, bit for
    bit, and a deterministic last step records std 0 and a NaN log-prob. :func:`replay` knows
    nothing of it: do not replay the last step of such a trajectory with ``sampler``.
    """
    sampler = _resolve_sampler(sampler)
    last = sampler if final_sampler is None else _resolve_sampler(final_sampler)
    ids = torch.as_tensor(_ids_list(sample_ids), dtype=torch.long)
    shape = (int(ids.shape[0]), *(int(s) for s in shape))
    if grid.dim() != 1 or grid.shape[0] < 2:
        raise ValueError("grid must be a 1-d tensor of at least two times")
    if device is None:
        device = x_init.device if x_init is not None else torch.device("cpu")
    if x_init is None:
        x = step_noise(seed, -1, ids, shape[1:], device=device)
    else:
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init shape {tuple(x_init.shape)} != {shape}")
        x = x_init.to(device)
    grid = grid.to(device=device, dtype=torch.float32)
    n, b = grid.shape[0] - 1, shape[0]
    times = grid.tolist()  # the sampler gets Python numbers: its coefficients are cached
    no_log_prob = torch.full((b,), float("nan"), device=device)

    states, means, stds, logps = [x], [], [], []
    any_stochastic = False
    state: Any = None
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        for j in range(n):
            v = velocity_fn(x, grid[j].expand(b))
            step = last if j == n - 1 else sampler
            noise = None
            if step.stochastic:
                noise = step_noise(seed, j, ids, shape[1:], device=device, dtype=x.dtype)
            out, state = step.step(x, v, times[j], times[j + 1], noise=noise, state=state)
            x = out.prev_sample
            if record:
                states.append(x)
                means.append(out.mean)
            stds.append(out.std)
            if out.log_prob is None:
                logps.append(no_log_prob)
            else:
                any_stochastic = True
                logps.append(out.log_prob.to(torch.float32))
            if callback is not None:
                callback(j, x)
    if not record:
        states.append(x)
    return Trajectory(
        states=torch.stack(states),
        means=torch.stack(means) if record and means else None,
        stds=torch.stack(stds),
        log_probs=torch.stack(logps) if any_stochastic else None,
        timesteps=grid,
        sample_ids=ids.to(device),
        seed=int(seed),
    )


@dataclass
class ReplayOutput:
    """Re-evaluated transitions, stacked over the requested steps in the order given.

    ``means`` (S, B, ...), ``log_probs`` (S, B) element-mean log-probs of the stored next
    states (None if the sampler is deterministic), ``stds`` (S, B), ``velocities`` (S, B, ...).
    """

    means: Tensor
    log_probs: Tensor | None
    stds: Tensor
    velocities: Tensor


def replay(
    velocity_fn: VelocityFn,
    traj: Trajectory,
    sampler: Sampler | str,
    steps: Sequence[int] | None = None,
) -> ReplayOutput:
    """Recompute the kernels of stored transitions with the current ``velocity_fn``.

    For each step j (default: all), ``velocity_fn`` is evaluated at the stored state
    ``traj.states[j]`` and the sampler gives the transition mean / std and the log-prob of the
    stored ``traj.states[j + 1]`` (``prev_sample=``). Grad follows the caller's grad mode (no
    ``no_grad`` here). Multistep samplers (``dpm2m``) are replayed from step 0 up to the last
    requested step so that their state is rebuilt with the current weights.
    """
    sampler = _resolve_sampler(sampler)
    if not traj.recorded:
        raise ValueError("replay needs a trajectory recorded with record=True")
    n, b = traj.num_steps, traj.batch_size
    steps = list(range(n)) if steps is None else [int(j) for j in steps]
    if not steps:
        raise ValueError("no steps to replay")
    for j in steps:
        if not 0 <= j < n:
            raise ValueError(f"step {j} outside [0, {n})")
    grid = traj.timesteps
    times = grid.tolist()
    results: dict[int, tuple[StepOutput, Tensor]] = {}
    todo = range(max(steps) + 1) if sampler.multistep else sorted(set(steps))
    state: Any = None
    for j in todo:
        x = traj.states[j]
        v = velocity_fn(x, grid[j].expand(b))
        out, state = sampler.step(
            x, v, times[j], times[j + 1], prev_sample=traj.states[j + 1], state=state
        )
        results[j] = (out, v)
    log_probs = None
    if sampler.stochastic:
        log_probs = torch.stack([results[j][0].log_prob for j in steps])  # type: ignore[misc]
    return ReplayOutput(
        means=torch.stack([results[j][0].mean for j in steps]),
        log_probs=log_probs,
        stds=torch.stack([results[j][0].std for j in steps]),
        velocities=torch.stack([results[j][1] for j in steps]),
    )
