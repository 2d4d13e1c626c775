"""The RL teachers move a reward the right way: a sign or scaling bug in a policy-gradient loss
passes every shape test but fails here.

Each teacher algorithm trains the smoke base on an easy reward (mean image brightness); the
final adapter's ODE samples must be brighter than the base model's on the same prompts and
noise, by more than 3 standard errors of the paired difference.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from opd.registry import SCORERS
from opd.sampling import make_sampler, rollout, time_grid

if "test_brightness" not in SCORERS:

    @SCORERS.register("test_brightness")
    def _brightness(**_: object):
        return lambda images, prompts, meta: np.asarray(images, np.float64).mean((1, 2, 3)) / 255


def _brightness_of(model, adapter, prompts, guidance) -> np.ndarray:
    embeds = model.encode_prompts(prompts)
    with torch.no_grad():
        traj = rollout(
            model.velocity_fn(embeds, guidance_scale=guidance, adapter=adapter),
            model.latent_shape(1)[1:],
            time_grid(8, shift=3.0),
            make_sampler("ode"),
            777,
            list(range(len(prompts))),
            record=False,
        )
    return np.asarray(model.decode(traj.states[-1]), np.float64).mean((1, 2, 3)) / 255


@pytest.mark.parametrize("method", ["grpo", "grpo_guard", "nft"])
def test_teacher_raises_an_easy_reward(method: str, smoke_stage1: dict, tmp_path: Path) -> None:
    from opd.models import FlowModel
    from opd.training.loop import train_run

    cfg = copy.deepcopy(smoke_stage1)
    task = dict(cfg["tasks"]["text"])
    guidance = 1.0 if method == "nft" else 4.5
    task["reward"] = {"test_brightness": 1.0}
    task["teacher"] = {
        "method": method,
        "guidance": guidance,
        "steps": 12,
        "prompts_per_task": 4,
        "group_size": 4,
        "checkpoint_every": 12,
        "lr": 1e-2,
    }
    if method != "nft":
        task["teacher"]["noise_level"] = 0.5
    cfg["tasks"] = {"text": task}
    train_run(cfg, "teacher_text", 0, tmp_path, progress=False)

    model = FlowModel.from_pretrained(cfg["paths"]["base"])
    model.load_adapter("trained", tmp_path / "final")
    prompts = [f'a sign that says "{c}"' for c in "AFJLMSTZ"] * 4
    before = _brightness_of(model, "base", prompts, guidance)
    after = _brightness_of(model, "trained", prompts, guidance)
    diff = after - before
    z = diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff)))
    assert z > 3.0, f"{method}: brightness {before.mean():.3f} -> {after.mean():.3f} (z = {z:.2f})"
