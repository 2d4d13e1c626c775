"""What a model's failures are, on one task's validation prompts: the calibration's microscope.

For ``text``: the share of images whose reading is the target letter(s) (``right``), the target's
confusion partner (``partner``, see ``caption_confuse_text``), or anything else (``other``: an
unreadable or another glyph), with the right-rate per target. For ``composition``: the compose
metric per GenEval tag (and their mean, Table 1's compose). The base model is measured with
and without CFG; with ``--run`` every checkpoint of a kept training run
(``teacher_curve.py --keep``) is measured the same way.

    python benchmarks/failure_breakdown.py --profile mini --task text \
        --set 'world.params={...}' --run /tmp/curves/reward_seed0 --out breakdown.json

Writes JSON (one row per model x guidance) and prints it. Stage-1 artifacts must exist.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="mini")
    p.add_argument("--set", dest="set_items", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--task", required=True, choices=["text", "composition"])
    p.add_argument("--split", default="validation")
    p.add_argument("--prompts", type=int, default=None, help="default: 8 text, 164 composition")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 16 text, 4 compose")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 4.5])
    p.add_argument("--run", type=Path, default=None, help="a kept run folder (its checkpoints)")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args()


def text_breakdown(reads: list[str], targets: list[str], alphabet: str) -> dict[str, Any]:
    """Shares of right / partner / other readings, and the right-rate per target."""
    from opd.worlds.mini.corpus import partner

    kinds: collections.Counter[str] = collections.Counter()
    per: dict[str, list[bool]] = collections.defaultdict(list)
    for read, target in zip(reads, targets, strict=True):
        mate = "".join(partner(alphabet, c) for c in target)
        kind = "right" if read == target else ("partner" if read == mate else "other")
        kinds[kind] += 1
        per[target].append(kind == "right")
    n = max(sum(kinds.values()), 1)
    return {
        "shares": {k: kinds[k] / n for k in ("right", "partner", "other")},
        "right_per_target": {t: float(np.mean(v)) for t, v in sorted(per.items())},
        "images": n,
    }


def main() -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from teacher_curve import TaskEvaluator

    from opd.config import load_config
    from opd.evaluation import adapter_kwargs
    from opd.rewards.text import TextReader
    from opd.training import checkpoint as ckpt
    from opd.training.base import STUDENT
    from opd.training.context import build_scorer, load_base_model
    from opd.worlds.mini import WorldConfig

    args = _parse()
    torch.set_num_threads(1)
    text = args.task == "text"
    n = args.prompts or (8 if text else 164)
    seeds = args.seeds or list(range(2000, 2016 if text else 2004))
    profile = load_config(args.profile, set_items=[*args.set_items, "progress=false"])
    world = WorldConfig.from_dict(profile["world"]["params"])
    model = load_base_model(profile)
    ev = TaskEvaluator(model, profile, args.task, args.split, n, seeds)
    prompts, meta = ev.ev.prompts[args.task]
    reader = TextReader(world)
    scorer = None if text else build_scorer("compose", profile)

    def measure(adapter: str | None, label: str, step: int) -> list[dict[str, Any]]:
        out = []
        for g in args.guidance:
            images = ev.ev.generate(args.task, adapter, g)  # one array per evaluation seed
            row: dict[str, Any] = {"model": label, "step": step, "guidance": g}
            if text:
                reads = [r for im in images for r in reader.read(im)]
                targets = [m["text"] for _ in images for m in meta]
                row |= text_breakdown(reads, targets, world.alphabet)
            else:
                by_tag: dict[str, list[float]] = collections.defaultdict(list)
                for im in images:
                    for s, m in zip(scorer(im, prompts, meta), meta, strict=True):
                        by_tag[m["tag"]].append(float(s))
                row["per_tag"] = {t: float(np.mean(v)) for t, v in by_tag.items()}
                row["compose"] = float(np.mean(list(row["per_tag"].values())))  # GenEval's mean
            print(json.dumps(row), flush=True)
            out.append(row)
        return out

    rows = measure(None, "base", 0)
    if args.run is not None:
        for path in ckpt.list_checkpoints(args.run / "checkpoints"):
            tensors, manifest = ckpt.load_checkpoint(path)
            if not model.has_adapter(STUDENT):
                model.add_adapter(STUDENT, **adapter_kwargs(manifest.get("adapter") or {}))
            model.load_adapter_state_dict(STUDENT, tensors["ema"])
            rows += measure(STUDENT, str(args.run), int(manifest["step"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"argv": vars(args), "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
