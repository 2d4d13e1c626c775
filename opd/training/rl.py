"""Single-task (and multi-task) RL pieces: Flow-GRPO, GRPO-Guard and DiffusionNFT.

Each is a registered :class:`~opd.training.base.Method`. The multi-task and cascade baselines in
``baselines/`` reuse these classes and only change which task each optimizer step draws.

- ``grpo``: groups of G samples per prompt from the Flow-GRPO SDE (a = 0.7), group-normalised
  advantages clipped to +-5, PPO-clipped ratio on element-mean log-probs (on-policy: ratio 1),
  KL to the base model ``||mu - mu_ref||^2 / (2 sigma_t^2)`` with weight ``beta``.
- ``grpo_guard``: the same with GRPO-Guard's two fixes: the log-ratio bias is added back and
  normalised per step (``opd.objectives.guard_log_ratio``) and each step is weighted by 1/h.
- ``nft``: DiffusionNFT: deterministic CFG-free rollouts of the sampling policy ("old"
  adapter), then the positive/negative velocity mixture on fresh forward noisings of the clean
  samples, errors in x0 space normalised by their stop-gradient mean, and a soft update of the
  sampling policy ``old <- eta old + (1 - eta) student`` with ``eta_i = min(0.001 i, 0.5)``.

With ``drop_constant_groups`` (all three), a group whose rewards are all equal carries no signal
and is left out of the loss: the batch mean runs over the other samples only (GRPO: such a group
has zero advantages but would dilute the mean; NFT: its r = 0.5 samples would still pull the
policy), and a batch with no such sample contributes an exact zero gradient.
"""

from __future__ import annotations

import numpy as np
import torch

from opd import calltime
from opd import objectives as obj
from opd.models import PromptEmbeds
from opd.registry import METHODS
from opd.sampling import sde_step
from opd.training.base import STUDENT, Method, keyed_seed
from opd.training.options import GRPOConfig, NFTConfig
from opd.training.rollouts import Batch, forward_noising, roll, sampler_for


class _RLMethod(Method):
    """Shared helpers: which task an iteration trains, advantages, per-task rewards."""

    def tasks_of(self, iteration: int) -> list[str]:
        """Tasks whose batches feed optimizer step ``iteration`` (round-robin by default)."""
        return [self.task_names[iteration % len(self.task_names)]]

    def reward_batch(self, task: str, iteration: int, sampler, guidance: float, adapter: str):
        return roll(
            self,
            task,
            iteration,
            n_prompts=self.cfg.prompts_per_task,
            group_size=self.cfg.group_size,
            sampler=sampler,
            adapter=adapter,
            guidance=guidance,
            score=True,
        )

    def advantages(self, batch: Batch) -> torch.Tensor:
        """Group advantages of the batch's reward; of each scorer, then mixed, when the task's
        ``reward_mix`` is ``normalize_then_sum``."""
        std_mode = getattr(self.cfg, "std_mode", "group")
        groups = torch.as_tensor(batch.groups)
        if batch.reward_parts is not None:
            parts = {
                n: torch.as_tensor(r, dtype=torch.float32) for n, r in batch.reward_parts.items()
            }
            return obj.mixed_group_advantages(
                parts, batch.reward_weights, groups, clip=self.cfg.adv_clip, std_mode=std_mode
            )
        rewards = torch.as_tensor(batch.rewards, dtype=torch.float32)
        return obj.group_advantages(rewards, groups, clip=self.cfg.adv_clip, std_mode=std_mode)

    def kept_mask(self, batch: Batch) -> torch.Tensor:
        """(N,) bool: the samples whose group's rewards are not all equal (with mixed
        advantages: whose group varies in any weighted scorer)."""
        if batch.reward_parts is not None:
            return obj.mixed_nonconstant_mask(
                batch.reward_parts, batch.reward_weights, batch.groups
            )
        return obj.nonconstant_group_mask(torch.as_tensor(batch.rewards), batch.groups)

    def kept(self, batch: Batch) -> tuple[torch.Tensor | None, float]:
        """The samples the loss averages over and the mean's divisor: ``(None, 1)`` (all, the
        plain mean) without ``drop_constant_groups``; else :meth:`kept_mask` and the number of
        kept samples, over all data-parallel processes divided by their number (so that the
        averaged gradient is the mean over every kept sample), or 1 when none is kept."""
        if not self.cfg.drop_constant_groups:
            return None, 1.0
        mask = self.kept_mask(batch)
        count = float(mask.sum())
        if self.ctx.world_size > 1:
            import torch.distributed as dist

            total = torch.tensor([count], dtype=torch.float64, device=self.model.device)
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            count = float(total) / self.ctx.world_size
        return mask, count if count > 0 else 1.0


