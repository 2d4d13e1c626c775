"""``opd variance``: the measured gradient-variance study; ``opd plot-variance``: its figure.

``opd variance --config C --out results/<p>/tables/grad_variance.csv --teacher TASK=DIR [...]
[--figure-dir results/<p>/figures]`` loads the base model, attaches the teacher adapter of the
config's ``variance.task`` and a fresh student adapter at the base model (LoRA ``B = 0``, rank
from ``model.lora``, as at the start of distillation), and runs
:func:`opd.analysis.variance_study` with the config's ``variance`` keys (``noise_levels``,
``batch_sizes``, ``draws``, ``task``, optional ``steps``, ``estimators``, ``seed``, ``prompts``:
how many of the task's training prompts, default 8), the profile's sampling grid and CFG scales
(student: ``sampling.guidance``; teacher: the task's ``teacher.guidance``) and the task's training
reward for the GRPO reference. With ``--figure-dir`` it also writes ``grad_variance.png/.pdf``
and the generated caption (``grad_variance.caption.txt`` / ``.rst``).
``opd plot-variance --config C --table CSV --out-dir results/<p>`` draws the figure from a
written table (into ``<out-dir>/figures``, or ``--figure-dir``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from opd.commands._common import add_config_args, load, setup_threads

FIGURE = "grad_variance"


def _teacher(item: str) -> tuple[str, Path]:
    if "=" not in item:
        raise argparse.ArgumentTypeError(f"--teacher expects TASK=ADAPTER_DIR, got {item!r}")
    task, path = item.split("=", 1)
    return task, Path(path)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("variance", help="measure the gradient variance of the OPD estimators")
    add_config_args(p)
    p.add_argument("--out", type=Path, required=True, help="CSV table to write")
    p.add_argument("--teacher", type=_teacher, action="append", default=[], metavar="TASK=DIR")
    p.add_argument("--figure-dir", type=Path, default=None, help="also write the figure here")
    q = sub.add_parser("plot-variance", help="draw the gradient-variance figure from its table")
    add_config_args(q)
    q.add_argument("--table", type=Path, required=True, help="CSV written by opd variance")
    q.add_argument("--out-dir", type=Path, default=None, help="results root (figures/ inside)")
    q.add_argument("--figure-dir", type=Path, default=None, help="folder of the figure files")
    q.set_defaults(func=run_plot)
    return p


def write_figure(df, figure_dir: Path) -> list[Path]:
    """Figure (PNG, PDF) and generated caption of the table ``df`` into ``figure_dir``."""
    from opd.analysis.plots import (
        grad_variance_figure,
        save_figure,
        variance_caption,
        write_caption,
    )

    stem = Path(figure_dir) / FIGURE
    return [
        *save_figure(grad_variance_figure(df), stem),
        *write_caption(variance_caption(df), stem),
    ]


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from opd.analysis.variance import variance_study
    from opd.training.context import load_base_model, load_prompts, make_reward

    cfg = load(args)
    setup_threads(cfg)
    vcfg = dict(cfg.get("variance") or {})
    task = str(vcfg.get("task") or next(iter(cfg["tasks"])))
    if task not in cfg["tasks"]:
        raise SystemExit(f"opd variance: variance.task {task!r} is not a task of the profile")
    teachers = dict(args.teacher)
    if task not in teachers:
        raise SystemExit(f"opd variance: needs --teacher {task}=ADAPTER_DIR (variance.task)")
    tic = time.perf_counter()
    model = load_base_model(cfg)
    teacher = f"teacher_{task}"
    if not model.has_adapter(teacher):
        model.load_adapter(teacher, teachers[task])
    lora = cfg["model"].get("lora", {})
    model.add_adapter(
        "student", rank=int(lora.get("rank", 8)), alpha=float(lora.get("alpha", 16)), seed=0
    )
    n_prompts = int(vcfg.get("prompts", 8))
    prompts, metadata = load_prompts(task, "train", cfg)
    prompts, metadata = prompts[:n_prompts], metadata[:n_prompts]
    estimators = vcfg.get("estimators")
    reward_fn = None
    if estimators is None or "grpo" in estimators:
        reward_fn = make_reward(cfg["tasks"][task]["reward"], cfg)
    sampling = cfg.get("sampling", {})
    print(
        f"opd variance: model and teacher loaded in {time.perf_counter() - tic:.1f} s", flush=True
    )
    df = variance_study(
        model,
        teacher,
        "student",
        prompts,
        metadata=metadata,
        noise_levels=[float(a) for a in vcfg.get("noise_levels", [0.0, 0.7])],
        batch_sizes=[int(b) for b in vcfg.get("batch_sizes", [1, 4])],
        draws=int(vcfg.get("draws", 64)),
        steps=vcfg.get("steps"),
        num_steps=int(sampling.get("num_steps", 10)),
        shift=float(sampling.get("shift", 3.0)),
        teacher_guidance=float(cfg["tasks"][task].get("teacher", {}).get("guidance", 1.0)),
        student_guidance=float(sampling.get("guidance", 4.5)),
        seed=int(vcfg.get("seed", 0)),
        reward_fn=reward_fn,
        estimators=estimators,
        n_boot=int(vcfg.get("bootstrap", 200)),
        log=lambda msg: print(msg, flush=True),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(out)
    for item in df.attrs.get("skipped", []):
        print(f"opd variance: undefined, no rows: {item}", flush=True)
    print(
        f"opd variance: {len(df)} rows -> {out} (study {df.attrs['wall_seconds']:.1f} s, "
        f"total {time.perf_counter() - tic:.1f} s)",
        flush=True,
    )
    if args.figure_dir is not None:
        for path in write_figure(pd.read_csv(out), args.figure_dir):
            print(f"opd variance: wrote {path}", flush=True)
    return 0


def run_plot(args: argparse.Namespace) -> int:
    import pandas as pd

    load(args)  # validates the config the workflow passes
    if args.figure_dir is None and args.out_dir is None:
        print("opd plot-variance: give --out-dir or --figure-dir", file=sys.stderr)
        return 2
    figure_dir = args.figure_dir or Path(args.out_dir) / "figures"
    for path in write_figure(pd.read_csv(args.table), figure_dir):
        print(f"opd plot-variance: wrote {path}", flush=True)
    return 0
