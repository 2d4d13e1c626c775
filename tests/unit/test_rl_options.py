"""Method options of the RL trainers on hand-made batches: ``drop_constant_groups`` (groups of
equal rewards leave the loss) and the ``final_step`` check.

The batches come from a stub model whose velocity is ``theta_adapter (1 + t) x + e`` (``e`` one
number per prompt) in float64, so a method's gradient on ``theta_student`` can be compared with
the gradient of the same method on the batch without the constant group: an independent path
that never builds a mask.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opd.registry import METHODS
from opd.sampling import make_sampler, rollout, step_noise, time_grid
from opd.training.base import STUDENT, RunContext, TaskData
from opd.training.compute import ComputeCounter
from opd.training.rl import DiffusionNFT, GRPOConfig, NFTConfig
from opd.training.rollouts import Batch

F64 = torch.float64
NUM_STEPS = 3
SHAPE = (1, 2, 2)
# groups 0 and 1 vary, group 2 is constant (last: NFT keys its noise by batch position)
REWARDS = np.array([0.2, 0.9, 0.5, 0.1, 0.7, 0.7])
GROUPS = np.array([0, 0, 1, 1, 2, 2])


class StubModel:
    """``v = theta[adapter] (1 + t) x + e`` with a trainable student ``theta``."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.student = torch.nn.Parameter(torch.tensor(0.3, dtype=F64))
        self.theta = {None: torch.tensor(0.1, dtype=F64), DiffusionNFT.OLD: torch.tensor(0.25)}

    def velocity(self, x, t, embeds, guidance_scale=1.0, adapter=None):
        theta = self.student if adapter == STUDENT else self.theta[adapter].to(F64)
        tt = torch.as_tensor(t, dtype=F64).reshape(-1, 1, 1, 1)
        return theta * (1 + tt) * x + embeds.reshape(-1, 1, 1, 1)

    def velocity_fn(self, embeds, guidance_scale=1.0, adapter=None):
        return lambda x, t: self.velocity(x, t, embeds, guidance_scale, adapter)


def _method(name: str, cfg, model: StubModel):
    profile = {"sampling": {"num_steps": NUM_STEPS, "shift": 3.0, "guidance": 4.5}}
    task = TaskData("t", [], [], reward=None)  # type: ignore[arg-type]
    ctx = RunContext(model, profile, seed=0, tasks={"t": task}, compute=ComputeCounter())
    return METHODS.get(name)(ctx, cfg)


def _batch(model: StubModel, rewards: np.ndarray, keep: slice = slice(None)) -> Batch:
    """A group-of-2 batch rolled out by the student with the Flow-GRPO SDE (a = 0.7)."""
    n = len(REWARDS)
    grid = time_grid(NUM_STEPS)
    embeds = torch.linspace(-0.5, 0.5, n, dtype=F64)
    x0 = step_noise(5, -1, list(range(n)), SHAPE).to(F64)
    with torch.no_grad():
        traj = rollout(
            model.velocity_fn(embeds, adapter=STUDENT),
            SHAPE,
            grid,
            make_sampler("flow_sde", noise_level=0.7),
            5,
            list(range(n)),
            x_init=x0,
        )
    idx = list(range(n))[keep]
    return Batch(
        "t",
        [f"p{i}" for i in idx],
        [{} for _ in idx],
        GROUPS[idx],
        embeds[idx],
        traj.index(idx),
        grid,
        rewards=rewards[idx],
    )


def _grad(name: str, cfg, rewards: np.ndarray, keep: slice = slice(None)):
    """(d loss / d theta_student, logs) of one optimizer step (iteration 1) on the batch."""
    model = StubModel()
    method = _method(name, cfg, model)
    batch = _batch(model, rewards, keep)
    method.reward_batch = lambda *args, **kwargs: batch
    logs = method.step(1)
    return model.student.grad, logs


def _configs(drop: bool) -> dict[str, object]:
    common = {"group_size": 2, "prompts_per_task": 3, "drop_constant_groups": drop}
    # NFT: a window of one step (t_1 at iteration 1), so its draws of t do not depend on the
    # batch size and the smaller batch sees the same times and noise
    return {
        "grpo": GRPOConfig(noise_level=0.7, beta=0.04, **common),
        "grpo_guard": GRPOConfig(noise_level=0.7, beta=0.04, **common),
        "nft": NFTConfig(train_window=1, **common),
    }


