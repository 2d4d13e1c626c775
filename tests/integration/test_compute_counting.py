"""Compute is counted where the model runs (``FlowModel.counting``, around every optimizer step
of the training loop): a method that never mentions compute reports what counting by hand
gives, CFG calls count both halves, and a differentiated call counts its backward."""

from __future__ import annotations

import copy
import dataclasses

import torch

from opd.registry import METHODS
from opd.training import checkpoint as ckpt
from opd.training.base import STUDENT, Method, MethodConfig
from opd.training.compute import ComputeCounter
from opd.training.loop import train_run
from opd.training.rollouts import roll, sampler_for


@dataclasses.dataclass
class ProbeConfig(MethodConfig):
    pass


class ComputeProbe(Method):
    """A method that counts nothing itself: a CFG rollout of its prompts, then one
    differentiated student call on the final states."""

    Config = ProbeConfig

    def step(self, iteration: int) -> dict[str, float]:
        task = self.task_names[0]
        batch = roll(
            self,
            task,
            iteration,
            n_prompts=self.cfg.prompts_per_task,
            sampler=sampler_for(0.0),
            adapter=STUDENT,
            guidance=4.5,
        )
        x0 = batch.traj.states[-1]
        t = torch.full((x0.shape[0],), 0.5)
        v = self.model.velocity(x0, t, batch.embeds, adapter=STUDENT)
        loss = (v**2).mean()
        loss.backward()
        return {f"{task}/loss": float(loss.detach())}


def test_a_method_without_compute_calls_counts_what_a_hand_count_gives(
    smoke_stage1, tmp_path
) -> None:
    name = "compute_probe_test"
    if name not in METHODS:
        METHODS.register(name)(ComputeProbe)
    cfg = copy.deepcopy(smoke_stage1)
    prompts, steps = 2, 3
    cfg["methods"][name] = {"steps": steps, "prompts_per_task": prompts, "checkpoint_every": 3}
    out = train_run(cfg, name, 0, tmp_path / "run", progress=False)
    compute = ckpt.verify_checkpoint(ckpt.latest_checkpoint(out / "checkpoints"))["compute"]
    num_steps = int(cfg["sampling"]["num_steps"])
    # by hand: each rollout step one CFG call (x2) on `prompts` samples; then one forward and
    # its backward (x3) on the same samples; per optimizer step
    per_step = prompts * num_steps * 2 + 3 * prompts
    assert compute["model_evals"] == steps * per_step
    assert compute["forward_evals"] == steps * (prompts * num_steps * 2 + prompts)
    assert compute["samples"] == steps * prompts


def test_counting_counts_rows_cfg_halves_and_backwards_inside_its_block(smoke_stage1) -> None:
    from opd.training.context import load_base_model

    model = load_base_model(smoke_stage1)
    model.add_adapter(STUDENT, rank=2, alpha=2.0, seed=0)
    model.set_trainable(STUDENT)
    embeds = model.encode_prompts(["a photo of a red circle"] * 3)
    x = torch.randn(3, *model.latent_shape(1)[1:])
    counter = ComputeCounter()
    model.velocity(x, 0.5, embeds, guidance_scale=4.5)  # outside the block: not counted
    with model.counting(counter):
        with torch.no_grad():
            model.velocity(x, 0.5, embeds, guidance_scale=4.5)  # 2 x 3 rows
            model.velocity_fn(embeds, adapter=STUDENT)(x, 0.5)  # 3 rows
        model.velocity(x, 0.5, embeds, adapter=STUDENT).sum().backward()  # 3 rows + backward
    assert (counter.forward_evals, counter.backward_evals) == (6 + 3 + 3, 2 * 3)
    assert model.counter is None  # the block restores the previous counter
