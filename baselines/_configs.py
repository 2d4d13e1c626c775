"""The built-in baselines' config dataclasses, in a module that imports nothing heavy.

A baseline is one file (``baselines/<name>.py``) and may keep its config there; the built-in
ones keep theirs here so that a dry run of the workflow, which checks every run's options at
parse time, never imports torch (:mod:`opd.manifest`). Files starting with ``_`` are not
imported as baselines.
"""

from __future__ import annotations

import dataclasses

from opd.training.options import GRPOConfig, MethodConfig, NFTConfig

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


@dataclasses.dataclass
class MultitaskGRPOGuardConfig(GRPOConfig):
    steps: int = 60


@dataclasses.dataclass
class MultitaskNFTConfig(NFTConfig):
    steps: int = 60
    beta_mix: float = 0.1


@dataclasses.dataclass
class TeacherMergeConfig(MethodConfig):
    steps: int = 1
    weights: dict = dataclasses.field(default_factory=dict)  # task -> weight (default 1 each)


@dataclasses.dataclass
class WeightedSumConfig(GRPOConfig):
    steps: int = 60
    weights: dict = dataclasses.field(
        default_factory=lambda: {"composition": 1.0, "text": 1.0, "aesthetics": 1.0}
    )
    universal: list[str] = dataclasses.field(default_factory=lambda: ["aesthetics"])
    mode: str = "sum_then_normalize"

    def validate(self) -> None:
        super().validate()
        if self.mode not in ("sum_then_normalize", "normalize_then_sum"):
            raise ValueError(f"mode must be sum_then_normalize or normalize_then_sum: {self.mode}")
