"""Evaluation of checkpoints on every benchmark column with fixed prompts and seeds.

For each task that a benchmark column scores, ``eval.prompts_per_task`` test prompts (taken
round-robin over the sub-task tags, so that every sub-task is covered), each
``eval.images_per_prompt`` times (one number or one per task; default 1) from its own noise at a
run's final checkpoint and for the base model, ``eval.intermediate_images_per_prompt`` times at
its other checkpoints (default: the same; those may also take fewer prompts,
``eval.intermediate_prompts_per_task``, the first of the same round-robin), are sampled with the
deterministic ODE (``eval.num_steps``, shifted grid) once per evaluation seed; the images are
decoded and scored by every column on that prompt set. A column's value for one evaluation seed
is the scorer's mean, or its own aggregate where it defines one (the compositional score is the
mean of its six sub-task accuracies, as GenEval's overall). Every saved checkpoint of a run is
evaluated (EMA weights), which gives the retention curves. A checkpoint whose adapter is the
identity (plain LoRA with every ``lora_B`` zero: each run's step 0) generates exactly the base
model's images, so with ``base_eval`` its rows are copied from the base model's evaluation at the
same CFG scale instead of being sampled again (one evaluation per run saved; tested bit-exact).

An eval CSV is written atomically with a sidecar ``<name>.csv.sha256`` holding its SHA-256;
:func:`verify_eval_csv` (run by ``opd collect``) refuses a CSV that was truncated or altered
afterwards, naming it. A scorer that returns NaN or Inf stops the evaluation, naming the
scorer, column and checkpoint.
"""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from opd import calltime
from opd.config import ConfigError, build_dataclass, resolve_method
from opd.faults import maybe_fail
from opd.models import PromptEmbeds
from opd.registry import METHODS
from opd.sampling import make_sampler, rollout, time_grid
from opd.training import checkpoint as ckpt
from opd.training.base import STUDENT, eval_guidance
from opd.training.context import build_scorer, load_base_model, load_prompts
from opd.training.loop import read_run_info, run_config_hash

EVAL_FIELDS = [
    "run",
    "method",
    "seed",
    "stage",
    "step",
    "samples",
    "forward_evals",
    "backward_evals",
    "model_evals",
    "wall_seconds",
    "column",
    "task",
    "eval_seed",
    "value",
    "n",
    "se",
]


def stratified_prompts(
    prompts: list[str], meta: list[dict[str, Any]], n: int
) -> tuple[list[str], list[dict[str, Any]]]:
    """``n`` prompts taken round-robin over the metadata ``tag`` groups (in order of first
    appearance, each group in its own order), so that a small evaluation subset covers every
    sub-task (GenEval's overall score is the mean over six sub-tasks) instead of the first few."""
    groups: dict[Any, list[int]] = {}
    for i, m in enumerate(meta):
        groups.setdefault(m.get("tag") if isinstance(m, dict) else None, []).append(i)
    order: list[int] = []
    queues = [list(reversed(g)) for g in groups.values()]
    while len(order) < min(n, len(prompts)):
        for q in queues:
            if q and len(order) < n:
                order.append(q.pop())
    return [prompts[i] for i in order], [meta[i] for i in order]


def repeat_prompts(
    prompts: list[str], meta: list[dict[str, Any]], k: int
) -> tuple[list[str], list[dict[str, Any]]]:
    """Each prompt (and its metadata) ``k`` times in a row: ``eval.images_per_prompt`` images
    of every prompt per evaluation seed, each from its own noise."""
    if k < 1:
        raise ValueError(f"images_per_prompt must be >= 1, got {k}")
    return [p for p in prompts for _ in range(k)], [m for m in meta for _ in range(k)]


def images_per_prompt(ev: dict[str, Any], task: str, final: bool = True) -> int:
    """Images of each of ``task``'s prompts per evaluation seed: ``eval.images_per_prompt`` at a
    final checkpoint (and for the base), ``eval.intermediate_images_per_prompt`` (default: the
    former) at the others; each a number or a mapping task -> number (a task it omits: 1)."""
    value = ev.get("images_per_prompt", 1)
    if not final:
        value = ev.get("intermediate_images_per_prompt", value)
    return int(value.get(task, 1) if isinstance(value, dict) else value)


def column_value(scorer: Any, scores: np.ndarray, meta: list[dict[str, Any]]) -> float:
    """A benchmark column's value from per-image ``scores``: the scorer's own ``aggregate`` when
    it has one (compose: the mean of the six sub-task accuracies), else the mean."""
    aggregate = getattr(scorer, "aggregate", None)
    return float(aggregate(scores, meta)) if aggregate else float(np.mean(scores))


