"""`opd.calltime`: the seconds a job spends inside model calls, per section, as the per-rule
benchmark reads them. A section's count must match the calls that really happened (a forward
hook on the transformer, a wrapped ``Tensor.backward``), and its seconds must fit inside the
step's own wall time."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from opd import calltime
from opd.registry import METHODS
from opd.training.base import STUDENT, lora_settings
from opd.training.compute import ComputeCounter
from opd.training.context import build_context


def test_timed_sums_seconds_and_calls_and_does_not_count_nested_blocks(monkeypatch) -> None:
    clock = iter([10.0, 12.5, 20.0, 21.0])  # two outer blocks; the nested one reads no clock
    monkeypatch.setattr(calltime, "_clock", lambda: next(clock))
    calltime.reset()
    with calltime.timed("forward"), calltime.timed("score"):  # the inner one is not counted
        pass
    with calltime.timed("backward"):
        pass
    snap = calltime.snapshot()
    assert snap["seconds"]["forward"] == 2.5 and snap["seconds"]["backward"] == 1.0
    assert snap["calls"] == {**dict.fromkeys(calltime.SECTIONS, 0), "forward": 1, "backward": 1}
    with pytest.raises(ValueError, match="unknown section 'sampler'"), calltime.timed("sampler"):
        pass
    calltime.reset()
    assert set(calltime.snapshot()["seconds"].values()) == {0.0}


@pytest.mark.parametrize("method", ["opd", "grpo"])
def test_a_training_step_times_every_model_call_it_makes(
    smoke_stage1, smoke_teachers, monkeypatch, method: str
) -> None:
    cfg = copy.deepcopy(smoke_stage1)
    ctx = build_context(cfg, 0, ComputeCounter(), smoke_teachers)
    cls = METHODS.get(method)
    m = cls(ctx, cls.Config(prompts_per_task=2))
    ctx.model.add_adapter(STUDENT, **lora_settings(m.cfg, cfg))
    ctx.model.set_trainable(STUDENT)
    m.setup()

    calls = {"forward": 0, "forward_grad": 0, "backward": 0}

    def on_forward(module, args, kwargs, out) -> None:
        calls["forward_grad" if torch.is_grad_enabled() else "forward"] += 1

    hook = ctx.model.transformer.register_forward_hook(on_forward, with_kwargs=True)
    backward = torch.Tensor.backward

    def counting_backward(self, *args, **kwargs):
        calls["backward"] += 1
        return backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", counting_backward)
    calltime.reset()
    t0 = time.perf_counter()
    try:
        with ctx.model.counting(ctx.compute):
            m.step(0)
    finally:
        hook.remove()
    wall = time.perf_counter() - t0
    snap = calltime.snapshot()
    assert calls["forward"] > 0 and calls["forward_grad"] > 0 and calls["backward"] > 0
    for section in ("forward", "forward_grad", "backward"):
        assert snap["calls"][section] == calls[section], section
    assert (snap["calls"]["score"] > 0) == (method == "grpo")  # DiffusionOPD scores nothing
    assert 0 < sum(snap["seconds"].values()) <= wall
