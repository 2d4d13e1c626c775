"""Training options on the smoke profile: rollouts whose last step is the ODE mean
(``final_step: ode``) and a teacher trained with it and with ``drop_constant_groups``."""

from __future__ import annotations

import copy
import csv

import torch

from opd.training.loop import train_run


def test_roll_takes_its_last_step_as_the_ode_mean(smoke_stage1) -> None:
    from opd.training.compute import ComputeCounter
    from opd.training.context import build_context
    from opd.training.rl import GRPOConfig, GRPOGuard
    from opd.training.rollouts import roll, sampler_for

    ctx = build_context(smoke_stage1, 0, ComputeCounter(), {})
    batches = {}
    for final in ("sde", "ode"):
        method = GRPOGuard(ctx, GRPOConfig(noise_level=0.7, final_step=final))
        sampler = sampler_for(0.7)
        batches[final] = roll(
            method,
            "text",
            3,
            n_prompts=2,
            group_size=2,
            sampler=sampler,
            adapter=None,
            guidance=4.5,
        )
    sde, ode = batches["sde"].traj, batches["ode"].traj
    n = sde.num_steps
    assert torch.equal(ode.states[:n], sde.states[:n])  # same seed: same noise up to there
    assert torch.equal(ode.log_probs[: n - 1], sde.log_probs[: n - 1])
    # the last state is the Euler step of the model's velocity, in float64
    x, t = ode.states[n - 1], ode.timesteps[n - 1]
    with torch.no_grad():
        v = ctx.model.velocity_fn(batches["ode"].embeds, guidance_scale=4.5)(x, t)
    euler = x.double() - float(t) * v.double()  # t_N = 0: h = t_{N-1}
    assert torch.allclose(ode.states[n].double(), euler, rtol=0, atol=1e-6)
    assert (ode.states[n] - sde.states[n]).abs().max() > 1e-2  # the SDE's last noise is gone
    assert torch.isnan(ode.log_probs[n - 1]).all() and not ode.stds[n - 1].any()


def test_a_teacher_trains_with_both_options_and_logs_the_kept_fraction(
    smoke_stage1, tmp_path
) -> None:
    cfg = copy.deepcopy(smoke_stage1)
    cfg["tasks"]["text"]["teacher"].update(final_step="ode", drop_constant_groups=True, steps=2)
    out = train_run(cfg, "teacher_text", 0, tmp_path / "teacher", progress=False)
    assert (out / "DONE").exists()
    with (out / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    kept = [float(r["value"]) for r in rows if (r["task"], r["metric"]) == ("text", "kept")]
    assert len(kept) == 2 and all(0.0 <= k <= 1.0 for k in kept)
    norms = [float(r["value"]) for r in rows if r["metric"] == "grad_norm"]
    assert len(norms) == 2 and all(torch.isfinite(torch.tensor(norms)))
