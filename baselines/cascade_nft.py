"""Cascade RL with DiffusionNFT: single-task stages in sequence on one model.

The default schedule follows DiffusionNFT's published one (Pick-a-Pic 800 -> GenEval 300 ->
Pick-a-Pic 200 -> GenEval 200 -> OCR 100 iterations), in the same proportions. Each stage's
optimizer steps are recorded with the stage label ``<k>:<task>`` so that retention curves can
mark the stage boundaries, and each stage's last step is checkpointed (and so evaluated).
"""

import numpy as np

from baselines._configs import CascadeNFTConfig
from opd.registry import METHODS
from opd.training.rl import DiffusionNFT


@METHODS.register("cascade_nft")
class CascadeNFT(DiffusionNFT):
    Config = CascadeNFTConfig

    def _stage(self, iteration: int) -> tuple[int, str]:
        end = 0
        for k, stage in enumerate(self.cfg.schedule):
            end += int(stage["steps"])
            if iteration < end:
                return k, stage["task"]
        return len(self.cfg.schedule) - 1, self.cfg.schedule[-1]["task"]

    def tasks_of(self, iteration: int) -> list[str]:
        return [self._stage(iteration)[1]]

    def checkpoint_steps(self) -> set[int]:
        ends = np.cumsum([int(stage["steps"]) for stage in self.cfg.schedule])
        return {int(e) for e in ends}

    def stage_of(self, iteration: int) -> str:
        k, task = self._stage(iteration)
        return f"{k}:{task}"
