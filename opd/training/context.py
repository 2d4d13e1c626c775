"""Build a run's context from the profile: base model, tasks with rewards, frozen teachers.

The profile's ``paths`` say where the stage-1 artifacts live (base model, learned scorers);
``tasks`` map each task id to its prompt source, its training reward (a weighted mix of scorer
names) and its teacher. Teachers are loaded as named adapters ``teacher_<task>`` on the one
backbone, as the paper does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opd.training.base import RunContext, TaskData
from opd.training.compute import ComputeCounter

Reward = Callable[[np.ndarray, list[str], list[dict]], np.ndarray]


def make_reward(mix: dict[str, float], profile: dict[str, Any]) -> Reward:
    """A weighted sum of registered scorers, each built once with the profile's weights dir."""
    from opd.rewards import get_scorer

    scorers = {name: (float(w), build_scorer(name, profile)) for name, w in mix.items()}

    def reward(images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        total = np.zeros(len(images), dtype=np.float64)
        for name, (weight, scorer) in scorers.items():
            values = np.asarray(scorer(images, prompts, metadata), dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise FloatingPointError(f"reward {name!r} returned non-finite scores")
            total += weight * values
        return total

    del get_scorer
    return reward


def build_scorer(name: str, profile: dict[str, Any]) -> Any:
    """Build scorer ``name`` with the profile's scorer options (weights folder, device)."""
    import inspect

    from opd.registry import SCORERS
    from opd.rewards import get_scorer

    options = dict((profile.get("scorer_options") or {}).get(name, {}))
    scorer_dir = profile.get("paths", {}).get("scorers")
    if scorer_dir and name in profile.get("learned_scorers", []):
        options.setdefault("weights", str(Path(scorer_dir) / name))
    factory = SCORERS.get(name)
    if "config" in inspect.signature(factory).parameters and "world" in profile:
        from opd.worlds.mini import WorldConfig

        options.setdefault("config", WorldConfig.from_dict(profile["world"].get("params", {})))
    return get_scorer(name, **options)


def load_prompts(task: str, split: str, profile: dict[str, Any]) -> tuple[list[str], list[dict]]:
    """Prompts and metadata of ``task``'s ``split`` (``train``, ``validation``, ``test``): the
    profile's mini world (validation needs its sizes in ``world.params``) or prompt files."""
    source = profile["tasks"][task].get("prompts", {"source": "mini"})
    if source.get("source", "mini") == "mini":
        from opd.worlds.mini import WorldConfig, prompt_set

        world = WorldConfig.from_dict(profile.get("world", {}).get("params", {}))
        return prompt_set(source.get("task", task), split, world)
    from opd.data import load_prompt_file  # paper profile: downloaded prompt sets

    return load_prompt_file(source, split, profile)


def load_base_model(profile: dict[str, Any]) -> Any:
    """The profile's base model (``paths.base``), with its feed-forward GELU in the form
    ``model.ff_gelu`` names when set (e.g. ``exact`` for a base pretrained in SD3's tanh form:
    cheaper on x86 CPUs; see the README's performance section)."""
    from opd.models import FlowModel
    from opd.models.base import set_ff_gelu

    path = profile["paths"]["base"]
    dtype = getattr(torch, profile["model"].get("dtype", "float32"))
    kwargs: dict[str, Any] = {}
    if profile["model"].get("kind") == "sd3":  # SD3.5 loader options (resolution, T5 length)
        kwargs = dict(profile["model"].get("sd3") or {})
        if profile["model"].get("revision"):
            kwargs["revision"] = profile["model"]["revision"]
    model = FlowModel.from_pretrained(
        path, device=profile.get("device", "cpu"), dtype=dtype, **kwargs
    )
    if profile["model"].get("ff_gelu"):
        set_ff_gelu(model.transformer, profile["model"]["ff_gelu"])
    return model


def build_context(
    profile: dict[str, Any],
    seed: int,
    compute: ComputeCounter,
    teachers: dict[str, Path],
    model: Any | None = None,
) -> RunContext:
    model = model if model is not None else load_base_model(profile)
    tasks: dict[str, TaskData] = {}
    for name, spec in profile["tasks"].items():
        prompts, metadata = load_prompts(name, "train", profile)
        tasks[name] = TaskData(
            name=name,
            prompts=prompts,
            metadata=metadata,
            reward=make_reward(spec["reward"], profile),
            teacher_guidance=float(spec["teacher"].get("guidance", 1.0)),
        )
    ctx = RunContext(model=model, profile=profile, seed=seed, tasks=tasks, compute=compute)
    for task, path in teachers.items():
        if task not in tasks:
            raise KeyError(f"teacher given for unknown task {task!r}; known: {sorted(tasks)}")
        name = f"teacher_{task}"
        if not Path(path).exists():
            raise FileNotFoundError(f"teacher adapter for task {task!r} not found: {path}")
        model.load_adapter(name, path)
        ctx.teachers[task] = name
    return ctx
