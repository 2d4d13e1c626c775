"""Every fenced ``python`` and ``bash`` block of README.md and docs/*.md runs (issue 20).

A block is skipped only when the line before its fence is ``<!-- norun: <reason> -->``, and the
reason must be given. The others run in document order (README.md first, then docs/ by name), in
one scratch folder that mirrors the repository, so that the workflow's outputs (``results/``,
``logs/``, ``.snakemake/``, ``benchmarks/<profile>/``) never land in the checkout, and so that a
snippet that reads a reproduction's results finds the ones the README's command produced.

What a block runs is kept cheap by these rewrites (the documents show the real commands):

- ``pip install ...`` commands (a line, or a part of an ``&&`` chain) are not run: the extras
  they name must exist in pyproject.toml.
- ``snakemake`` with ``profile=paper`` or a ``--workflow-profile`` (GPUs, clusters) runs as a
  dry run (``-n``; with ``--executor dryrun`` where the cluster's executor plugin is not
  installed, so that the profile and the DAG are still checked); any other ``snakemake`` runs
  the smoke profile (``--config profile=smoke``), and ``results/mini`` reads
  ``results/smoke`` in every block.
- ``python -m pytest`` only collects (``--collect-only``): this test is part of that suite.
- Python blocks (library snippets) run as written, each in a fresh interpreter.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

# runs the smoke reproduction and dry runs of the paper profile: minutes
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# produced by the workflow (or by hand) in the working directory: not mirrored
NOT_MIRRORED = {"results", "logs", "resources", "benchmarks"}  # and every dot-entry
WORKFLOW_BENCHMARKS = {"smoke", "mini", "paper"}  # benchmarks/<profile>/: the workflow's own
NORUN = re.compile(r"^<!--\s*norun:\s*(?P<reason>.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>\w*)\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    norun: str | None  # the reason, when the block is marked norun

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced python and bash blocks of ``path``, with their norun reasons."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        prev = lines[i - 1] if i > 0 else ""
        norun = NORUN.match(prev)
        if m.group("lang") in ("python", "bash"):
            code = "\n".join(lines[i + 1 : end]) + "\n"
            reason = norun.group("reason") if norun else None
            found.append(Block(path, i + 1, m.group("lang"), code, reason))
        i = end + 1
    return found


ALL = [b for doc in DOCS for b in blocks(doc)]


def extras() -> set[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return set(data["project"]["optional-dependencies"])


def check_pip(line: str) -> None:
    """A documented ``pip install`` names only extras that pyproject.toml defines."""
    for group in re.findall(r"\[([\w,\s-]+)\]", line):
        unknown = {e.strip() for e in group.split(",")} - extras()
        assert not unknown, f"{line!r}: extras {sorted(unknown)} are not in pyproject.toml"


def executor_missing(command: str) -> bool:
    """Whether the command's ``--workflow-profile`` names an executor whose plugin is absent."""
    m = re.search(r"--workflow-profile\s+(\S+)", command)
    if not m:
        return False
    profile = yaml.safe_load((REPO / m.group(1) / "config.yaml").read_text(encoding="utf-8"))
    executor = profile.get("executor", "local")
    plugin = f"snakemake_executor_plugin_{executor.replace('-', '_')}"
    return executor not in ("local", "dryrun") and importlib.util.find_spec(plugin) is None


def rewrite_snakemake(command: str) -> str:
    """One ``snakemake`` command made cheap: a dry run for GPUs and clusters, else smoke."""
    if "profile=paper" in command or "--workflow-profile" in command:
        dry = "snakemake -n"
        if executor_missing(command):  # the cluster's plugin is not installed here
            dry += " --executor dryrun"
        return re.sub(r"\bsnakemake\b", dry, command, count=1)
    command = command.replace("profile=mini", "profile=smoke")
    if "profile=" in command:
        return command
    if "--config " in command:
        return command.replace("--config ", "--config profile=smoke ", 1)
    return command.rstrip() + " --config profile=smoke"


def rewrite_bash(code: str) -> str:
    out = []
    for line in code.splitlines():
        body = line.partition(" #")[0]  # a trailing comment is dropped
        if body.lstrip().startswith("#"):
            out.append(line)
            continue
        body = body.replace("results/mini/", "results/smoke/")
        body = re.sub(r"python -m pytest\b", "python -m pytest --collect-only", body)
        parts = []
        for part in body.split("&&"):
            if part.strip().startswith("pip install "):
                check_pip(part)
                part = " : "  # checked, not run
            parts.append(rewrite_snakemake(part) if "snakemake" in part else part)
        out.append("&&".join(parts))
    return "\n".join(out) + "\n"


def rewrite_python(code: str) -> str:
    return code.replace("results/mini/", "results/smoke/")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder whose entries link to the repository's, except the outputs."""
    root = tmp_path_factory.mktemp("docs")
    for entry in REPO.iterdir():
        if entry.name not in NOT_MIRRORED and not entry.name.startswith("."):
            (root / entry.name).symlink_to(entry)
    (root / "benchmarks").mkdir()
    for entry in (REPO / "benchmarks").iterdir():
        if entry.name not in WORKFLOW_BENCHMARKS:
            (root / "benchmarks" / entry.name).symlink_to(entry)
    return root


def env() -> dict[str, str]:
    """This interpreter's bin folder first, so that snakemake, opd and python are this one's."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_norun_blocks_give_a_reason():
    missing = [b.id for b in ALL if b.norun is not None and not b.norun]
    assert not missing, f"norun without a reason: {missing}"


def test_the_documents_have_blocks_to_run():
    assert any(b.norun is None for b in ALL if b.path.name == "README.md")


@pytest.mark.parametrize("block", ALL, ids=[b.id for b in ALL])
def test_block_runs(block: Block, scratch: Path):
    if block.norun is not None:
        pytest.skip(f"norun: {block.norun}")
    if block.lang == "bash":
        script = scratch / "block.sh"
        script.write_text("set -euo pipefail\n" + rewrite_bash(block.code))
        cmd = ["bash", str(script)]
    else:
        script = scratch / "block.py"
        script.write_text(rewrite_python(block.code))
        cmd = [sys.executable, str(script)]
    tic = time.perf_counter()
    proc = subprocess.run(cmd, cwd=scratch, env=env(), capture_output=True, text=True, timeout=1800)
    took = time.perf_counter() - tic
    out = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, (
        f"{block.id} failed after {took:.0f} s:\n{script.read_text()}\n{out}"
    )
