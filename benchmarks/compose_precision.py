"""Where compose's standard error comes from: per GenEval tag, the SE of one evaluation seed's
value over prompts (a prompt's images one cluster, as ``opd.evaluation.column_se``) beside the
part that image noise alone makes (the mean within-prompt variance over images per prompt), for
the base model of a finished run on every compose test prompt.

The overall value is the mean of the tags' means, so its SE is ``sqrt(sum se_tag^2) / T``. A tag
whose every content is already in the test split cannot be narrowed by more test prompts; only
its image-noise part shrinks with more images per prompt.

    python benchmarks/compose_precision.py --results results/mini --images 4 \\
        --out benchmarks/results/mini19_compose_precision.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, required=True, help="a finished run's results/<profile>")
    p.add_argument("--profile", default="mini")
    p.add_argument("--images", type=int, default=4, help="images per prompt and seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[1000, 1001])
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args()


def main() -> None:
    import numpy as np
    import pandas as pd
    import torch

    from opd.config import load_config
    from opd.evaluation import Evaluator
    from opd.rewards.train_scorers import world_config
    from opd.training.context import load_base_model
    from opd.worlds.mini import prompts as world_prompts

    args = _parse()
    torch.set_num_threads(1)
    cfg = load_config(args.profile)
    cfg["paths"]["base"] = str(args.results / "base")
    cfg["paths"]["scorers"] = str(args.results / "scorers")
    cfg["eval"].update(prompts_per_task=10**6, images_per_prompt={"composition": args.images})
    cfg["eval"]["seeds"] = list(args.seeds)
    cfg["benchmarks"] = {"compose": cfg["benchmarks"]["compose"]}
    world = world_config(cfg)
    contents = {t: len(c) for t, c in world_prompts._composition_contents(world).items()}
    evaluator = Evaluator(load_base_model(cfg), cfg)
    prompts, meta = evaluator.sets["composition", True]
    rows = []
    for seed, images in zip(
        args.seeds, evaluator.generate("composition", None, args.guidance), strict=True
    ):
        scores = np.asarray(evaluator.scorers["compose"](images, prompts, meta), dtype=np.float64)
        frame = pd.DataFrame({"tag": [m["tag"] for m in meta], "prompt": prompts, "s": scores})
        for tag, g in frame.groupby("tag", sort=False):
            by_prompt = g.groupby("prompt", sort=False)["s"]
            n = by_prompt.ngroups
            rows.append(
                {
                    "eval_seed": seed,
                    "tag": tag,
                    "prompts": n,
                    "contents_in_world": contents.get(tag),
                    "mean": float(g["s"].mean()),
                    "se": math.sqrt(by_prompt.mean().var(ddof=1) / n),
                    "se_images": math.sqrt(by_prompt.var(ddof=1).mean() / args.images / n),
                }
            )
    table = pd.DataFrame(rows)
    overall = [
        {
            "eval_seed": seed,
            "se": math.sqrt((g["se"] ** 2).sum()) / len(g),
            "se_images": math.sqrt((g["se_images"] ** 2).sum()) / len(g),
        }
        for seed, g in table.groupby("eval_seed")
    ]
    result = {
        "argv": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "tags": rows,
        "overall": overall,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(pd.DataFrame(overall).to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
