"""Run a ``benchmarks/`` script in a one-thread subprocess, as its tests do, and read its JSON;
or import one as a module, to test its functions."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(
    script: Path, args: list[str], out: Path, timeout: int, **env: str
) -> tuple[str, dict]:
    """The script's stdout and the JSON it wrote to ``out`` (``--out`` is added); a failed run
    fails the test with the end of its stderr."""
    proc = subprocess.run(
        [sys.executable, str(script), *args, "--out", str(out)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout, json.loads(Path(out).read_text())


def load_script(script: Path) -> ModuleType:
    """The ``benchmarks/`` script ``script`` imported as a module named after its file
    (registered in ``sys.modules``: dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(script.stem, script)
    assert spec is not None and spec.loader is not None, script
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
