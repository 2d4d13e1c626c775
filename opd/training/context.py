"""Build a run's context from the profile: base model, tasks with rewards, frozen teachers.

The profile's ``paths`` say where the stage-1 artifacts live (base model, learned scorers);
``tasks`` map each task id to its prompt source, its training reward (a weighted mix of scorer
names) and its teacher. Teachers are loaded as named adapters ``teacher_<task>`` on the one
backbone, as the paper does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opd import calltime
from opd.data import load_prompt_file
from opd.models import FlowModel
from opd.models.base import set_ff_gelu
from opd.models.compile import maybe_compile
from opd.registry import SCORERS
from opd.rewards import get_scorer
from opd.training.base import RunContext, TaskData, keyed_seed, run_guidance
from opd.training.compute import ComputeCounter
from opd.worlds.mini import WorldConfig, prompt_set

Reward = Callable[[np.ndarray, list[str], list[dict]], np.ndarray]


def make_reward(
    mix: dict[str, float],
    profile: dict[str, Any],
    control: str | None = None,
    seed: int | str = 0,
    mode: str = "sum",
) -> Reward:
    """A :class:`WeightedReward` of registered scorers, each built once with the profile's
    weights dir; with ``control="matched"``, its :class:`MatchedControl` keyed by ``seed``."""
    if control not in (None, "matched"):
        raise ValueError(f"reward control must be 'matched' or None, got {control!r}")
    scorers = {name: build_scorer(name, profile) for name in mix}
    reward = WeightedReward(scorers, {n: float(w) for n, w in mix.items()}, mode)
    return MatchedControl(reward, seed) if control == "matched" else reward


class WeightedReward:
    """A task's training reward: the weighted sum of its scorers' values.

    ``mode`` (the task's ``reward_mix``) tells the RL methods how to form advantages:
    ``"sum"`` from the weighted sum, ``"normalize_then_sum"`` from each scorer's own group
    advantages (:func:`opd.objectives.mixed_group_advantages`), for which they ask
    :meth:`parts` and then :meth:`total`."""

    MODES = ("sum", "normalize_then_sum")

    def __init__(self, scorers: dict[str, Any], weights: dict[str, float], mode: str = "sum"):
        if mode not in self.MODES:
            raise ValueError(f"reward_mix must be one of {self.MODES}, got {mode!r}")
        self.scorers, self.weights, self.mode = scorers, weights, mode

    def parts(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> dict:
        """Each scorer's (N,) float64 values; a non-finite value raises, naming the scorer."""
        out = {}
        for name, scorer in self.scorers.items():
            with calltime.timed("score"):
                values = np.asarray(scorer(images, prompts, metadata), dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise FloatingPointError(f"reward {name!r} returned non-finite scores")
            out[name] = values
        return out

    def total(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        """The weighted sum of :meth:`parts`."""
        total = np.zeros(len(next(iter(parts.values()))), dtype=np.float64)
        for name, values in parts.items():
            total += self.weights[name] * values
        return total

    def __call__(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        return self.total(self.parts(images, prompts, metadata))


class MatchedControl:
    """A no-signal control of a reward with values in [0, 1]: per call, 0/1 draws at the real
    reward's mean over the batch.

    Its advantages have the sizes of a 0/1 reward's at the real success rate but say nothing
    about which sample was better: within a batch the draws are independent of the real
    values (across batches they follow the batch mean, as the real rate moves). The draws are
    keyed by ``seed`` and the batch's content (prompts and real values), not by a call counter,
    so a resumed run repeats an unbroken one."""

    def __init__(self, reward: Reward, seed: int | str = 0) -> None:
        self.reward = reward
        self.seed = seed

    def __call__(self, images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
        real = np.asarray(self.reward(images, prompts, metadata), dtype=np.float64)
        if real.size and (real.min() < -1e-6 or real.max() > 1 + 1e-6):
            raise ValueError(
                "reward_control: matched needs a reward in [0, 1], got values in "
                f"[{real.min():.3g}, {real.max():.3g}]"
            )
        rate = float(np.clip(real.mean(), 0.0, 1.0)) if real.size else 0.0
        batch = hashlib.blake2b("\0".join(prompts).encode() + real.tobytes(), digest_size=8)
        rng = np.random.default_rng(keyed_seed(self.seed, "reward_control", batch.hexdigest()))
        return (rng.random(real.shape) < rate).astype(np.float64)


def build_scorer(name: str, profile: dict[str, Any]) -> Any:
    """Build scorer ``name`` with the profile's scorer options (weights folder, device)."""
    import inspect

    options = dict((profile.get("scorer_options") or {}).get(name, {}))
    scorer_dir = profile.get("paths", {}).get("scorers")
    if scorer_dir and name in profile.get("learned_scorers", []):
        options.setdefault("weights", str(Path(scorer_dir) / name))
    factory = SCORERS.get(name)
    if "config" in inspect.signature(factory).parameters and "world" in profile:
        options.setdefault("config", WorldConfig.from_dict(profile["world"].get("params", {})))
    return get_scorer(name, **options)


def load_prompts(task: str, split: str, profile: dict[str, Any]) -> tuple[list[str], list[dict]]:
    """Prompts and metadata of ``task``'s ``split`` (``train``, ``validation``, ``test``): the
    profile's mini world (validation needs its sizes in ``world.params``) or prompt files."""
    source = profile["tasks"][task].get("prompts", {"source": "mini"})
    if source.get("source", "mini") == "mini":
        world = WorldConfig.from_dict(profile.get("world", {}).get("params", {}))
        return prompt_set(source.get("task", task), split, world)

    return load_prompt_file(source, split, profile)


def load_base_model(
    profile: dict[str, Any], source: dict[str, Any] | None = None, *, train: bool = False
) -> Any:
    """The profile's base model (``paths.base``), with its feed-forward GELU in the form
    ``model.ff_gelu`` names when set (e.g. ``exact`` for a base pretrained in SD3's tanh form:
    cheaper on x86 CPUs; see docs/PERFORMANCE.md). For training (``train``, the context of a
    teacher or a run) it is compiled in place with ``model.compile``: the same numbers within
    float32 rounding, about 0.7x the time per call on the mini model after 13-90 s of compiling.
    Evaluations and analyses load it eager: they make a few hundred calls in several batch
    shapes, each a compile of its own: compiled, they took 1.1-3.5x their eager CPU seconds
    in a whole mini run (the gradient-variance analysis 9x).

    ``source`` (``{hub, revision}``, e.g. ``released.base``) loads that SD3 pipeline instead, a
    hub id through the huggingface_hub cache, with the profile's ``model.sd3`` options and
    dtype and the GELU it was saved with."""
    model_cfg = profile["model"]
    path = source["hub"] if source else profile["paths"]["base"]
    revision = source.get("revision") if source else model_cfg.get("revision")
    dtype = getattr(torch, model_cfg.get("dtype", "float32"))
    kwargs: dict[str, Any] = {}
    if source or model_cfg.get("kind") == "sd3":  # SD3.5 loader options (resolution, T5 length)
        kwargs = dict(model_cfg.get("sd3") or {})
        if revision:
            kwargs["revision"] = revision
    model = FlowModel.from_pretrained(
        path, device=profile.get("device", "cpu"), dtype=dtype, **kwargs
    )
    if model_cfg.get("ff_gelu") and not source:
        set_ff_gelu(model.transformer, model_cfg["ff_gelu"])
    if train and model_cfg.get("compile"):  # every call through inductor (docs/PERFORMANCE.md)
        maybe_compile(model.transformer, True, option="model.compile")
    return model


def build_context(
    profile: dict[str, Any],
    seed: int,
    compute: ComputeCounter,
    teachers: dict[str, Path],
    model: Any | None = None,
    reward_control: str | None = None,
) -> RunContext:
    """The run context of ``profile``: each task's prompts and reward, and ``teachers`` (task ->
    adapter folder) loaded as frozen adapters. A teacher is queried at the CFG scale it trained
    with (:func:`~opd.training.base.run_guidance` of ``teacher_<task>``)."""
    model = model if model is not None else load_base_model(profile, train=True)
    tasks: dict[str, TaskData] = {}
    for name, spec in profile["tasks"].items():
        prompts, metadata = load_prompts(name, "train", profile)
        tasks[name] = TaskData(
            name=name,
            prompts=prompts,
            metadata=metadata,
            reward=make_reward(
                spec["reward"],
                profile,
                reward_control,
                f"{seed}/{name}",
                spec.get("reward_mix", "sum"),
            ),
            teacher_guidance=run_guidance(profile, f"teacher_{name}"),
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
