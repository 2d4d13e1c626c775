"""Rollouts and replays: :func:`rollout` walks the grid with a sampler and records a
:class:`Trajectory` (states, means, stds, log-probabilities); :func:`replay` re-evaluates its
stored transitions, with grad if the caller has it enabled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from opd.sampling.kernels import StepOutput
from opd.sampling.noise import _ids_list, step_noise
from opd.sampling.samplers import Sampler, _resolve_sampler

VelocityFn = Callable[[Tensor, Tensor], Tensor]


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
