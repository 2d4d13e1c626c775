"""Time grids, sampler steps, batch-layout-independent noise, rollouts and replays.

Pure tensor functions for the rectified-flow convention ``x_t = (1-t) x0 + t eps`` (t = 1 noise,
t = 0 data, the network predicts ``v ~ eps - x0``) used by every algorithm of the suite:
:mod:`~opd.sampling.kernels` (the shifted SD3 grid, the Euler ODE step, the Flow-GRPO SDE step,
the DanceGRPO SDE step, DPM-Solver++(2M), Gaussian log-densities averaged over the non-batch
elements as Flow-GRPO does unless ``reduce="sum"``), :mod:`~opd.sampling.samplers` (sampler
objects registered in :data:`opd.registry.SAMPLERS`), :mod:`~opd.sampling.noise` (per-sample
noise keyed by (seed, step, sample id)) and :mod:`~opd.sampling.trajectory` (:func:`rollout`
and :func:`replay`). Every public name is importable from ``opd.sampling``.
"""

from opd.sampling.kernels import (
    DPMSolverState,
    StepOutput,
    dance_sde_step,
    dpm_solver_2m_step,
    flow_sde_sigma,
    gaussian_log_prob,
    ode_step,
    sde_step,
    time_grid,
    transition_coefficient,
)
from opd.sampling.noise import step_noise
from opd.sampling.samplers import (
    DanceSDESampler,
    DPMSolver2MSampler,
    FlowSDESampler,
    ODESampler,
    Sampler,
    make_sampler,
)
from opd.sampling.trajectory import ReplayOutput, Trajectory, replay, rollout

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