def column_se(
    scorer: Any, scores: np.ndarray, prompts: list[str], meta: list[dict[str, Any]]
) -> float:
    """The standard error over prompts of a column's value for one evaluation seed.

    The images of one prompt are one cluster: their mean is one observation, so repeated
    images (``eval.images_per_prompt``) narrow it only as far as they narrow each prompt's
    mean. Where the column averages group means (the scorer's ``strata``: GenEval's overall is
    the mean of its T sub-task means) the groups' squared SEs add: ``sqrt(sum se_g^2) / T``.
    NaN when a group has fewer than two prompts."""
    strata_of = getattr(scorer, "strata", None)
    groups = (strata_of(meta) if strata_of else None) or [""] * len(scores)
    frame = pd.DataFrame({"group": groups, "prompt": prompts, "score": scores})
    variances = []
    for _, g in frame.groupby("group", sort=False):
        means = g.groupby("prompt", sort=False)["score"].mean()
        if len(means) < 2:
            return math.nan
        variances.append(float(means.var(ddof=1)) / len(means))
    return math.sqrt(sum(variances)) / len(variances) if variances else math.nan


def prompt_set_name(profile: dict[str, Any], task: str) -> str:
    """The name of ``task``'s test prompt set: a set of :mod:`opd.data` (``geneval``, ...) or
    ``mini:<task>`` for the mini world's."""
    source = profile["tasks"][task].get("prompts", {"source": "mini"})
    if source.get("source", "mini") == "mini":
        return f"mini:{source.get('task', task)}"
    return str(source.get("test") or source.get("set"))


