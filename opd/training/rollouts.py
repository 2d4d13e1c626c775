"""Rollouts of a batch of one task's prompts, shared by every method.

A :class:`Batch` bundles the prompts, their embeddings, the sampled trajectory, the decoded
images and (optionally) the task reward. Rollout noise is keyed by (seed, iteration, task,
stream), and the model evaluations are counted on the run's compute counter.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from opd.sampling import Trajectory, make_sampler, rollout, step_noise, time_grid
from opd.training.base import Method, keyed_seed


@dataclasses.dataclass
class Batch:
    task: str
    prompts: list[str]
    metadata: list[dict[str, Any]]
    groups: np.ndarray
    embeds: Any
    traj: Trajectory
    grid: torch.Tensor
    images: np.ndarray | None = None
    rewards: np.ndarray | None = None
    # reward_mix normalize_then_sum: each scorer's values and the weights that mix them
    reward_parts: dict[str, np.ndarray] | None = None
    reward_weights: dict[str, float] | None = None


def sampler_for(noise_level: float, name: str | None = None) -> Any:
    """The Flow-GRPO SDE sampler at ``noise_level`` (0 is the Euler ODE) or a named one."""
    if name is not None:
        return make_sampler(name)
    return (
        make_sampler("flow_sde", noise_level=noise_level)
        if noise_level > 0
        else make_sampler("ode")
    )


def roll(
    method: Method,
    task: str,
    iteration: int,
    *,
    n_prompts: int,
    group_size: int = 1,
    sampler: Any,
    adapter: str | None,
    guidance: float,
    stream: str = "rollout",
    score: bool = False,
    decode: bool | None = None,
    num_steps: int | None = None,
) -> Batch:
    """Sample ``n_prompts`` x ``group_size`` trajectories of ``task`` with ``adapter`` (no grad);
    the last step is the method's :attr:`~opd.training.base.Method.final_sampler`."""
    ctx = method.ctx
    model = ctx.model
    prompts, metadata, groups = ctx.sample_prompts(task, n_prompts, iteration, group_size)
    ids = np.arange(len(prompts))
    if ctx.world_size > 1:  # data parallel: this process takes whole groups, global sample ids
        if n_prompts % ctx.world_size:
            raise ValueError(
                f"prompts_per_task ({n_prompts}) must be divisible by the number of "
                f"processes ({ctx.world_size})"
            )
        keep = groups % ctx.world_size == ctx.rank
        ids = ids[keep]
        prompts = [prompts[i] for i in ids]
        metadata = [metadata[i] for i in ids]
        groups = groups[keep]
    embeds = ctx.embed(prompts)
    steps = num_steps or method.num_steps
    grid = time_grid(steps, shift=method.shift)
    n = len(prompts)
    seed = keyed_seed(ctx.seed, iteration, task, stream) % (2**62)
    with torch.no_grad():
        traj = rollout(
            model.velocity_fn(embeds, guidance_scale=guidance, adapter=adapter),
            model.latent_shape(n)[1:],
            grid,
            sampler,
            seed,
            ids.tolist(),
            device=model.device,
            final_sampler=method.final_sampler,
        )
    ctx.compute.samples += n
    batch = Batch(task, prompts, metadata, groups, embeds, traj, grid)
    if score or decode:
        batch.images = model.decode(traj.states[-1])
    if score:  # a NaN / Inf reward names the task and the (1-based) step, as metrics.csv does
        where = f"task {task!r} at step {iteration + 1}"
        try:
            reward = ctx.tasks[task].reward
            if getattr(reward, "mode", "sum") == "normalize_then_sum":
                batch.reward_parts = reward.parts(batch.images, prompts, metadata)
                batch.reward_weights = dict(reward.weights)
                rewards = reward.total(batch.reward_parts)
            else:
                rewards = np.asarray(reward(batch.images, prompts, metadata), float)
        except FloatingPointError as err:
            raise FloatingPointError(f"non-finite reward for {where}: {err}") from err
        if not np.all(np.isfinite(rewards)):
            raise FloatingPointError(f"non-finite reward for {where}")
        batch.rewards = rewards
    return batch


def forward_noising(
    method: Method,
    x0: torch.Tensor,
    t: torch.Tensor,
    iteration: int,
    task: str,
    stream: str,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fresh noising ``x_t = (1 - t) x0 + t eps`` of clean samples (NFT, SFT): ``(x_t, eps, t)``
    with ``t`` broadcast over the sample dims; ``eps`` keyed by (seed, iteration, task, stream)
    and draw ``k``, one generator per sample."""
    seed = keyed_seed(method.ctx.seed, iteration, task, stream) % (2**62)
    eps = step_noise(seed, k, list(range(x0.shape[0])), tuple(x0.shape[1:]), device=x0.device)
    tb = t.to(x0.device).view(-1, *([1] * (x0.dim() - 1)))
    return (1 - tb) * x0 + tb * eps, eps, tb
