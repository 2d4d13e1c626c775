"""Cascade RL with DiffusionNFT: single-task stages in sequence on one model.

The default schedule follows DiffusionNFT's published one (Pick-a-Pic 800 -> GenEval 300 ->
Pick-a-Pic 200 -> GenEval 200 -> OCR 100 iterations), in the same proportions. Each stage's
optimizer steps are recorded with the stage label ``<k>:<task>`` so that retention curves can
mark the stage boundaries, and each stage's last step is checkpointed (and so evaluated).
"""

import dataclasses

import numpy as np

from opd.registry import METHODS
from opd.training.rl import DiffusionNFT, NFTConfig

DEFAULT_SCHEDULE = [
    {"task": "aesthetics", "steps": 16},
    {"task": "composition", "steps": 6},
    {"task": "aesthetics", "steps": 4},
    {"task": "composition", "steps": 4},
    {"task": "text", "steps": 2},
]


@dataclasses.dataclass
class CascadeNFTConfig(NFTConfig):
    schedule: list[dict] = dataclasses.field(default_factory=lambda: list(DEFAULT_SCHEDULE))
    steps: int = 32  # must equal the schedule's total

    def validate(self) -> None:
        super().validate()
        total = sum(int(s["steps"]) for s in self.schedule)
        if total != self.steps:
            raise ValueError(f"steps ({self.steps}) must equal the schedule's total ({total})")
        for s in self.schedule:
            if set(s) != {"task", "steps"} or int(s["steps"]) < 1:
                raise ValueError(f"each stage needs 'task' and 'steps' >= 1, got {s}")


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
