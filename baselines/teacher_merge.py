"""Merging the teachers' weights: task arithmetic on the LoRA deltas, no training.

The student adapter is the weighted sum of the teachers' LoRA deltas, represented exactly by
concatenating their factors (rank = sum of the teachers' ranks).
"""

from baselines._configs import TeacherMergeConfig
from opd.registry import METHODS
from opd.training.base import STUDENT, Method


@METHODS.register("teacher_merge")
class TeacherMerge(Method):
    Config = TeacherMergeConfig
    trainable = None
    needs_teachers = True

    def setup(self) -> None:
        names = [self.ctx.teachers[t] for t in self.task_names]
        weights = [float(self.cfg.weights.get(t, 1.0)) for t in self.task_names]
        self.model.merge_adapters(names, weights, STUDENT)

    def step(self, iteration: int) -> dict[str, float]:
        return {}
