"""Learning curve of one single-task teacher: its task's metrics against samples seen.

Trains ``teacher_<task>`` of a profile (with ``--set`` overrides, e.g. another method, lr or
budget) and evaluates every checkpoint on ``--prompts`` prompts of one split (``validation`` for
calibration: world, reward and budget choices are tuned there, never on test prompts) over
``--seeds`` evaluation seeds, at one or more CFG scales. The base model is evaluated the same way
(with and without CFG), so each row carries the paired gain over the base with CFG, its standard
error over evaluation seeds, and the fraction of headroom it closes. With ``--control`` the same
run is repeated with the matched-control reward (0/1 draws at the real reward's rate: same
advantage sizes, no signal), which tells learning from drift.

    python benchmarks/teacher_curve.py --profile mini --task text --steps 64 --every 16 \
        --set 'tasks.text.teacher={method: nft, guidance: 1.0, lr: 1.0e-3}' --control \
        --out benchmarks/results/curves/text_nft.json

Writes JSON (one row per run x checkpoint x guidance x column) and prints a table. Stage-1
artifacts (base model, learned scorers) must exist at the profile's ``paths``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="mini")
    p.add_argument("--set", dest="set_items", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--task", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--every", type=int, required=True, help="checkpoint (and evaluate) every")
    p.add_argument("--split", default="validation")
    p.add_argument("--prompts", type=int, default=96, help="prompts per evaluation seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[2000, 2001, 2002, 2003])
    p.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=None,
        help="CFG scales to evaluate the teacher at (default: its own)",
    )
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--control", action="store_true", help="also run the matched control")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args()


class TaskEvaluator:
    """The evaluation of one task's columns on a fixed prompt subset of one split."""

    def __init__(
        self, model: Any, profile: dict[str, Any], task: str, split: str, n: int, seeds: list[int]
    ) -> None:
        from opd.evaluation import Evaluator

        one = {"images_per_prompt": 1, "intermediate_images_per_prompt": 1}
        profile = {**profile, "eval": {**profile["eval"], "seeds": seeds, "prompts_per_task": n}}
        profile["eval"].update(one)
        cols = {c: s for c, s in profile["benchmarks"].items() if s["task"] == task}
        profile["benchmarks"] = cols
        self.ev = Evaluator(model, profile, split=split)
        self.n = len(self.ev.prompts[task][0])

    def __call__(self, adapter: str | None, guidance: float) -> dict[str, list[float]]:
        rows, _ = self.ev.evaluate(adapter, guidance)
        out: dict[str, list[float]] = {}
        for r in rows:
            out.setdefault(r["column"], []).append(float(r["value"]))
        return out