@pytest.mark.parametrize("name", ["grpo", "grpo_guard", "nft"])
def test_dropping_constant_groups_equals_training_without_them(name: str) -> None:
    dropped, logs = _grad(name, _configs(True)[name], REWARDS)
    # the same method on the batch without the constant group: no mask involved
    alone, alone_logs = _grad(name, _configs(False)[name], REWARDS, slice(0, 4))
    assert torch.allclose(dropped, alone, rtol=1e-9, atol=1e-15), (dropped, alone)
    assert logs["t/loss"] == pytest.approx(alone_logs["t/loss"], rel=1e-9)
    assert logs["t/kept"] == pytest.approx(4 / 6) and "t/kept" not in alone_logs
    # without the option the constant group dilutes (GRPO) or pulls (NFT) the gradient
    diluted, _ = _grad(name, _configs(False)[name], REWARDS)
    assert not torch.allclose(diluted, alone, rtol=1e-3), (diluted, alone)


@pytest.mark.parametrize("name", ["grpo", "grpo_guard", "nft"])
def test_a_batch_of_constant_groups_gives_an_exact_zero_gradient(name: str) -> None:
    flat = np.array([0.4, 0.4, 0.9, 0.9, 0.0, 0.0])
    grad, logs = _grad(name, _configs(True)[name], flat)
    assert grad is not None and grad.item() == 0.0
    assert logs["t/loss"] == 0.0 and logs["t/kept"] == 0.0
    assert all(np.isfinite(v) for v in logs.values()), logs
    grad_off, _ = _grad(name, _configs(False)[name], flat)
    if name == "nft":  # NFT's r = 0.5 samples still pull the policy without the option
        assert grad_off.item() != 0.0


def test_the_kept_mean_divides_by_the_kept_count_of_every_process() -> None:
    """Data parallel: each process divides its kept sum by (kept over all processes) / world,
    so the averaged gradients are the mean over every kept sample; checked on a one-process
    gloo group standing in for two processes that kept the same count."""
    import torch.distributed as dist

    model = StubModel()
    method = _method("grpo", _configs(True)["grpo"], model)
    batch = _batch(model, REWARDS)
    mask, divisor = method.kept(batch)
    assert mask.tolist() == [True, True, True, True, False, False] and divisor == 4.0
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        method.ctx.world_size = 2
        assert method.kept(batch)[1] == (4.0 + 0.0) / 2  # the only process's 4, over 2
    finally:
        dist.destroy_process_group()
    off = _method("grpo", _configs(False)["grpo"], model)
    assert off.kept(batch) == (None, 1.0)


def test_weighted_sum_keeps_a_group_where_any_reward_varies_when_normalising_first() -> None:
    model = StubModel()
    batch = _batch(model, np.zeros(6), slice(0, 4))
    parts = {"a": np.array([1.0, 1.0, 0.0, 1.0]), "b": np.array([0.0, 0.0, 1.0, 0.0])}
    batch.rewards = parts["a"] + parts["b"]  # constant in both groups
    masks = {}
    for mode in ("sum_then_normalize", "normalize_then_sum"):
        cfg = METHODS.get("weighted_sum_rl").Config(
            weights={"a": 1.0, "b": 1.0}, universal=[], mode=mode, drop_constant_groups=True
        )
        method = _method("weighted_sum_rl", cfg, model)
        method._parts = parts
        masks[mode] = method.kept_mask(batch).tolist()
    assert masks["sum_then_normalize"] == [False] * 4
    assert masks["normalize_then_sum"] == [False, False, True, True]


def test_a_final_ode_step_cannot_be_trained() -> None:
    from opd.config import ConfigError, build_dataclass

    with pytest.raises(ConfigError, match="final_step"):
        build_dataclass(GRPOConfig, {"final_step": "euler"}, "methods.x")
    model = StubModel()
    assert _method("grpo", GRPOConfig(final_step="ode"), model).final_sampler == "ode"
    assert _method("grpo", GRPOConfig(), model).final_sampler is None
    with pytest.raises(ValueError, match="train_steps"):
        _method("grpo", GRPOConfig(final_step="ode", train_steps=NUM_STEPS), model)


@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("per_call", [0, 2, 3])
def test_nft_noisings_stacked_into_one_call_give_the_same_gradient(per_call: int, drop: bool):
    """``noisings_per_call`` only batches the (noising, time) draws of a step into fewer model
    calls: with 2 noisings x 2 trained steps, any chunking gives the one-call-each gradient and
    loss (float64: equal to summation order) and counts the same model evaluations."""
    common = {"group_size": 2, "prompts_per_task": 3, "drop_constant_groups": drop, "noisings": 2}
    one, one_logs = _grad("nft", NFTConfig(noisings_per_call=1, **common), REWARDS)
    stacked, logs = _grad("nft", NFTConfig(noisings_per_call=per_call, **common), REWARDS)
    assert torch.allclose(stacked, one, rtol=1e-12, atol=1e-15), (stacked, one)
    assert logs["t/loss"] == pytest.approx(one_logs["t/loss"], rel=1e-12)


def test_nft_noisings_per_call_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="noisings_per_call"):
        NFTConfig(noisings_per_call=-1).validate()