def kept_mean(loss: torch.Tensor, kept: torch.Tensor | None, divisor: float) -> torch.Tensor:
    """The batch mean of per-sample ``loss``; with a ``kept`` mask, the sum over the kept
    samples divided by ``divisor`` (:meth:`_RLMethod.kept`): exactly 0, with a zero gradient,
    when none is kept."""
    if kept is None:
        return loss.mean()
    kept = kept.to(loss.device)
    return torch.where(kept, loss, torch.zeros_like(loss)).sum() / divisor


def tile_embeds(embeds: PromptEmbeds | torch.Tensor, c: int) -> PromptEmbeds | torch.Tensor:
    """A batch's prompt embeddings ``c`` times over (batch-major tiling, as ``torch.cat``)."""
    if c == 1:
        return embeds
    if isinstance(embeds, PromptEmbeds):
        return PromptEmbeds.cat([embeds] * c)
    return torch.cat([embeds] * c)


def _log_kept(logs: dict[str, float], task: str, kept: torch.Tensor | None) -> None:
    if kept is not None:  # the fraction of the batch that the loss used
        logs[f"{task}/kept"] = int(kept.sum()) / kept.numel()


@METHODS.register("grpo")
class FlowGRPO(_RLMethod):
    """Flow-GRPO on the tasks of the run (one task for a teacher)."""

    Config = GRPOConfig
    guard = False

    def step(self, iteration: int) -> dict[str, float]:
        cfg = self.cfg
        model = self.model
        logs: dict[str, float] = {}
        tasks = self.tasks_of(iteration)
        sampler = sampler_for(cfg.noise_level)
        for task in tasks:
            batch = self.reward_batch(task, iteration, sampler, self.guidance, STUDENT)
            adv = self.advantages(batch)
            kept, divisor = self.kept(batch)
            traj, grid = batch.traj, batch.grid
            times = grid.tolist()
            student_v = model.velocity_fn(
                batch.embeds, guidance_scale=self.guidance, adapter=STUDENT
            )
            ref_v = model.velocity_fn(batch.embeds, guidance_scale=self.guidance, adapter=None)
            total = 0.0
            kl_total = 0.0
            trained = self.trained_steps(iteration, task)
            for j in trained:
                x, x_next = traj.states[j], traj.states[j + 1]
                t, t_next = times[j], times[j + 1]
                v = student_v(x, t)
                out = sde_step(x, v, t, t_next, cfg.noise_level, prev_sample=x_next)
                old = traj.log_probs[j]
                if self.guard:
                    log_ratio = obj.guard_log_ratio(
                        out.log_prob, old, out.mean, traj.means[j], out.std
                    )
                    loss = obj.grpo_clipped_loss_from_log_ratio(log_ratio, adv, cfg.clip_range)
                    loss = loss / (t - t_next)
                else:
                    loss = obj.grpo_clipped_loss(out.log_prob, old, adv, cfg.clip_range)
                if cfg.beta > 0:
                    with torch.no_grad():
                        v_ref = ref_v(x, t)
                        mean_ref = sde_step(x, v_ref, t, t_next, cfg.noise_level).mean
                    sigma_t = out.std / (t - t_next) ** 0.5
                    kl = ((out.mean - mean_ref) ** 2).flatten(1).mean(1) / (2 * sigma_t**2)
                    loss = loss + cfg.beta * kl
                    kl_total += float(kl.detach().mean())
                loss = kept_mean(loss, kept, divisor) / (len(trained) * len(tasks))
                with calltime.timed("backward"):
                    loss.backward()
                total += float(loss.detach())
            logs[f"{task}/reward"] = float(np.mean(batch.rewards))
            logs[f"{task}/loss"] = total
            logs[f"{task}/kl"] = kl_total / len(trained)
            _log_kept(logs, task, kept)
        return logs


