"""``opd evaluate``: score every checkpoint of a run (or the base model, or a published adapter)
on every benchmark."""

from __future__ import annotations

import argparse
from pathlib import Path

from opd.commands._common import add_config_args, load, setup_threads


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate", help="evaluate a run's checkpoints (or --base) on the benchmarks"
    )
    add_config_args(p)
    p.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="a run folder: its method and evaluation CFG are its own (its run.json), printed",
    )
    p.add_argument("--run", default=None, help="the run's name (as in its run.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--base", action="store_true", help="evaluate the base model, with/without CFG")
    p.add_argument(
        "--adapter",
        type=Path,
        default=None,
        help="evaluate this peft LoRA folder (a published teacher) as --run, instead of --run-dir",
    )
    p.add_argument("--out", type=Path, required=True, help="eval CSV to write")
    p.add_argument(
        "--base-eval",
        type=Path,
        default=None,
        help="the base model's eval CSV: checkpoints whose adapter is the identity reuse its rows",
    )
    p.add_argument("--samples", type=Path, default=None, help="npz of sample images to write")
    p.add_argument(
        "--released",
        default=None,
        metavar="NAME",
        help="evaluate the released adapter NAME (its fetched --adapter folder) on released.base "
        "at the CFG it was trained for; writes a record of the protocol beside --out",
    )
    p.add_argument(
        "--released-base",
        action="store_true",
        help="evaluate released.base without and with CFG; writes a record beside --out",
    )
    p.add_argument(
        "--scorer-image",
        action="append",
        default=[],
        metavar="SCORER=WHERE",
        help="where a scorer runs (its container image), recorded with a released evaluation",
    )
    return p


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"opd evaluate: {flag} takes NAME=VALUE, got {item!r}")
        out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    from opd.evaluation import evaluate_adapter, evaluate_base, evaluate_run

    cfg = load(args)
    setup_threads(cfg)
    images = _pairs(args.scorer_image, "--scorer-image")
    if args.released_base or args.released:
        from opd.published import evaluate_released, evaluate_released_base

        if args.released_base:
            evaluate_released_base(cfg, args.out, images)
        elif args.adapter is None:
            raise SystemExit("opd evaluate: --released needs --adapter (the fetched folder)")
        else:
            evaluate_released(cfg, args.released, args.adapter, args.out, images)
        return 0
    if args.base:
        evaluate_base(cfg, args.out, args.samples)
        return 0
    if args.adapter is not None:
        if args.run is None:
            raise SystemExit("opd evaluate: --adapter needs --run (e.g. teacher_text)")
        evaluate_adapter(cfg, args.adapter, args.run, args.out, args.samples, seed=args.seed)
        return 0
    if args.run_dir is None or args.run is None:
        raise SystemExit("opd evaluate: --run-dir and --run are required unless --base is given")
    evaluate_run(
        cfg,
        args.run_dir,
        args.run,
        args.seed,
        args.out,
        args.samples,
        progress=bool(cfg.get("progress", True)),
        base_eval=args.base_eval,
    )
    return 0
