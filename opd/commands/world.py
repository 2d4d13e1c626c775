"""``opd world``: fix the mini world (config, version, split sizes, a render fingerprint)."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from opd.commands._common import add_config_args, load


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("world", help="describe and fingerprint the mini world")
    add_config_args(p)
    p.add_argument("--out", type=Path, required=True, help="folder for world.json")
    return p


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from opd.worlds.mini import (  # deferred: numpy off the CLI start (build_parser imports all)
        WORLD_VERSION,
        WorldConfig,
        prompt_set,
        sample_scenes,
    )

    cfg = load(args)
    world = WorldConfig.from_dict(cfg["world"].get("params", {}))
    if cfg["world"].get("version", WORLD_VERSION) != WORLD_VERSION:
        raise SystemExit(
            f"config world.version {cfg['world']['version']!r} != code's {WORLD_VERSION!r}"
        )
    info: dict = {"version": WORLD_VERSION, "config": dataclasses.asdict(world), "tasks": {}}
    for task in ("composition", "text", "aesthetics"):
        train, _ = prompt_set(task, "train", world)
        test, _ = prompt_set(task, "test", world)
        images, _, _ = sample_scenes(task, 8, seed=0, split="test", config=world)
        info["tasks"][task] = {
            "train_prompts": len(train),
            "test_prompts": len(test),
            "render_sha256": hashlib.sha256(images.tobytes()).hexdigest(),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "world.json").write_text(json.dumps(info, indent=1, default=str) + "\n")
    print(
        f"[opd] world {WORLD_VERSION}: "
        + ", ".join(
            f"{t} {v['train_prompts']}/{v['test_prompts']}" for t, v in info["tasks"].items()
        )
    )
    return 0
