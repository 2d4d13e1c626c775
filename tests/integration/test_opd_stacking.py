"""DiffusionOPD's ``steps_per_call``: a task's trained steps stacked into fewer student and
teacher calls give the gradient of one call per step (the tiny smoke model and its trained
teachers). The model computes in float32, whose matrix products block a batch of 14 rows
differently from one of 2: equality is asked within 10 float32 epsilons (norm-wise for a
gradient), the rounding of a reordered sum, far below any difference a wrong pairing of times,
states or prompts would make (the steps' losses differ by orders of magnitude)."""

from __future__ import annotations

import copy

import pytest
import torch

from opd.registry import METHODS
from opd.training.base import STUDENT, lora_settings
from opd.training.compute import ComputeCounter
from opd.training.context import build_context

RTOL = 10 * torch.finfo(torch.float32).eps


def _step(cfg: dict, teachers: dict, method: str, options: dict) -> tuple[dict, dict, int]:
    """Gradients of the student after one optimizer step's accumulation, the logs, and the
    model evaluations counted."""
    ctx = build_context(cfg, 0, ComputeCounter(), teachers)
    cls = METHODS.get(method)
    m = cls(ctx, cls.Config(prompts_per_task=2, **options))
    torch.manual_seed(7)  # the adapter's initial factors
    ctx.model.add_adapter(STUDENT, **lora_settings(m.cfg, cfg))
    ctx.model.set_trainable(STUDENT)
    m.setup()
    params = dict(ctx.model.adapter_named_parameters(STUDENT))
    with torch.no_grad():  # a student away from the base, so that every factor gets a gradient
        for p in params.values():
            p.add_(0.05 * torch.randn_like(p))
    with ctx.model.counting(ctx.compute):  # as the training loop runs a step
        logs = m.step(0)
    grads = {k: p.grad.detach().clone() for k, p in params.items() if p.grad is not None}
    return grads, logs, ctx.compute.model_evals


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("opd", {}),
        ("opd", {"noise_level": 0.7}),
        ("opd_ppo", {}),
        ("opd_logratio", {}),
    ],
)
def test_stacked_steps_give_the_gradient_of_one_call_per_step(
    smoke_stage1, smoke_teachers, method: str, options: dict
) -> None:
    cfg = copy.deepcopy(smoke_stage1)
    one, one_logs, one_evals = _step(cfg, smoke_teachers, method, {**options, "steps_per_call": 1})
    assert one and one_evals > 0
    assert sum(float(g.abs().sum()) for g in one.values()) > 0
    for per_call in (0, 2):
        grads, logs, evals = _step(
            cfg, smoke_teachers, method, {**options, "steps_per_call": per_call}
        )
        assert grads.keys() == one.keys()
        for k in one:  # norm-wise: a near-zero entry is a difference of large terms
            err = float((grads[k] - one[k]).norm())
            assert err <= RTOL * float(one[k].norm()), (k, err)  # 0 where a factor gets none
        for k, v in one_logs.items():
            assert logs[k] == pytest.approx(v, rel=RTOL), k
        assert evals == one_evals  # the same model evaluations, counted where they are made


def test_steps_per_call_must_not_be_negative() -> None:
    from opd.training.options import OPDConfig

    with pytest.raises(ValueError, match="steps_per_call"):
        OPDConfig(steps_per_call=-1).validate()
