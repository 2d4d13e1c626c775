"""Recovery curve of a DiffusionOPD student on validation prompts, for calibrating the budgets.

Trains run ``--run`` (default ``opd``) of the profile against given teacher adapters and
evaluates the base (with and without CFG), each teacher at the CFG it trained with, and every
student checkpoint at the student's CFG, on the same stratified validation prompts and
evaluation seeds per task. For every task it prints each checkpoint's reward-weighted capped
fraction of the CFG base's headroom (the definition of property 3) beside the teacher's, and
their ratio, the recovery. Writes the rows to ``--out`` (JSON). Not part of the workflow: a
tool for choosing the student's steps before any baseline is run.

    python benchmarks/student_curve.py --profile mini --set ... \\
        --teacher composition=DIR --teacher text=DIR --teacher aesthetics=DIR \\
        --steps 128 --every 32 --out benchmarks/results/teacher_curves/x_student.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_curve import TaskEvaluator, column_ceilings, paired


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--profile", default="mini")
    p.add_argument("--set", dest="set_items", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--teacher", action="append", required=True, metavar="TASK=DIR")
    p.add_argument("--run", default="opd", help="a key of the profile's methods")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--every", type=int, required=True)
    p.add_argument("--split", default="validation")
    p.add_argument("--prompts", type=int, nargs="+", default=[96], help="per task, or one for all")
    p.add_argument("--seeds", type=int, nargs="+", default=[2000, 2001, 2002, 2003])
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path, required=True, help="the run folder")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args()


def weighted_fraction(fracs: dict[str, float], weights: dict[str, float]) -> float:
    """The task's reward-weighted mean of its own columns' capped fractions (``weights``:
    :func:`opd.analysis.properties.column_weights`)."""
    return sum(w * fracs[c] for c, w in weights.items()) / sum(weights.values())


def main() -> None:
    import torch

    from opd.analysis.properties import column_weights
    from opd.config import load_config
    from opd.evaluation import adapter_kwargs, eval_guidance_of
    from opd.training import checkpoint as ckpt
    from opd.training.base import STUDENT, run_guidance
    from opd.training.context import load_base_model
    from opd.training.loop import train_run

    args = _parse()
    torch.set_num_threads(args.threads)
    teachers = dict(item.split("=", 1) for item in args.teacher)
    profile = load_config(
        args.profile,
        set_items=[
            *args.set_items,
            f"threads={args.threads}",
            "progress=false",
            f"methods.{args.run}.steps={args.steps}",
            f"methods.{args.run}.checkpoint_every={args.every}",
        ],
    )
    tasks = list(profile["tasks"])
    prompts = dict(
        zip(
            tasks,
            args.prompts * len(tasks) if len(args.prompts) == 1 else args.prompts,
            strict=True,
        )
    )
    cfg_g = float(profile["eval"]["guidance"])  # gains are over the base with CFG
    student_g = eval_guidance_of(profile, args.run)
    t0 = time.time()
    train_run(profile, args.run, args.train_seed, args.work, teachers=teachers, progress=False)
    train_s = time.time() - t0

    model = load_base_model(profile)
    for task, path in teachers.items():
        model.load_adapter(f"teacher_{task}", path)
    evals = {t: TaskEvaluator(model, profile, t, args.split, prompts[t], args.seeds) for t in tasks}
    rows: list[dict[str, Any]] = []

    def record(variant: str, step: int, g: float, adapter: str | None, task: str) -> None:
        for col, v in evals[task](adapter, g).items():
            rows.append(
                {
                    "variant": variant,
                    "step": step,
                    "guidance": g,
                    "task": task,
                    "column": col,
                    "per_seed": v,
                    "mean": float(np.mean(v)),
                }
            )

    for task in tasks:
        for g in dict.fromkeys([cfg_g, 1.0, student_g]):
            record("base", 0, g, None, task)
        record("teacher", 0, run_guidance(profile, f"teacher_{task}"), f"teacher_{task}", task)
    for path in ckpt.list_checkpoints(args.work / "checkpoints"):
        tensors, manifest = ckpt.load_checkpoint(path)
        if not model.has_adapter(STUDENT):
            model.add_adapter(STUDENT, **adapter_kwargs(manifest.get("adapter") or {}))
        model.load_adapter_state_dict(STUDENT, tensors["ema"])
        for task in tasks:
            record("student", int(manifest["step"]), student_g, STUDENT, task)

    base = {
        (r["task"], r["column"]): r["per_seed"]
        for r in rows
        if r["variant"] == "base" and r["guidance"] == cfg_g
    }
    ceiling = {t: column_ceilings(profile, t, args.split, prompts[t]) for t in tasks}
    for r in rows:
        b = base[(r["task"], r["column"])]
        r["gain"], r["se"] = paired(r["per_seed"], b)
        room = ceiling[r["task"]][r["column"]] - float(np.mean(b))
        r["frac"] = min(r["gain"] / room, 1.0) if room > 0 else math.nan
    print(f"training {train_s:.0f} s")
    print(
        f"{'task':11} {'variant':8} {'step':>5} {'cfg':>4} {'fraction':>8} {'recovery':>8}  columns"
    )
    for task in tasks:
        weights = column_weights(profile, task)
        teacher_frac = None
        for key in dict.fromkeys(
            (r["variant"], r["step"], r["guidance"]) for r in rows if r["task"] == task
        ):
            sel = [
                r
                for r in rows
                if r["task"] == task and (r["variant"], r["step"], r["guidance"]) == key
            ]
            frac = weighted_fraction({r["column"]: r["frac"] for r in sel}, weights)
            if key[0] == "teacher":
                teacher_frac = frac
            rec = frac / teacher_frac if key[0] == "student" and teacher_frac else math.nan
            cols = " ".join(
                f"{r['column']}={r['mean']:.3f}({r['gain']:+.3f}+-{r['se']:.3f})" for r in sel
            )
            print(f"{task:11} {key[0]:8} {key[1]:5d} {key[2]:4.1f} {frac:8.2f} {rec:8.2f}  {cols}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "argv": vars(args) | {"out": str(args.out), "work": str(args.work)},
                "train_s": train_s,
                "rows": rows,
            },
            indent=1,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
