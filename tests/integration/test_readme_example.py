"""The README's example baseline, extracted verbatim, registers by being dropped into
``baselines/`` and trains on the smoke profile through the real ``opd`` CLI."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Adding a baseline", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's 'Adding a baseline' section has no python block"
    return match.group(1)


def test_readme_example_is_short_and_complete():
    code = readme_example()
    assert len(code.strip().splitlines()) < 60
    compile(code, "README example", "exec")
    assert "@METHODS.register(" in code


@pytest.mark.slow
def test_readme_example_baseline_trains_on_smoke(smoke_stage1, tmp_path):
    code = readme_example()
    name = re.search(r'@METHODS.register\("(\w+)"\)', code).group(1)
    target = REPO / "baselines" / f"zz_readme_{uuid.uuid4().hex[:8]}.py"
    cfg = dict(smoke_stage1)
    cfg["methods"] = {
        **cfg["methods"],
        name: {"steps": 2, "prompts_per_task": 2, "checkpoint_every": 1},
    }
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    target.write_text(code)
    try:
        ls = subprocess.run(
            [sys.executable, "-m", "opd.cli", "ls"],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        )
        assert name in ls.stdout
        out = tmp_path / "run"
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "opd.cli",
                "train",
                "--config",
                str(cfg_path),
                "--run",
                name,
                "--seed",
                "0",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert res.returncode == 0, res.stderr[-2000:]
    finally:
        target.unlink(missing_ok=True)
    assert (out / "DONE").exists()
    assert len(list((out / "checkpoints").glob("step_*"))) == 3
