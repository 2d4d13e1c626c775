"""The method interface of the shared trainer: a config dataclass, a run context, a step.

Every algorithm (teachers' RL, DiffusionOPD, baselines, ablations) is a :class:`Method`
subclass registered in ``opd.registry.METHODS``. The shared loop (``opd.training.loop``) owns
everything around a step: the student adapter, optimizer, EMA, checkpoints, compute and logs.
A method only says how one optimizer step's loss is made (``step``) and which extra tensors it
must keep across a resume (``extra_state``). All randomness is keyed by (seed, iteration, task),
so a resumed run repeats an uninterrupted one bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from opd.config import resolve_method
from opd.models import PromptEmbeds
from opd.models.lora import DEFAULT_TARGETS
from opd.training.compute import ComputeCounter
from opd.training.options import MethodConfig

STUDENT = "student"


def train_guidance(cfg: MethodConfig, profile: dict[str, Any]) -> float:
    """The CFG scale a run rolls out and trains with: its own ``guidance``, else the profile's
    ``sampling.guidance`` (a frozen teacher is queried at the scale it was trained with)."""
    g = cfg.guidance if cfg.guidance is not None else profile["sampling"]["guidance"]
    return float(g)


def run_guidance(profile: dict[str, Any], run: str) -> float:
    """The CFG scale run ``run`` trains with, resolved as its training does (a teacher without
    ``guidance``: its method's default, e.g. NFT's 1.0, else the profile's sampling guidance)."""
    _, cfg, _ = resolve_method(profile, run)
    return train_guidance(cfg, profile)


def eval_guidance(cfg: MethodConfig, profile: dict[str, Any]) -> float:
    """The CFG scale a run is evaluated at: its own ``eval_guidance``, else the profile's
    ``eval.guidance``."""
    g = cfg.eval_guidance if cfg.eval_guidance is not None else profile["eval"]["guidance"]
    return float(g)


def lora_settings(cfg: MethodConfig, profile: dict[str, Any]) -> dict[str, Any]:
    """Rank, alpha and target modules of a run's student adapter: the method's own
    ``lora_rank`` / ``lora_alpha`` / ``lora_targets``, else the profile's ``model.lora``, else
    the paper's attention projections."""
    lora = profile["model"]["lora"]
    targets = cfg.lora_targets or lora.get("targets") or DEFAULT_TARGETS
    return {
        "rank": int(cfg.lora_rank or lora["rank"]),
        "alpha": float(cfg.lora_alpha or lora["alpha"]),
        "target_modules": tuple(targets),
    }


def keyed_seed(*parts: int | str) -> int:
    """A 63-bit seed from a tuple of ints/strings (stable across processes and platforms)."""
    blob = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") >> 1


def window_steps(
    n: int, window: int | None, iteration: int, mode: str = "slide", every: int = 1, seed: int = 0
) -> list[int]:
    """The denoising steps (indices into the first ``n``) trained at optimizer step
    ``iteration``: all ``n`` without a window; "slide": ``window`` consecutive steps starting at
    ``iteration // every``, stopping at the last ``window``; "random": ``window`` distinct steps
    drawn from ``seed`` (key the seed by iteration and task), in increasing order."""
    if window is None or window >= n:
        return list(range(n))
    if mode == "random":
        rng = np.random.default_rng(seed)
        return sorted(int(j) for j in rng.choice(n, size=window, replace=False))
    start = min(iteration // every, n - window)
    return list(range(start, start + window))


PROMPT_SAMPLING = ("uniform", "stratified")


def stratified_draw(tags: Sequence[Any], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices into ``tags`` balanced over its distinct values, as evaluation balances
    prompts over tags: the k distinct tags take the n slots in a random order, cyclically (each
    gets n // k or one more; every tag equally likely over draws), and each slot a prompt of
    its tag drawn at random (without replacement while the tag has enough)."""
    groups: dict[Any, list[int]] = {}
    for i, tag in enumerate(tags):
        groups.setdefault(tag, []).append(i)
    members = list(groups.values())
    slot_group = rng.permutation(len(members))[np.arange(n) % len(members)]
    idx = np.empty(n, dtype=np.int64)
    for g, group in enumerate(members):
        slots = np.nonzero(slot_group == g)[0]
        if slots.size:
            pick = rng.choice(len(group), size=slots.size, replace=len(group) < slots.size)
            idx[slots] = np.asarray(group)[pick]
    return idx


@dataclasses.dataclass
class TaskData:
    """One task's prompt set and training reward."""

    name: str
    prompts: list[str]
    metadata: list[dict[str, Any]]
    reward: Callable[[np.ndarray, list[str], list[dict]], np.ndarray]
    teacher_guidance: float = 1.0  # the CFG scale the task's teacher trained with


@dataclasses.dataclass
class RunContext:
    """What a method may use: the model, the profile config, tasks, teachers, compute."""

    model: Any  # opd.models.FlowModel
    profile: dict[str, Any]
    seed: int
    tasks: dict[str, TaskData]
    compute: ComputeCounter
    teachers: dict[str, str] = dataclasses.field(default_factory=dict)  # task -> adapter name
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0  # data-parallel process index (each takes whole prompt groups)
    world_size: int = 1
    _embed_cache: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def sample_prompts(
        self, task: str, n: int, iteration: int, repeat: int = 1
    ) -> tuple[list[str], list[dict], np.ndarray]:
        """``n`` training prompts of ``task`` keyed by (seed, iteration, task), each repeated:
        uniform over the train set, or with the profile's ``sampling.prompt_sampling:
        stratified`` balanced over the metadata tags (:func:`stratified_draw`).

        Returns prompts, metadata and the group id of each sample (for group advantages).
        """
        data = self.tasks[task]
        rng = np.random.default_rng(keyed_seed(self.seed, iteration, task, "prompts"))
        mode = (self.profile.get("sampling") or {}).get("prompt_sampling", "uniform")
        if mode not in PROMPT_SAMPLING:
            raise ValueError(f"sampling.prompt_sampling must be one of {PROMPT_SAMPLING}: {mode!r}")
        if mode == "stratified":
            idx = stratified_draw([m.get("tag", "") for m in data.metadata], n, rng)
        else:
            idx = rng.choice(len(data.prompts), size=n, replace=len(data.prompts) < n)
        idx = np.repeat(idx, repeat)
        groups = np.repeat(np.arange(n), repeat)
        return [data.prompts[i] for i in idx], [data.metadata[i] for i in idx], groups

    def embed(self, prompts: Sequence[str]) -> Any:
        """Prompt embeddings with a per-prompt cache (text encoders are frozen)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._embed_cache]
        if missing:
            emb = self.model.encode_prompts(list(missing))
            for i, p in enumerate(missing):
                self._embed_cache[p] = emb.index(slice(i, i + 1))
        return PromptEmbeds.cat([self._embed_cache[p] for p in prompts])


class Method:
    """Base class: subclasses set ``Config`` and implement :meth:`step`."""

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: the adapter the optimizer trains (None: the method trains nothing, e.g. a merge)
    trainable: ClassVar[str | None] = STUDENT
    #: whether the method needs the frozen teachers of its tasks
    needs_teachers: ClassVar[bool] = False

    def __init__(self, ctx: RunContext, cfg: MethodConfig) -> None:
        self.ctx = ctx
        self.cfg = cfg
        sampling = ctx.profile["sampling"]
        self.num_steps = cfg.num_steps or int(sampling["num_steps"])
        self.train_steps = cfg.train_steps or max(self.num_steps - 1, 1)
        if cfg.final_step == "ode" and self.train_steps >= self.num_steps:
            raise ValueError(
                f"final_step: ode leaves the last of {self.num_steps} rollout steps without a "
                f"log-prob, but train_steps ({self.train_steps}) would train it"
            )
        self.guidance = train_guidance(cfg, ctx.profile)
        self.shift = float(sampling.get("shift", 3.0))
        self.task_names = list(cfg.tasks or ctx.tasks)
        unknown = [t for t in self.task_names if t not in ctx.tasks]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; known: {sorted(ctx.tasks)}")

    @property
    def model(self) -> Any:
        return self.ctx.model

    def setup(self) -> None:
        """Called once after the student adapter exists and before resume."""

    @property
    def final_sampler(self) -> str | None:
        """The sampler of the rollouts' last step (``"ode"`` for ``final_step: ode``; None: the
        rollout's own, see :func:`opd.sampling.rollout`)."""
        return "ode" if self.cfg.final_step == "ode" else None

    def trained_steps(self, iteration: int, task: str) -> list[int]:
        """The rollout steps trained at ``iteration`` for ``task`` (:func:`window_steps`)."""
        cfg = self.cfg
        seed = keyed_seed(self.ctx.seed, iteration, task, "window")
        return window_steps(
            self.train_steps, cfg.train_window, iteration, cfg.window_mode, cfg.window_every, seed
        )

    def step(self, iteration: int) -> dict[str, float]:
        """Accumulate gradients of one optimizer step into the trainable adapter."""
        raise NotImplementedError

    def after_optimizer_step(self, iteration: int) -> None:
        """Hook after each optimizer step (e.g. NFT's soft update of the sampling policy)."""

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors besides the student, EMA and optimizer that a resume needs."""
        return {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`extra_state` saved."""

    def stage_of(self, iteration: int) -> str:
        """The stage label recorded with each step (cascade RL overrides it)."""
        return "train"

    def checkpoint_steps(self) -> set[int]:
        """Steps checkpointed besides every ``checkpoint_every`` and the last (cascade RL: the
        stage boundaries, so that forgetting is measured right before and after each stage)."""
        return set()
