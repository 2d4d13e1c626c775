"""Arguments shared by the sub-commands: the config file and ``--set`` overrides."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from opd.config import load_config, load_resolved


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="resolved config file written by the workflow (default: load --profile)",
    )
    p.add_argument("--profile", default=None, help="profile name (smoke, mini, paper)")
    p.add_argument(
        "--set",
        dest="set_items",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (dotted path, YAML value); repeatable",
    )


def load(args: argparse.Namespace) -> dict[str, Any]:
    if args.config is not None:
        return load_resolved(args.config, set_items=args.set_items)
    return load_config(args.profile, set_items=args.set_items)


def setup_threads(cfg: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(int(cfg.get("threads", 1)))


def add_metrics_args(p: argparse.ArgumentParser, out_help: str) -> None:
    """``--metrics`` (the tidy metrics.csv) and ``--out-dir`` of the commands that read it."""
    p.add_argument("--metrics", type=Path, required=True, help="metrics.csv of `opd collect`")
    p.add_argument("--out-dir", type=Path, required=True, help=out_help)


def add_bounds_arg(p: argparse.ArgumentParser) -> None:
    """``--bounds``: the world validation's floors and ceilings for the Average."""
    p.add_argument(
        "--bounds",
        type=Path,
        default=None,
        help="world_bounds.json of the world validation: the Average's floor and ceiling",
    )