def column_ceilings(profile: dict[str, Any], task: str, split: str, n: int) -> dict[str, float]:
    """Each of the task's columns' ceiling: the config's upper bound, else the best of 16
    clean renders of the same prompts."""
    from opd.validation import prompt_ceilings

    cols = {c: s for c, s in profile["benchmarks"].items() if s["task"] == task}
    out = {c: float(s["bounds"][1]) for c, s in cols.items() if s.get("bounds")}
    rest = {c: s for c, s in cols.items() if c not in out}
    if rest:
        sub = {**profile, "benchmarks": rest, "eval": {**profile["eval"], "prompts_per_task": n}}
        out.update(prompt_ceilings(sub, split=split))
    return out


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard error of the per-seed differences ``a - b`` (same prompts and seeds)."""
    from opd.analysis.properties import standard_error

    d = np.asarray(a) - np.asarray(b)
    return float(d.mean()), standard_error(d)


def _row(
    variant: str,
    step: int,
    samples: int,
    guidance: float,
    column: str,
    per_seed: list[float],
    **extra: Any,
) -> dict[str, Any]:
    return {
        "variant": variant,
        "step": step,
        "samples": samples,
        "guidance": guidance,
        "column": column,
        "mean": float(np.mean(per_seed)),
        "per_seed": per_seed,
        **extra,
    }


def main() -> None:
    import torch

    from opd.config import load_config
    from opd.evaluation import adapter_kwargs, eval_guidance_of
    from opd.training import checkpoint as ckpt
    from opd.training.base import STUDENT
    from opd.training.context import load_base_model
    from opd.training.loop import train_run

    args = _parse()
    torch.set_num_threads(args.threads)
    set_items = [*args.set_items, f"threads={args.threads}", "progress=false"]
    run = f"teacher_{args.task}"
    variants = {"reward": set_items}
    if args.control:
        variants["control"] = [*set_items, f"tasks.{args.task}.teacher.reward_control=matched"]
    base_profile = load_config(args.profile, set_items=set_items)
    model = load_base_model(base_profile)
    ev = TaskEvaluator(model, base_profile, args.task, args.split, args.prompts, args.seeds)
    own = eval_guidance_of(base_profile, run)
    scales = args.guidance or [own]
    cfg_scale = float(base_profile["eval"]["guidance"])
    base = {g: ev(None, g) for g in sorted({1.0, cfg_scale, *scales})}
    work = args.keep or Path(tempfile.mkdtemp(prefix="teacher_curve_"))
    rows: list[dict[str, Any]] = []
    for g, vals in base.items():
        rows += [_row("base", 0, 0, g, col, v) for col, v in vals.items()]
    for variant, items in variants.items():
        profile = load_config(
            args.profile,
            set_items=[
                *items,
                f"tasks.{args.task}.teacher.steps={args.steps}",
                f"tasks.{args.task}.teacher.checkpoint_every={args.every}",
            ],
        )
        run_dir = work / f"{variant}_seed{args.train_seed}"
        t0 = time.time()
        train_run(profile, run, args.train_seed, run_dir, progress=False)
        train_s = time.time() - t0
        for path in ckpt.list_checkpoints(run_dir / "checkpoints"):
            tensors, manifest = ckpt.load_checkpoint(path)
            if not model.has_adapter(STUDENT):  # the same adapter shape for every variant
                model.add_adapter(STUDENT, **adapter_kwargs(manifest.get("adapter") or {}))
            model.load_adapter_state_dict(STUDENT, tensors["ema"])
            step = int(manifest["step"])
            samples = int((manifest.get("compute") or {}).get("samples", 0))
            for g in scales:
                rows += [
                    _row(variant, step, samples, g, col, v, train_s=train_s)
                    for col, v in ev(STUDENT, g).items()
                ]
    # paired gains over the base with CFG; headroom to the column's bound (compose, text) or
    # to the best of 16 clean renders of the same prompts (learned scorers), capped at 1
    ceiling = column_ceilings(base_profile, args.task, args.split, args.prompts)
    for r in rows:
        b_cfg = base[cfg_scale][r["column"]]
        r["gain_vs_cfg"], r["se_vs_cfg"] = paired(r["per_seed"], b_cfg)
        room = ceiling[r["column"]] - float(np.mean(b_cfg))
        r["ceiling"] = ceiling[r["column"]]
        r["frac_headroom"] = min(r["gain_vs_cfg"] / room, 1.0) if room > 0 else math.nan
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "argv": vars(args) | {"out": str(args.out), "keep": str(args.keep)},
                "prompts": ev.n,
                "rows": rows,
            },
            indent=1,
            default=str,
        )
    )
    print(
        f"{'variant':8} {'step':>5} {'samples':>7} {'cfg':>4} {'column':8} {'mean':>7} "
        f"{'vs CFG base':>12} {'frac':>6}"
    )
    for r in rows:
        print(
            f"{r['variant']:8} {r['step']:5d} {r['samples']:7d} {r['guidance']:4.1f} "
            f"{r['column']:8} {r['mean']:7.3f} {r['gain_vs_cfg']:+7.3f}+-{r['se_vs_cfg']:.3f} "
            f"{r.get('frac_headroom', math.nan):6.2f}"
        )
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