@METHODS.register("grpo_guard")
class GRPOGuard(FlowGRPO):
    """GRPO-Guard: de-biased, per-step normalised log-ratio and 1/h step weights."""

    guard = True


@METHODS.register("nft")
class DiffusionNFT(_RLMethod):
    """DiffusionNFT with a soft-updated sampling policy kept as the ``old`` adapter."""

    Config = NFTConfig
    OLD = "nft_old"

    def setup(self) -> None:
        self.model.copy_adapter(STUDENT, self.OLD)
        self.model.set_trainable(STUDENT)

    def step(self, iteration: int) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        b = cfg.beta_mix
        logs: dict[str, float] = {}
        tasks = self.tasks_of(iteration)
        sampler = sampler_for(0.0, cfg.sampler)
        for task in tasks:
            batch = self.reward_batch(task, iteration, sampler, self.guidance, self.OLD)
            adv = self.advantages(batch)
            r = 0.5 + adv.clamp(-cfg.adv_clip, cfg.adv_clip) / (2 * cfg.adv_clip)
            kept, divisor = self.kept(batch)
            x0 = batch.traj.states[-1]
            n = x0.shape[0]
            grid = batch.grid[self.trained_steps(iteration, task)]
            rng = np.random.default_rng(keyed_seed(self.ctx.seed, iteration, task, "nft_t"))
            total = 0.0
            count = cfg.noisings * len(grid)
            times = [
                grid[torch.as_tensor(rng.integers(0, len(grid), size=n))].clamp(1e-3, 1.0)
                for _ in range(count)
            ]
            per_call = cfg.noisings_per_call or count
            for start in range(0, count, per_call):
                ks = range(start, min(start + per_call, count))
                c = len(ks)
                noised = [
                    forward_noising(self, x0, times[k], iteration, task, "nft_eps", k) for k in ks
                ]
                xt = torch.cat([xn for xn, _eps, _tb in noised])
                tb = torch.cat([tbk for _xn, _eps, tbk in noised])
                t = torch.cat([times[k] for k in ks])
                embeds = tile_embeds(batch.embeds, c)
                v = model.velocity(xt, t, embeds, guidance_scale=1.0, adapter=STUDENT)
                with torch.no_grad():
                    v_old = model.velocity(xt, t, embeds, guidance_scale=1.0, adapter=self.OLD)
                    v_ref = model.velocity(xt, t, embeds, guidance_scale=1.0, adapter=None)
                v_pos = (1 - b) * v_old + b * v
                v_neg = (1 + b) * v_old - b * v
                x0c = x0.repeat(c, *([1] * (x0.dim() - 1)))
                loss = 0.0
                for weight, vv in ((r.repeat(c), v_pos), (1 - r.repeat(c), v_neg)):
                    err = (xt - tb * vv) - x0c
                    scale = err.detach().abs().flatten(1).mean(1).clamp_min(1e-6)
                    loss = loss + weight * (err**2).flatten(1).mean(1) / scale
                loss = (5.0 / b) * loss + cfg.reg * ((v - v_ref) ** 2).flatten(1).mean(1)
                # per noising exactly as one call each would weigh it, then summed
                loss = sum(
                    kept_mean(loss[i * n : (i + 1) * n], kept, divisor) for i in range(c)
                ) / (count * len(tasks))
                with calltime.timed("backward"):
                    loss.backward()
                total += float(loss.detach())
            logs[f"{task}/reward"] = float(np.mean(batch.rewards))
            logs[f"{task}/loss"] = total
            _log_kept(logs, task, kept)
        return logs

    @torch.no_grad()
    def after_optimizer_step(self, iteration: int) -> None:
        eta = min(self.cfg.eta_rate * (iteration + 1), self.cfg.eta_max)
        student = dict(self.model.adapter_named_parameters(STUDENT))
        for name, p_old in self.model.adapter_named_parameters(self.OLD):
            p_old.mul_(eta).add_(student[name], alpha=1 - eta)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.adapter_named_parameters(self.OLD)}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.model.adapter_named_parameters(self.OLD):
                p.copy_(tensors[name])
