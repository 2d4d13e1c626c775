"""Data parallelism: the OPD trainer under ``accelerate launch`` with 2 CPU processes (gloo)
ends with the same student weights as 1 process on the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from opd.config import REPO_ROOT, load_resolved, write_resolved
from opd.training.loop import train_run

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), CUDA_VISIBLE_DEVICES="")
    return env


def _final_student(run_dir: Path) -> dict[str, torch.Tensor]:
    from opd.training import checkpoint as ckpt

    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    assert latest is not None, f"no checkpoint in {run_dir}"
    tensors, manifest = ckpt.load_checkpoint(latest)
    assert manifest["step"] == 2
    return tensors["student"]


def test_two_processes_match_one(smoke_teachers: dict, smoke_stage1: dict, tmp_path: Path):
    cfg = {**smoke_stage1, "progress": False}
    cfg["methods"] = {**cfg["methods"], "opd": {**cfg["methods"]["opd"], "prompts_per_task": 2}}
    config = tmp_path / "config.yaml"
    write_resolved(cfg, config)
    teachers = [a for task, d in smoke_teachers.items() for a in ("--teacher", f"{task}={d}")]
    args = ["train", "--config", str(config), "--run", "opd", "--seed", "0", *teachers]

    one = tmp_path / "one"  # the 1-process reference runs in this process (same code path)
    assert "WORLD_SIZE" not in os.environ
    train_run(load_resolved(config), "opd", 0, one, dict(smoke_teachers), progress=False)
    two = tmp_path / "two"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO_ROOT / "config/accelerate/cpu2.yaml"),
        "--main_process_port", str(_free_port()),
        "-m", "opd.cli", *args, "--out", str(two),
    ]  # fmt: skip
    proc = subprocess.run(
        launch, env=_env(), cwd=REPO_ROOT, timeout=300, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    a, b = _final_student(one), _final_student(two)
    assert a.keys() == b.keys() and a
    for key in a:
        # float32 rounding: the shards run batches of another size (other kernels) and the
        # gradient mean is a mean of shard means; LoRA B starts at 0, so compare norms
        ref = a[key].double()
        rel = float((ref - b[key].double()).norm() / ref.norm().clamp_min(1e-30))
        assert rel < 1e-5, f"{key}: relative difference {rel:.2e}"
    base = torch.cat([t.flatten() for t in a.values()])
    assert base.abs().sum() > 0  # the student moved (B started at zero)
    # one writer: the 2-process run has exactly one metrics log and one final adapter
    assert (two / "DONE").is_file() and (two / "final").is_dir()
