"""Is property 3 luck? Each teacher trained again with another training seed, and every teacher
scored again with other evaluation seeds, on the test prompts of a finished reproduction.

Reads a reproduction's resolved config, its ``metrics.csv`` and its teachers
(``results/<profile>/``); trains each task's teacher again with ``--train-seed`` (its own config,
two teachers at a time on one thread each), and evaluates at the final checkpoint's sizes:

- ``seed<N>``: the new teachers on the configured evaluation seeds, against the run's own base
  rows;
- ``eval_seeds``: the run's teachers and the base again on ``--eval-seeds`` (other noise);
- ``seed<N>_eval_seeds``: the new teachers on those other evaluation seeds.

For each it writes property 3's rows (``opd.analysis.properties.property_checks``, the same code
as ``tables/properties.*``) into the JSON and prints them beside the run's own verdicts.

    python benchmarks/teacher_seeds.py --results results/mini --train-seed 1 \\
        --out benchmarks/results/mini19_teacher_seeds.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=Path("results/mini"))
    p.add_argument("--train-seed", type=int, default=1)
    p.add_argument("--eval-seeds", type=int, nargs="+", default=[2000, 2001, 2002, 2003])
    p.add_argument("--jobs", type=int, default=2, help="teachers trained side by side")
    p.add_argument("--work", type=Path, default=None, help="folder for the new teachers")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args()


def _train(config: str, task: str, seed: int, out: str) -> tuple[str, float]:
    import torch

    from opd.config import load_resolved
    from opd.training.loop import train_run

    torch.set_num_threads(1)
    cfg = load_resolved(Path(config), ["threads=1", "progress=false"])
    t0 = time.time()
    if not (Path(out) / "DONE").exists():
        train_run(cfg, f"teacher_{task}", seed, Path(out), progress=False)
    return task, time.time() - t0


def _rows(run: str, seed: int, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "run": run,
            "seed": seed,
            "step": 1,
            "metric": r["column"],
            "eval_seed": r["eval_seed"],
            "value": r["value"],
            "n": r["n"],
            "se": r["se"],
        }
        for r in results
    ]


def project_root(results: Path, relative: str) -> Path:
    """The folder a run's relative paths start from: ``results`` less the config's
    ``paths.results`` (e.g. ``/tmp/clone`` for ``/tmp/clone/results/mini``)."""
    rel = Path(relative)
    if rel.is_absolute():
        return Path("/")
    if results.parts[-len(rel.parts) :] != rel.parts:
        raise SystemExit(f"{results} does not end with the config's paths.results {relative!r}")
    return results.parents[len(rel.parts) - 1]


def main() -> None:
    import pandas as pd
    import torch

    from opd.analysis.properties import ceilings, property_checks
    from opd.config import load_resolved
    from opd.evaluation import Evaluator, eval_guidance_of
    from opd.reporting.collect import read_metrics
    from opd.training.base import STUDENT
    from opd.training.context import load_base_model

    args = _parse()
    torch.set_num_threads(args.jobs)
    args.results, args.out = args.results.resolve(), args.out.resolve()
    args.work = args.work.resolve() if args.work else None
    config = args.results / "config.yaml"
    cfg = load_resolved(config, ["progress=false"])
    # The resolved config's paths are relative to the run's project folder, not to ours: a
    # base found from here would be another run's (a stale results/ in this checkout).
    os.chdir(project_root(args.results, cfg["paths"]["results"]))
    tasks = list(cfg["tasks"])
    work = args.work or args.results / f"teacher_seed{args.train_seed}"
    t0 = time.time()
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(_train, str(config), t, args.train_seed, str(work / t)) for t in tasks
        ]
        train_seconds = dict(f.result() for f in futures)
    took = time.time() - t0
    print(f"[teacher_seeds] trained {tasks} with seed {args.train_seed} in {took:.0f} s")

    metrics = read_metrics(args.results / "metrics.csv")
    evals = metrics[metrics["eval_seed"].notna()]
    own = evals[evals["run"].isin(["base_cfg", "base_nocfg"])]
    model = load_base_model(cfg)
    scored: dict[str, list[dict[str, Any]]] = {}
    configured = [int(s) for s in cfg["eval"]["seeds"]]
    for label, seeds in (("configured", configured), ("other", args.eval_seeds)):
        ev = Evaluator(model, {**cfg, "eval": {**cfg["eval"], "seeds": seeds}})
        rows: list[dict[str, Any]] = []
        if label == "other":
            for run, g in (("base_nocfg", 1.0), ("base_cfg", float(cfg["eval"]["guidance"]))):
                rows += _rows(run, 0, ev.evaluate(None, g)[0])
        for task in tasks:
            run = f"teacher_{task}"
            g = eval_guidance_of(cfg, run)
            sources = [(args.train_seed, work / task / "final")]
            if label == "other":
                sources.append((0, args.results / "teachers" / task / "final"))
            for seed, path in sources:
                model.load_adapter(STUDENT, path)
                rows += _rows(run, seed, ev.evaluate(STUDENT, g)[0])
                model.delete_adapter(STUDENT)
        scored[label] = rows

    ceiling = ceilings(cfg, args.results / "tables" / "prompt_ceilings.json")
    columns = ["property", "task", "check", "value", "se", "threshold", "passed"]

    def verdicts(table: pd.DataFrame, seed: int) -> list[dict[str, Any]]:
        # one teacher seed at a time: the property code reads each run's seed-0-or-only rows
        table = table[~table["run"].str.startswith("teacher_") | (table["seed"] == seed)]
        table = table.assign(seed=0)
        out = property_checks(table, cfg, ceiling)
        return out[out["property"] == "3"][columns].to_dict("records")

    configured_rows = pd.concat([own, pd.DataFrame(scored["configured"])], ignore_index=True)
    other_rows = pd.DataFrame(scored["other"])
    result = {
        "argv": {k: str(v) for k, v in vars(args).items()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "train_seconds": train_seconds,
        "variants": {
            "run": verdicts(metrics, 0),
            f"seed{args.train_seed}": verdicts(configured_rows, args.train_seed),
            "eval_seeds": verdicts(other_rows, 0),
            f"seed{args.train_seed}_eval_seeds": verdicts(other_rows, args.train_seed),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"{'variant':<22} {'task':<12} {'fraction':>8} {'SE':>7}  passed")
    for variant, rows in result["variants"].items():
        for r in rows:
            print(f"{variant:<22} {r['task']:<12} {r['value']:8.3f} {r['se']:7.3f}  {r['passed']}")


if __name__ == "__main__":
    main()
