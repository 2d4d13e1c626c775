"""Training a window of the rollout's steps (``train_window``): which steps, and that OPD, GRPO
and NFT then run exactly that many trained transformer calls (their compute counters)."""

from __future__ import annotations

import copy

import pytest

from opd.training import checkpoint as ckpt
from opd.training.base import window_steps
from opd.training.loop import resolve_method, train_run


def test_window_steps_slide_and_random() -> None:
    assert window_steps(7, None, 5) == list(range(7))
    assert window_steps(7, 9, 5) == list(range(7))  # a window wider than the steps: all
    assert window_steps(7, 3, 0, "slide", every=2) == [0, 1, 2]
    assert window_steps(7, 3, 5, "slide", every=2) == [2, 3, 4]
    assert window_steps(7, 3, 100, "slide", every=2) == [4, 5, 6]  # stops at the last window
    draws = [window_steps(7, 3, 0, "random", seed=s) for s in range(50)]
    assert all(len(set(d)) == 3 and d == sorted(d) and d[0] >= 0 and d[-1] < 7 for d in draws)
    assert draws[0] == window_steps(7, 3, 0, "random", seed=0)  # the seed decides
    # every step is drawn, about equally: 50 draws x 3 of 7 steps, ~21 each (binomial sd ~3.5)
    counts = [sum(j in d for d in draws) for j in range(7)]
    assert min(counts) > 21 - 4 * 3.5 and max(counts) < 21 + 4 * 3.5, counts


@pytest.mark.parametrize("run", ["opd", "multitask_grpo_guard", "multitask_nft"])
def test_a_window_of_one_step_trains_one_step_per_rollout(
    smoke_stage1, smoke_teachers, tmp_path, run
):
    cfg = copy.deepcopy(smoke_stage1)
    section = dict(cfg["methods"][run])
    cfg["methods"][f"{run}_w1"] = {**section, "method": run, "train_window": 1, "steps": 1}
    cfg["methods"][run] = {**section, "steps": 1}
    cls, mcfg, _ = resolve_method(cfg, run)
    n_train = mcfg.train_steps or max(int(cfg["sampling"]["num_steps"]) - 1, 1)
    assert n_train >= 2, "the smoke profile must train more than one step for this test"
    teachers = smoke_teachers if cls.needs_teachers else {}
    compute = {}
    for name in (run, f"{run}_w1"):
        out = train_run(cfg, name, 0, tmp_path / name, teachers, progress=False)
        manifest = ckpt.verify_checkpoint(ckpt.latest_checkpoint(out / "checkpoints"))
        compute[name] = manifest["compute"]
    full, one = compute[run], compute[f"{run}_w1"]
    # backward passes come from trained steps only: exactly 1 / n_train of them remain
    assert full["backward_evals"] == n_train * one["backward_evals"] > 0, compute
    # rollouts are unchanged: the same samples
    assert full["samples"] == one["samples"], compute
