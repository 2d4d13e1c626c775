"""Shared fixtures: the smoke profile's stage-1 artifacts (scorers, base model, teachers),
built once per test session in a temporary folder with the real library code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def smoke_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("smoke")


@pytest.fixture(scope="session")
def smoke_cfg(smoke_root: Path) -> dict:
    """The validated smoke profile with its artifact paths inside the session folder."""
    import torch

    from opd.config import load_config, write_resolved

    torch.set_num_threads(1)
    root = smoke_root / "results"
    cfg = load_config(
        "smoke",
        overrides={
            "progress": False,
            "paths": {
                "results": str(root),
                "world": str(root / "world"),
                "scorers": str(root / "scorers"),
                "base": str(root / "base"),
            },
        },
    )
    write_resolved(cfg, root / "config.yaml")
    return cfg


@pytest.fixture(scope="session")
def smoke_stage1(smoke_cfg: dict) -> dict:
    """Learned scorers and the base model of the smoke profile (seconds)."""
    from opd.rewards.train_scorers import train_all_scorers
    from opd.training.pretrain import pretrain_base

    paths = smoke_cfg["paths"]
    train_all_scorers(
        smoke_cfg,
        seed=0,
        out_dir=paths["scorers"],
        threads=1,
        names=smoke_cfg["learned_scorers"],
        log=None,
    )
    pretrain_base(smoke_cfg, Path(paths["base"]), progress=False)
    return smoke_cfg


@pytest.fixture(scope="session")
def smoke_teachers(smoke_stage1: dict) -> dict[str, Path]:
    """One trained teacher adapter per task (the smoke profile's teacher runs)."""
    from opd.training.loop import train_run

    root = Path(smoke_stage1["paths"]["results"]) / "teachers"
    out = {}
    for task in smoke_stage1["tasks"]:
        train_run(smoke_stage1, f"teacher_{task}", 0, root / task, progress=False)
        out[task] = root / task / "final"
    return out
