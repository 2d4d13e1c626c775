"""How long the workflow takes to parse: ``snakemake -n reproduce`` against Snakemake's bare start.

Every ``snakemake`` call (a dry run, a real run, each cluster submission's status check) parses
the Snakefile and validates the config first, so this is the fixed cost of any interaction with
the workflow. Runs each command ``--repeats`` times as a whole process and reports the medians,
their ratio, and whether torch, transformers or diffusers were imported while parsing (they must
not be: the config check goes through ``opd.manifest``).

    python benchmarks/dry_run.py --profile mini --out results/dry_run.json

Writes JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("torch", "transformers", "diffusers")


def _time(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - start, proc.stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="mini")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path("results/dry_run.json"))
    args = p.parse_args()
    snake = [sys.executable, "-m", "snakemake"]
    dry = [*snake, "-n", "reproduce", "--cores", "1", "-q", "--config", f"profile={args.profile}"]
    bare = [*snake, "--version"]
    times: dict[str, list[float]] = {"dry_run": [], "bare": []}
    for _ in range(args.repeats):  # interleaved, so that drift hits both alike
        times["dry_run"].append(_time(dry)[0])
        times["bare"].append(_time(bare)[0])
    _, log = _time(dry, {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    imported = {line.rsplit("|", 1)[-1].strip() for line in log.splitlines() if "|" in line}
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "profile": args.profile,
        "repeats": args.repeats,
        "seconds": times,
        "median_s": med,
        "ratio_dry_run_to_bare": med["dry_run"] / med["bare"],
        "heavy_imports": sorted(imported & set(HEAVY)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"| command | median s ({args.repeats} runs) |\n| --- | --- |")
    print(f"| snakemake -n reproduce ({args.profile}) | {med['dry_run']:.2f} |")
    print(f"| snakemake --version | {med['bare']:.2f} |")
    heavy = ", ".join(out["heavy_imports"]) or "none"
    print(f"ratio {out['ratio_dry_run_to_bare']:.2f}; heavy imports while parsing: {heavy}")


if __name__ == "__main__":
    main()
