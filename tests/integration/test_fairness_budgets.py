"""The mini profile's budgets are fair by construction: every multi-task and cascade baseline is
configured for at least the compute of all teachers plus DiffusionOPD, in model evaluations as
the training loop counts them (``FlowModel.counting``).

A step's count depends on the method's settings (prompts, group size, noisings, rollout steps,
CFG), not on the model's size or weights, so one step of each run with the mini profile's
method sections is measured on the smoke model, and scaled by the run's configured steps.
"""

from __future__ import annotations

import copy

import pytest

from opd.config import load_config
from opd.training.loop import Trainer

FAIR_BASELINES = ("multitask_grpo_guard", "multitask_nft", "cascade_nft", "weighted_sum_rl")


def _per_step(cfg: dict, run: str, tmp_path, teachers: dict) -> int:
    """Model evaluations of one optimizer step of ``run``."""
    trainer = Trainer(cfg, run, 0, tmp_path / run, teachers, progress=False)
    trainer.resume()
    before = trainer.compute.model_evals
    trainer.step(0)
    return trainer.compute.model_evals - before


@pytest.mark.slow
def test_every_fair_baseline_is_budgeted_at_least_the_teachers_plus_opd(
    smoke_stage1, smoke_teachers, tmp_path
) -> None:
    mini = load_config("mini")
    cfg = copy.deepcopy(smoke_stage1)
    cfg["sampling"] = mini["sampling"]
    cfg["methods"] = mini["methods"]
    for task, spec in cfg["tasks"].items():
        spec["teacher"] = mini["tasks"][task]["teacher"]
    teachers = dict(smoke_teachers)

    def budget(run: str, steps: int) -> int:
        return _per_step(cfg, run, tmp_path, teachers if run == "opd" else {}) * steps

    own = {
        f"teacher_{t}": budget(f"teacher_{t}", int(mini["tasks"][t]["teacher"]["steps"]))
        for t in mini["tasks"]
    }
    own["opd"] = budget("opd", int(mini["methods"]["opd"]["steps"]))
    reference = sum(own.values())
    assert reference > 0
    for run in FAIR_BASELINES:
        configured = budget(run, int(mini["methods"][run]["steps"]))
        assert configured >= reference, (run, configured, reference)
