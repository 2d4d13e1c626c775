"""Every registered method trains end to end on the smoke profile, and a run killed with
SIGKILL mid-step or mid-checkpoint resumes to bitwise the same weights as an uninterrupted run."""

from __future__ import annotations

import multiprocessing as mp
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from opd.training import checkpoint as ckpt
from opd.training.loop import resolve_method, train_run

SMOKE_RUNS = [
    "opd",
    "multitask_grpo_guard",
    "multitask_nft",
    "cascade_nft",
    "weighted_sum_rl",
    "teacher_merge",
    "opd_ppo",
    "opd_logratio",
    "sft_distill",
    "opd_sde_0.7",
]


def _teachers_for(cfg: dict, run: str, teachers: dict) -> dict:
    cls, _, _ = resolve_method(cfg, run)
    return teachers if cls.needs_teachers else {}


def _final_weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    tensors, _manifest = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir / "checkpoints"))
    return tensors


@pytest.mark.parametrize("run", SMOKE_RUNS)
def test_method_trains_end_to_end_on_smoke(smoke_stage1, smoke_teachers, tmp_path, run):
    cfg = smoke_stage1
    out = train_run(
        cfg, run, 0, tmp_path / run, _teachers_for(cfg, run, smoke_teachers), progress=False
    )
    _, mcfg, _ = resolve_method(cfg, run)
    assert (out / "DONE").exists()
    steps = [int(p.name.split("_")[1]) for p in ckpt.list_checkpoints(out / "checkpoints")]
    assert steps[0] == 0 and steps[-1] == mcfg.steps
    if run == "cascade_nft":  # every stage's last step is checkpointed, whatever the cadence
        ends = set(np.cumsum([s["steps"] for s in mcfg.schedule]).tolist())
        assert ends <= set(steps), (ends, steps)
    manifest = ckpt.verify_checkpoint(ckpt.latest_checkpoint(out / "checkpoints"))
    if mcfg.steps and run != "teacher_merge":
        assert manifest["compute"]["model_evals"] > 0
        assert manifest["compute"]["samples"] > 0
    assert (out / "final" / "adapter_model.safetensors").exists()


def _child(cfg, run, seed, out, teachers, fault):
    import os

    torch.set_num_threads(1)
    os.environ["OPD_FAULT"] = fault
    train_run(cfg, run, seed, out, teachers, progress=False)


def _run_forked(cfg, run, out, teachers, fault) -> int:
    ctx = mp.get_context("fork")
    p = ctx.Process(target=_child, args=(cfg, run, 0, out, teachers, fault))
    p.start()
    p.join(300)
    return p.exitcode


RESUME_RUNS = ["teacher_composition", "teacher_text", *SMOKE_RUNS]


@pytest.mark.parametrize("run", RESUME_RUNS)
def test_sigkill_mid_run_resumes_bitwise(smoke_stage1, smoke_teachers, tmp_path, run):
    cfg = smoke_stage1
    _cls, mcfg, _ = resolve_method(cfg, run)
    teachers = _teachers_for(cfg, run, smoke_teachers)
    ref = train_run(cfg, run, 0, tmp_path / "ref", teachers, progress=False)
    if mcfg.steps < 2:
        pytest.skip(f"{run} has a single step: no mid-run point after a checkpoint")
    rng = random.Random(run)
    # a point strictly after the first completed checkpoint (step 1) and not at a boundary:
    # inside an optimizer step (before its update) or half-way through a checkpoint write
    step = rng.randint(2, mcfg.steps)
    fault = rng.choice([f"train.step:{step}", f"checkpoint.write:{step}"])
    code = _run_forked(cfg, run, tmp_path / "killed", teachers, fault)
    assert code == -signal.SIGKILL, f"the fault {fault} did not fire (exit {code})"
    assert not (tmp_path / "killed" / "DONE").exists()
    train_run(cfg, run, 0, tmp_path / "killed", teachers, progress=False)
    want, got = _final_weights(ref), _final_weights(tmp_path / "killed")
    first, _ = ckpt.load_checkpoint(ckpt.list_checkpoints(ref / "checkpoints")[0])
    moved = any(not torch.equal(first["student"][k], v) for k, v in want["student"].items())
    assert moved, f"{run}: training never changed the weights, so the comparison is vacuous"
    assert want.keys() == got.keys()
    for group in want:
        for key in want[group]:
            assert torch.equal(want[group][key], got[group][key]), (fault, group, key)
