"""Weighted-sum multi-reward RL (Flow-GRPO style) with GRPO-Guard updates.

Every step draws prompts of every task; each sample is scored by every reward that applies to
it (its own task's reward and the ``universal`` ones, defined on any prompt) and the rewards
are combined with ``weights``: ``sum_then_normalize`` sums raw rewards then forms group
advantages; ``normalize_then_sum`` forms each reward's group advantages then sums them
(TRL's switch).
"""

import numpy as np
import torch

from baselines._configs import WeightedSumConfig
from opd import objectives as obj
from opd.registry import METHODS
from opd.training.rl import GRPOGuard


@METHODS.register("weighted_sum_rl")
class WeightedSumRL(GRPOGuard):
    Config = WeightedSumConfig

    def tasks_of(self, iteration: int) -> list[str]:
        return list(self.task_names)

    def reward_batch(self, task, iteration, sampler, guidance, adapter):
        batch = super().reward_batch(task, iteration, sampler, guidance, adapter)
        names = [task, *[u for u in self.cfg.universal if u != task]]
        self._parts = {
            name: np.asarray(
                self.ctx.tasks[name].reward(batch.images, batch.prompts, batch.metadata), float
            )
            for name in names
        }
        w = self.cfg.weights
        batch.rewards = sum(w.get(n, 0.0) * r for n, r in self._parts.items())
        batch.reward_parts = None  # its own mode mixes the tasks' rewards, each taken whole
        return batch

    def advantages(self, batch):
        if self.cfg.mode == "sum_then_normalize":
            return super().advantages(batch)
        parts = {n: torch.as_tensor(r, dtype=torch.float32) for n, r in self._parts.items()}
        return obj.mixed_group_advantages(
            parts, self.cfg.weights, torch.as_tensor(batch.groups), clip=self.cfg.adv_clip
        )

    def kept_mask(self, batch):
        """``drop_constant_groups``: the summed reward's non-constant groups; with
        ``normalize_then_sum``, those where any one reward varies (its advantages are not 0)."""
        weighted = any(self.cfg.weights.get(n, 0.0) != 0 for n in self._parts)
        if self.cfg.mode == "sum_then_normalize" or not weighted:
            return super().kept_mask(batch)
        return obj.mixed_nonconstant_mask(self._parts, self.cfg.weights, batch.groups)
