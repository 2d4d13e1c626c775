"""benchmarks/dry_run.py: writes its JSON with medians, their ratio and the heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # starts Snakemake three times


def test_dry_run_bench_writes_medians_and_finds_no_heavy_import(tmp_path):
    out = tmp_path / "dry.json"
    cmd = [sys.executable, "benchmarks/dry_run.py", "--profile", "smoke", "--repeats", "1"]
    proc = subprocess.run([*cmd, "--out", str(out)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert len(data["seconds"]["dry_run"]) == len(data["seconds"]["bare"]) == 1
    assert data["ratio_dry_run_to_bare"] == pytest.approx(
        data["median_s"]["dry_run"] / data["median_s"]["bare"]
    )
    assert data["heavy_imports"] == []
    assert "heavy imports while parsing: none" in proc.stdout
