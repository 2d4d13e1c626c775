"""Stacked model calls: the time of a training step with a step's model calls stacked into fewer,
larger ones, against one call each, and whether the run is the same. Two options do this:
DiffusionNFT's ``noisings_per_call`` (a teacher, ``--task``) and DiffusionOPD's
``steps_per_call`` (``--run opd``, distilling the teachers of ``--teachers``).

Trains the run for ``--steps`` optimizer steps once per setting (``--per-call``, default ``1 0``:
one call per noising or step, then all in one), in alternating order over ``--repeats`` rounds,
and reads each run's per-step wall clock from its training log (``train/wall_seconds`` at the
last step minus at the first: model loading, prompt encoding and checkpoint writing are left
out). Reports each setting's seconds per step, its ratio
to the first setting measured in the same round, and the largest difference of the logged
per-step loss and reward from the first setting's (the stacked run is the same computation; only
float summation order differs).

    python benchmarks/call_stacking.py --profile mini --task composition --steps 48 \\
        --out benchmarks/results/nft_stacking.json
    python benchmarks/call_stacking.py --profile mini --run opd --steps 24 \\
        --teachers results/mini/teachers --out benchmarks/results/opd_stacking.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="mini")
    p.add_argument("--set", dest="set_items", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--task", default="composition", help="the teacher trained (NFT)")
    p.add_argument("--run", default="", help="opd (or an ablation): stack its trained steps")
    p.add_argument("--teachers", type=Path, help="<dir>/<task>/final: the teachers of --run")
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--per-call", type=int, nargs="+", default=[1, 0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args()


def _log(run_dir: Path) -> dict[str, list[float]]:
    import pandas as pd

    m = pd.read_csv(run_dir / "metrics.csv")
    return {
        k: m[m["metric"] == k].sort_values("step", kind="stable")["value"].astype(float).tolist()
        for k in ("loss", "reward", "wall_seconds")
        if (m["metric"] == k).any()
    }


def _setting(args: argparse.Namespace, k: int) -> tuple[str, list[str], dict[str, Path]]:
    """The run, its overrides and its teachers for ``k`` calls per step."""
    if not args.run:
        section = f"tasks.{args.task}.teacher"
        option = "noisings_per_call"
        return f"teacher_{args.task}", _overrides(section, option, k, args.steps), {}
    if args.teachers is None:
        raise SystemExit(f"--run {args.run} distils teachers: pass --teachers")
    teachers = {p.name: p / "final" for p in sorted(args.teachers.iterdir()) if p.is_dir()}
    items = _overrides(f"methods.{args.run}", "steps_per_call", k, args.steps)
    return args.run, items, teachers


def _overrides(section: str, option: str, k: int, steps: int) -> list[str]:
    return [
        f"{section}.{option}={k}",
        f"{section}.steps={steps}",
        f"{section}.checkpoint_every={steps}",
    ]


def main() -> None:
    import torch

    from opd.config import load_config
    from opd.training.loop import train_run

    args = _parse()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="call_stacking_"))
    rounds: list[dict[str, Any]] = []
    for r in range(args.repeats):
        order = args.per_call if r % 2 == 0 else list(reversed(args.per_call))
        logs = {}
        for k in order:
            run, items, teachers = _setting(args, k)
            items = [*args.set_items, f"threads={args.threads}", "progress=false", *items]
            profile = load_config(args.profile, set_items=items)
            run_dir = work / f"round{r}_per_call{k}"
            t0 = time.time()
            train_run(profile, run, 0, run_dir, progress=False, teachers=teachers)
            logs[k] = _log(run_dir) | {"process_seconds": time.time() - t0}
        ref = logs[args.per_call[0]]
        for k in args.per_call:
            wall = logs[k]["wall_seconds"]
            per_step = (wall[-1] - wall[0]) / (len(wall) - 1)
            ref_wall = ref["wall_seconds"]
            ref_step = (ref_wall[-1] - ref_wall[0]) / (len(ref_wall) - 1)
            diff = {
                q: max(abs(a - b) for a, b in zip(logs[k][q], ref[q], strict=True))
                for q in ("loss", "reward")
                if q in ref
            }
            rounds.append(
                {
                    "round": r,
                    "per_call": k,
                    "seconds_per_step": per_step,
                    "ratio": per_step / ref_step,
                    "max_abs_diff": diff,
                    "process_seconds": logs[k]["process_seconds"],
                }
            )
    summary = {
        k: {
            "seconds_per_step": statistics.mean(
                x["seconds_per_step"] for x in rounds if x["per_call"] == k
            ),
            "ratio": statistics.mean(x["ratio"] for x in rounds if x["per_call"] == k),
        }
        for k in args.per_call
    }
    result = {
        "argv": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "rounds": rounds,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'calls per step':>14}  {'s/step':>7}  {'ratio':>6}  max |d logged value|")
    for x in rounds:
        d = ", ".join(f"{q} {v:.2g}" for q, v in x["max_abs_diff"].items())
        print(f"{x['per_call']:>14}  {x['seconds_per_step']:7.3f}  {x['ratio']:6.3f}  {d}")


if __name__ == "__main__":
    main()
