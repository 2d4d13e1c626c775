"""Sampler objects, registered in :data:`opd.registry.SAMPLERS` (``ode``, ``flow_sde``,
``dance_sde``, ``dpm2m``): each wraps one kernel of :mod:`opd.sampling.kernels` behind the
common ``step`` interface that :func:`opd.sampling.rollout` walks the grid with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from opd.registry import SAMPLERS
from opd.sampling.kernels import (
    StepOutput,
    TimeLike,
    dance_sde_step,
    dpm_solver_2m_step,
    ode_step,
    sde_step,
)


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


class _OneStepSDE:
    """The step of the one-step SDE samplers: their ``kernel`` at ``noise_level``, no state."""

    kernel: Any
    noise_level: float

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
        out = self.kernel(x, v, t, t_next, self.noise_level, noise=noise, prev_sample=prev_sample)
        return out, None


@SAMPLERS.register("flow_sde")
@dataclass
class FlowSDESampler(_OneStepSDE):
    """Flow-GRPO SDE sampler with noise level ``a`` (:func:`sde_step`); ``a = 0`` is the ODE."""

    noise_level: float = 0.7
    name: str = field(default="flow_sde", init=False)
    multistep: bool = field(default=False, init=False)

    kernel = staticmethod(sde_step)

    def __post_init__(self) -> None:
        if self.noise_level < 0:
            raise ValueError(f"noise_level must be >= 0, got {self.noise_level}")


@SAMPLERS.register("dance_sde")
@dataclass
class DanceSDESampler(_OneStepSDE):
    """DanceGRPO SDE sampler (:func:`dance_sde_step`); ``noise_level`` is ``eta``."""

    eta: float = 0.3
    name: str = field(default="dance_sde", init=False)
    multistep: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")

    kernel = staticmethod(dance_sde_step)

    @property
    def noise_level(self) -> float:
        return self.eta


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