class Evaluator:
    """Holds the test prompts (or another ``split``'s), their embeddings and the scorers of one
    profile."""

    def __init__(self, model: Any, profile: dict[str, Any], split: str = "test") -> None:
        self.model = model
        self.profile = profile
        ev = profile["eval"]
        self.grid = time_grid(int(ev["num_steps"]), shift=float(ev.get("shift", 3.0)))
        self.seeds = [int(s) for s in ev["seeds"]]
        n = int(ev["prompts_per_task"])
        sizes = {True: n, False: int(ev.get("intermediate_prompts_per_task", n))}
        self.columns = profile["benchmarks"]
        # (task, final checkpoint?) -> prompts and metadata, each prompt repeated in a row
        self.sets: dict[tuple[str, bool], tuple[list[str], list[dict]]] = {}
        for spec in self.columns.values():
            task = spec["task"]
            if (task, True) not in self.sets:
                every = load_prompts(task, split, profile)
                for final in (True, False):  # round-robin: the intermediate set is a prefix
                    prompts, meta = stratified_prompts(*every, sizes[final])
                    k = images_per_prompt(ev, task, final)
                    self.sets[task, final] = repeat_prompts(prompts, meta, k)
        self.embeds: dict[tuple[str, bool], PromptEmbeds] = {}  # encoded when first sampled
        self.scorers = {
            c: build_scorer(spec["scorer"], profile) for c, spec in self.columns.items()
        }

    def _embeds(self, task: str, final: bool) -> PromptEmbeds:
        """The prompt set's embeddings, encoded once; the two sets share them when equal."""
        if (task, final) not in self.embeds:
            other = (task, not final)
            same = other in self.embeds and self.sets[other][0] == self.sets[task, final][0]
            self.embeds[task, final] = (
                self.embeds[other] if same else self.model.encode_prompts(self.sets[task, final][0])
            )
        return self.embeds[task, final]

    def protocol(self) -> dict[str, Any]:
        """What an evaluation on the final checkpoint's prompts runs: ODE steps and shift, the
        evaluation seeds, the image resolution and, per task, the prompt set, how many of its
        prompts and how many images of each over all seeds."""
        ev = self.profile["eval"]
        tasks = {}
        for (task, final), (prompts, _) in self.sets.items():
            if final:
                k = images_per_prompt(ev, task, True)
                tasks[task] = {
                    "set": prompt_set_name(self.profile, task),
                    "count": len(prompts) // k,
                    "images_per_prompt": k * len(self.seeds),
                }
        return {
            "steps": int(ev["num_steps"]),
            "shift": float(ev.get("shift", 3.0)),
            "seeds": list(self.seeds),
            "resolution": int(self.model.resolution),
            "tasks": tasks,
        }

    @property
    def prompts(self) -> dict[str, tuple[list[str], list[dict]]]:
        """Each task's prompts and metadata as a final checkpoint is evaluated on them."""
        return {task: v for (task, final), v in self.sets.items() if final}

    @torch.no_grad()
    def generate(
        self, task: str, adapter: str | None, guidance: float, final: bool = True
    ) -> list[np.ndarray]:
        """Images of ``task``'s prompts for every evaluation seed, in one batched rollout.

        Sample ``i`` of seed index ``k`` has the id ``k * n + i`` under the first evaluation seed,
        so the noise of every (seed, prompt) pair is fixed whatever the batch layout.
        """
        prompts, _ = self.sets[task, final]
        n, k = len(prompts), len(self.seeds)
        embeds = PromptEmbeds.cat([self._embeds(task, final)] * k)
        traj = rollout(
            self.model.velocity_fn(embeds, guidance_scale=guidance, adapter=adapter),
            self.model.latent_shape(n)[1:],
            self.grid,
            make_sampler("ode"),
            self.seeds[0],
            list(range(n * k)),
            record=False,
            device=self.model.device,
        )
        images = self.model.decode(traj.states[-1])
        return [images[j * n : (j + 1) * n] for j in range(k)]

    def evaluate(
        self, adapter: str | None, guidance: float, keep_samples: int = 0, final: bool = True
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Rows (column, task, eval_seed, value, n) and sample images of the first seed, on the
        final checkpoint's prompt sets or (``final=False``) the intermediate ones."""
        rows: list[dict[str, Any]] = []
        samples: dict[str, Any] = {}
        for (task, is_final), (prompts, meta) in self.sets.items():
            if is_final != final:
                continue
            per_seed = self.generate(task, adapter, guidance, final)
            for k, (seed, images) in enumerate(zip(self.seeds, per_seed, strict=True)):
                if k == 0 and keep_samples:
                    samples[task] = (images[:keep_samples], prompts[:keep_samples])
                for column, spec in self.columns.items():
                    if spec["task"] != task:
                        continue
                    scorer = self.scorers[column]
                    with calltime.timed("score"):
                        scores = np.asarray(scorer(images, prompts, meta), dtype=np.float64)
                    if not np.all(np.isfinite(scores)):
                        raise FloatingPointError(
                            f"scorer {spec['scorer']!r} (column {column!r}, task {task!r}) "
                            "returned non-finite scores"
                        )
                    rows.append(
                        {
                            "column": column,
                            "task": task,
                            "eval_seed": seed,
                            "value": column_value(scorer, scores, meta),
                            "n": len(scores),
                            "se": column_se(scorer, scores, prompts, meta),
                        }
                    )
        return rows, samples


class EvalIntegrityError(RuntimeError):
    """An eval CSV that does not match its recorded checksum (the message names it)."""


def checksum_path(path: Path) -> Path:
    """The sidecar holding an eval CSV's SHA-256 (``seed0.csv`` -> ``seed0.csv.sha256``)."""
    return Path(path).with_name(Path(path).name + ".sha256")


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=EVAL_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    side = checksum_path(path)
    side_tmp = side.with_name(side.name + ".tmp")
    side_tmp.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    side_tmp.replace(side)  # the sidecar first: a CSV in place always has its checksum
    tmp.replace(path)


def verify_eval_csv(path: Path) -> Path:
    """Check an eval CSV against its ``.sha256`` sidecar; raise naming the file if it differs.

    A CSV without a sidecar (written by an older version or by hand) is accepted as is.
    """
    path = Path(path)
    side = checksum_path(path)
    if not side.exists():
        return path
    if not path.exists():
        raise EvalIntegrityError(f"eval CSV {path} is missing (its checksum {side} exists)")
    want = side.read_text(encoding="utf-8").split()[0] if side.stat().st_size else ""
    if hashlib.sha256(path.read_bytes()).hexdigest() != want:
        raise EvalIntegrityError(
            f"eval CSV {path} is truncated or altered (SHA-256 differs from {side}); "
            "rerun its evaluation"
        )
    return path


def _save_samples(path: Path | None, samples: dict[str, Any]) -> None:
    if path is None or not samples:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    images = np.concatenate([im for im, _ in samples.values()])
    prompts = [p for _, ps in samples.values() for p in ps]
    tasks = [t for t, (_, ps) in samples.items() for _ in ps]
    with path.open("wb") as fh:
        np.savez_compressed(fh, images=images, prompts=np.array(prompts), tasks=np.array(tasks))


def eval_guidance_of(profile: dict[str, Any], run: str) -> float:
    """The CFG scale a run is evaluated at (its own ``eval_guidance`` or the profile's)."""
    _, cfg, _ = resolve_method(profile, run)
    return eval_guidance(cfg, profile)


def run_eval_settings(
    profile: dict[str, Any], run_dir: Path, run: str, seed: int
) -> tuple[str, float]:
    """The method name and evaluation CFG scale of the run trained in ``run_dir``.

    They come from the run's own resolved section in its ``run.json`` (the scale: its
    ``eval_guidance``, else ``profile``'s ``eval.guidance``), so that a run trained under
    overrides (e.g. a CFG-free NFT section) is scored as it was trained even when ``profile``
    does not repeat them; a printed line says which were used, and names the config's values
    when they differ or when its hash for this run differs from the recorded one. A folder
    without ``run.json`` falls back to ``profile``; one that holds another run is a
    :class:`~opd.config.ConfigError`.
    """
    try:
        _, given_cfg, given_section = resolve_method(profile, run)
        given = (given_section["method"], eval_guidance(given_cfg, profile))
    except KeyError:  # the config does not define this run: only run.json can
        given_section, given = None, None
    info = read_run_info(run_dir)
    if info is None:
        if given is None:
            raise ConfigError(f"{run_dir} has no run.json and the config defines no run {run!r}")
        print(f"[opd] {run_dir}: no run.json; method {given[0]}, CFG {given[1]} from the config")
        return given
    if info.get("run") != run:
        raise ConfigError(f"{run_dir} holds run {info.get('run')!r} (its run.json), not {run!r}")
    section = dict(info["method"])
    name = section.pop("method")
    cfg = build_dataclass(METHODS.get(name).Config, section, f"{run_dir}/run.json: method")
    own = (name, eval_guidance(cfg, profile))
    note = f"[opd] {run}: evaluated as trained (run.json): method {own[0]}, CFG {own[1]}"
    if given is not None and given != own:
        note += f"; the given config says method {given[0]}, CFG {given[1]} (not used)"
    elif given_section is not None:
        chash, trained = run_config_hash(profile, given_section, seed), info.get("config_hash")
        if chash != trained:
            note += f"; the config's hash for it is {chash}, trained under {trained}"
    print(note)
    return own


def adapter_kwargs(info: dict[str, Any]) -> dict[str, Any]:
    """``add_adapter`` arguments that re-create a checkpoint's student adapter from its
    manifest's ``adapter`` record (rank, alpha and, when recorded, the target modules)."""
    kwargs: dict[str, Any] = {"rank": int(info["rank"]), "alpha": float(info["alpha"])}
    if info.get("targets"):
        kwargs["target_modules"] = tuple(info["targets"])
    return kwargs


def adapter_is_identity(tensors: dict[str, torch.Tensor]) -> bool:
    """True for a plain LoRA state dict (``lora_A``/``lora_B`` weights only) whose every
    ``lora_B`` is zero: ``B A = 0``, so the adapted model is the base model."""
    if not tensors or any(".lora_A." not in k and ".lora_B." not in k for k in tensors):
        return False
    return all(not torch.any(v) for k, v in tensors.items() if ".lora_B." in k)


def base_rows_at(
    profile: dict[str, Any], base_eval: Path, guidance: float
) -> list[dict[str, Any]] | None:
    """The base model's result rows at CFG ``guidance`` from its eval CSV (``evaluate_base``:
    1.0 and the profile's eval guidance), or None at any other scale."""
    runs = {1.0: "base_nocfg", float(profile["eval"]["guidance"]): "base_cfg"}
    if guidance not in runs:
        return None
    verify_eval_csv(base_eval)
    with open(base_eval, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["run"] == runs[guidance]]
    if not rows:
        raise ValueError(f"{base_eval} has no {runs[guidance]} rows")
    return [
        {
            "column": r["column"],
            "task": r["task"],
            "eval_seed": int(r["eval_seed"]),
            "value": float(r["value"]),
            "n": int(r["n"]),
            "se": float(r.get("se") or "nan"),
        }
        for r in rows
    ]


def evaluate_run(
    profile: dict[str, Any],
    run_dir: Path,
    run: str,
    seed: int,
    out: Path,
    samples_out: Path | None = None,
    progress: bool = True,
    base_eval: Path | None = None,
) -> Path:
    """Evaluate every checkpoint of ``run_dir`` and write the eval CSV ``out``; with
    ``base_eval`` (the base model's eval CSV), identity checkpoints reuse its rows. The method
    and the CFG scale are the run's own (:func:`run_eval_settings`)."""
    method, guidance = run_eval_settings(profile, Path(run_dir), run, seed)
    model = load_base_model(profile)
    evaluator = Evaluator(model, profile)
    ckpts = ckpt.list_checkpoints(Path(run_dir) / "checkpoints")
    if not ckpts:
        raise FileNotFoundError(f"no checkpoints under {run_dir}/checkpoints")
    rows: list[dict[str, Any]] = []
    created = False
    for i, path in enumerate(tqdm(ckpts, desc=f"eval {run}/seed{seed}", disable=not progress)):
        tensors, manifest = ckpt.load_checkpoint(path)  # verified: a damaged file is named
        maybe_fail("evaluate.checkpoint", int(manifest["step"]))
        info = manifest.get("adapter") or {}
        if not created:
            model.add_adapter(STUDENT, **adapter_kwargs(info))
            created = True
        model.load_adapter_state_dict(STUDENT, tensors["ema"])
        final = i == len(ckpts) - 1
        keep = 16 if final else 0
        reused = None
        if base_eval is not None and not keep and adapter_is_identity(tensors["ema"]):
            reused = base_rows_at(profile, Path(base_eval), guidance)
        if reused is not None:
            results, samples = reused, {}
        else:
            try:
                results, samples = evaluator.evaluate(
                    STUDENT, guidance, keep_samples=keep, final=final
                )
            except FloatingPointError as err:
                raise FloatingPointError(f"evaluating {path}: {err}") from err
        if keep:
            _save_samples(samples_out, samples)
        base = {
            "run": run,
            "method": manifest.get("method", method),
            "seed": seed,
            "stage": manifest.get("stage", ""),
            "step": manifest["step"],
            **{
                k: manifest["compute"].get(k, 0)
                for k in (
                    "samples",
                    "forward_evals",
                    "backward_evals",
                    "model_evals",
                    "wall_seconds",
                )
            },
        }
        rows += [{**base, **r} for r in results]
    _write_rows(Path(out), rows)
    return Path(out)


def evaluate_base(
    profile: dict[str, Any],
    out: Path,
    samples_out: Path | None = None,
    *,
    evaluator: Evaluator | None = None,
) -> Path:
    """Evaluate the base model without and with CFG (the first two rows of Table 1); with
    ``evaluator``, its model (e.g. a published adapter's base) instead of ``paths.base``."""
    if evaluator is None:
        evaluator = Evaluator(load_base_model(profile), profile)
    rows: list[dict[str, Any]] = []
    for run, g in (("base_nocfg", 1.0), ("base_cfg", float(profile["eval"]["guidance"]))):
        results, samples = evaluator.evaluate(None, g, keep_samples=16)
        if run == "base_cfg":
            _save_samples(samples_out, samples)
        base = {
            "run": run,
            "method": "base",
            "seed": 0,
            "stage": "base",
            "step": 0,
            "samples": 0,
            "forward_evals": 0,
            "backward_evals": 0,
            "model_evals": 0,
            "wall_seconds": 0.0,
        }
        rows += [{**base, **r} for r in results]
    _write_rows(Path(out), rows)
    return Path(out)


def evaluate_adapter(
    profile: dict[str, Any],
    adapter_dir: Path,
    run: str,
    out: Path,
    samples_out: Path | None = None,
    seed: int = 0,
    *,
    guidance: float | None = None,
    method: str | None = None,
    evaluator: Evaluator | None = None,
) -> Path:
    """Evaluate one peft LoRA folder (a published teacher, ``python -m opd.data adapter``) as
    run ``run`` (e.g. ``teacher_text``: its method and evaluation CFG come from the config,
    unless ``guidance`` and ``method`` are given, as for a published adapter that is no run of
    the config); ``evaluator``: on its model instead of ``paths.base``.

    Its rows are the run's final checkpoint (stage ``final``, step 0) with zero compute: the
    adapter's training is not ours to count.
    """
    if evaluator is None:
        evaluator = Evaluator(load_base_model(profile), profile)
    if guidance is None or method is None:
        _, _, section = resolve_method(profile, run)
        guidance = eval_guidance_of(profile, run) if guidance is None else guidance
        method = str(section.get("method", run)) if method is None else method
    evaluator.model.load_adapter(STUDENT, adapter_dir)
    try:
        results, samples = evaluator.evaluate(STUDENT, guidance, keep_samples=16)
    except FloatingPointError as err:
        raise FloatingPointError(f"evaluating {adapter_dir}: {err}") from err
    _save_samples(samples_out, samples)
    base = {
        "run": run,
        "method": method,
        "seed": seed,
        "stage": "final",
        "step": 0,
        "samples": 0,
        "forward_evals": 0,
        "backward_evals": 0,
        "model_evals": 0,
        "wall_seconds": 0.0,
    }
    _write_rows(Path(out), [{**base, **r} for r in results])
    return Path(out)
