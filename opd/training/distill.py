"""DiffusionOPD and its distillation ablations as registered methods.

- ``opd`` (the method): round-robin over tasks within one optimizer step; for each task the
  *student* rolls out its own trajectories (no grad, student CFG), the frozen teacher of that
  task gives its transition mean at the same student states (teacher CFG), and the per-step
  loss is the closed-form KL (SDE, noise level a > 0) or the mean-matching ODE loss (a = 0, the
  default) on the first ``train_steps`` steps. Hard routing, no reward, no KL to the base.
- ``opd_ppo``: the PPO-style estimator of the same objective (advantage = -KL, not detached).
- ``opd_logratio``: the LLM-style estimator, REINFORCE on the sampled log-ratio.
- ``sft_distill``: off-policy SFT: the student learns flow matching on teacher samples.
"""

from __future__ import annotations

import numpy as np
import torch

from opd import calltime
from opd import objectives as obj
from opd.registry import METHODS
from opd.sampling import gaussian_log_prob, sde_step
from opd.training.base import STUDENT, Method, keyed_seed
from opd.training.options import OPDConfig, OPDPPOConfig, SFTConfig
from opd.training.rl import tile_embeds
from opd.training.rollouts import forward_noising, roll, sampler_for


@METHODS.register("opd")
class DiffusionOPD(Method):
    """On-policy distillation from per-task teachers (the paper's method)."""

    Config = OPDConfig
    needs_teachers = True

    def setup(self) -> None:
        missing = [t for t in self.task_names if t not in self.ctx.teachers]
        if missing:
            raise FileNotFoundError(
                f"{type(self).__name__} needs a teacher adapter for task(s) {missing}"
            )

    def per_step_loss(self, out_s, mean_t, std, log_prob_t) -> torch.Tensor:
        """Per-sample loss of one step (overridden by the estimator ablations)."""
        return obj.opd_loss(out_s.mean, mean_t, std if self.cfg.noise_level > 0 else None)

    def step(self, iteration: int) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        a = cfg.noise_level
        sampler = sampler_for(a)
        logs: dict[str, float] = {}
        for task in self.task_names:
            batch = roll(
                self,
                task,
                iteration,
                n_prompts=cfg.prompts_per_task,
                sampler=sampler,
                adapter=STUDENT,
                guidance=self.guidance,
            )
            teacher = self.ctx.teachers[task]
            g_t = self.ctx.tasks[task].teacher_guidance
            traj, n = batch.traj, len(batch.prompts)
            times = batch.grid.tolist()
            steps = list(self.trained_steps(iteration, task))
            per_call = cfg.steps_per_call or len(steps)
            calls: dict[int, tuple] = {}  # stack size -> (teacher, student) closures
            total = 0.0
            for start in range(0, len(steps), per_call):
                js = steps[start : start + per_call]
                c = len(js)
                x = torch.cat([traj.states[j] for j in js])
                x_next = torch.cat([traj.states[j + 1] for j in js]) if a > 0 else None
                # one step alone keeps Python-number times (the samplers' cached coefficients)
                t: float | torch.Tensor = times[js[0]]
                t_next: float | torch.Tensor = times[js[0] + 1]
                if c > 1:
                    t, t_next = (
                        torch.tensor(
                            [times[j + d] for j in js], dtype=torch.float64
                        ).repeat_interleave(n)
                        for d in (0, 1)
                    )
                if c not in calls:
                    embeds = tile_embeds(batch.embeds, c)
                    calls[c] = (
                        model.velocity_fn(embeds, guidance_scale=g_t, adapter=teacher),
                        model.velocity_fn(embeds, guidance_scale=self.guidance, adapter=STUDENT),
                    )
                teacher_v, student_v = calls[c]
                with torch.no_grad():
                    v_t = teacher_v(x, t)
                    out_t = sde_step(x, v_t, t, t_next, a, prev_sample=x_next)
                v_s = student_v(x, t)
                out_s = sde_step(x, v_s, t, t_next, a, prev_sample=x_next)
                loss = self.per_step_loss(out_s, out_t.mean, out_s.std, out_t.log_prob)
                # each step's batch mean, as one call per step weighs it, then summed
                loss = loss.reshape(c, n).mean(1).sum() / len(self.task_names)
                with calltime.timed("backward"):
                    loss.backward()
                total += float(loss.detach())
            logs[f"{task}/loss"] = total
        return logs


@METHODS.register("opd_ppo")
class OPDPPO(DiffusionOPD):
    """PPO-style estimator of the OPD objective (paper Sec. 3.3), the closed form's ablation."""

    Config = OPDPPOConfig

    def per_step_loss(self, out_s, mean_t, std, log_prob_t) -> torch.Tensor:
        x_next = out_s.prev_sample
        reduce = self.cfg.log_prob
        logp = gaussian_log_prob(x_next, out_s.mean, out_s.std, reduce=reduce)
        kl = obj.opd_loss(out_s.mean, mean_t, std)
        if reduce == "sum":
            kl = kl * out_s.mean[0].numel()
        return obj.ppo_opd_surrogate(logp, logp.detach(), kl, self.cfg.clip_range)


@METHODS.register("opd_logratio")
class OPDLogRatio(DiffusionOPD):
    """LLM-style estimator: REINFORCE on the sampled per-step log-ratio log p_T - log p_S."""

    Config = OPDPPOConfig

    def per_step_loss(self, out_s, mean_t, std, log_prob_t) -> torch.Tensor:
        x_next = out_s.prev_sample
        reduce = self.cfg.log_prob
        logp_s = gaussian_log_prob(x_next, out_s.mean, out_s.std, reduce=reduce)
        logp_t = gaussian_log_prob(x_next, mean_t, out_s.std, reduce=reduce)
        return obj.logratio_reinforce(logp_s, logp_t)


@METHODS.register("sft_distill")
class SFTDistill(Method):
    """Off-policy distillation: flow matching on the teachers' own ODE samples."""

    Config = SFTConfig
    needs_teachers = True

    def setup(self) -> None:
        DiffusionOPD.setup(self)  # type: ignore[arg-type]

    def step(self, iteration: int) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        logs: dict[str, float] = {}
        for task in self.task_names:
            teacher = self.ctx.teachers[task]
            batch = roll(
                self,
                task,
                iteration,
                n_prompts=cfg.prompts_per_task,
                group_size=cfg.samples_per_prompt,
                sampler=sampler_for(0.0),
                adapter=teacher,
                guidance=self.ctx.tasks[task].teacher_guidance,
                stream="teacher",
            )
            x0 = batch.traj.states[-1]
            n = x0.shape[0]
            rng = np.random.default_rng(keyed_seed(self.ctx.seed, iteration, task, "sft_t"))
            total = 0.0
            for k in range(cfg.noisings):
                t = torch.as_tensor(rng.uniform(0.0, 1.0, size=n), dtype=torch.float32)
                xt, eps, _tb = forward_noising(self, x0, t, iteration, task, "sft_eps", k)
                v = model.velocity(xt, t, batch.embeds, guidance_scale=1.0, adapter=STUDENT)
                loss = ((v - (eps - x0)) ** 2).flatten(1).mean(1).mean()
                loss = loss / (cfg.noisings * len(self.task_names))
                with calltime.timed("backward"):
                    loss.backward()
                total += float(loss.detach())
            logs[f"{task}/loss"] = total
        return logs
