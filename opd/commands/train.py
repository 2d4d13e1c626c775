"""``opd train``: train one run (a configured method or ``teacher_<task>``) with one seed."""

from __future__ import annotations

import argparse
from pathlib import Path

from opd.commands._common import add_config_args, load, setup_threads


def _teacher(item: str) -> tuple[str, Path]:
    if "=" not in item:
        raise argparse.ArgumentTypeError(f"--teacher expects TASK=ADAPTER_DIR, got {item!r}")
    task, path = item.split("=", 1)
    return task, Path(path)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train one run with one seed (resumes if interrupted)")
    add_config_args(p)
    p.add_argument("--run", required=True, help="a key of the config's methods, or teacher_<task>")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--teacher", type=_teacher, action="append", default=[], metavar="TASK=DIR")
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume from a checkpoint written under another configuration",
    )
    p.add_argument(
        "--restart-on-config-change",
        action="store_true",
        help="if the run folder was written under another configuration, set it aside in "
        "stale-<hash>/ and start over (the workflow's choice when an edited config reruns a job)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    return p


def run(args: argparse.Namespace) -> int:
    from opd.training.loop import train_run

    cfg = load(args)
    setup_threads(cfg)
    train_run(
        cfg,
        args.run,
        args.seed,
        args.out,
        dict(args.teacher),
        allow_config_change=args.allow_config_change,
        restart_on_config_change=args.restart_on_config_change,
        progress=bool(cfg.get("progress", True)),
        max_steps=args.max_steps,
    )
    return 0
