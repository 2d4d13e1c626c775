"""Training of the mini world's learned scorers (``clip``, ``pick``, ``hps`` and ``pref2``).

Pipeline (:func:`train_all_scorers`, or ``python -m opd.rewards.train_scorers --out DIR``):

1. ``clip``: a contrastive image-text model fit with the symmetric InfoNCE loss. Its data
   (:func:`clip_captions`): corpus scenes (``corpus_scenes``) captioned truthfully in the
   corpus's own alt-text phrasing (the corpus's corruptions, i.e. dropped or wrong attributes,
   generic captions and unmentioned extra objects, switched off through ``WorldConfig``;
   aesthetic phrasings kept), plus clean renders of the three tasks' *training* prompts.
   Decision: true captions rather than the noisy ones the base model learns from, because
   CLIPScore is used as a measure of alignment and the noisy captions would teach it to
   accept wrong attributes; the prompt renders teach it the prompt sets' phrasing and the fine
   distinctions between their prompts (measured: ordering the images of a preference pair by
   prompt agreement with CLIP's cosine was right 87% of the time after 300 steps on corpus
   captions alone, 98% after 600 steps with the prompt renders added). Held-out metric: top-1
   retrieval among 16
   candidates (15 distractor captions, all distinct) on fresh corpus pairs from another seed
   (image -> caption is the bar); retrieval on clean renders of each task's test prompts is
   reported too (harder: candidates are near-duplicates such as "a circle" / "a red circle").
2. One set of preference pairs (``preference_pairs``, training prompts) is rendered once and
   relabelled by each scorer's hidden utility (:func:`relabel`; near ties dropped as the
   world does).
3. ``pick`` (utility ``pick``), ``hps`` (``hps``) and ``pref2`` (``ir``, the ImageReward
   analog, a held-out metric: wider GELU taste tower, another seed) are fit with the
   Bradley-Terry loss on top of CLIP (:func:`fit_preference`: CLIP's image tower frozen, its
   text tower fine-tuned, a taste tower of their own trained from scratch). Held-out
   metric: pairwise accuracy against the noise-free order on fresh pairs from another seed
   over the *test* prompts (``pairwise_accuracy``, the bar) and over the training prompts.

Every scorer folder holds ``model.safetensors``, ``config.json`` (architecture, vocabulary,
metrics, world version) and ``metrics.json``; ``summary.json`` collects held-out metrics and
timings. The generic fitting functions (:func:`fit_preference`, :func:`fit_contrastive`) work on
plain arrays so that they can be tested without the world.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from opd import calltime
from opd.rewards.learned import (
    ArchConfig,
    ContrastiveModel,
    LearnedScorer,
    PreferenceModel,
    Vocab,
    bradley_terry_loss,
    build_model,
    info_nce_loss,
    pairwise_accuracy,
    retrieval_top1,
    save_scorer,
)
from opd.worlds.mini import (
    DEFAULT_CONFIG,
    TASKS,
    WORLD_VERSION,
    WorldConfig,
    corpus_scenes,
    hidden_utility,
    preference_pairs,
    render,
    sample_scenes,
)

HELDOUT_SEED_OFFSET = 1_000_003  # held-out data come from seed + this offset (never trained on)


# --------------------------------------------------------------------------------------------
# Data containers
# --------------------------------------------------------------------------------------------
@dataclass
class PairData:
    """Preference pairs: image a and image b rendered for ``prompts[i]``; ``a_wins[i]`` is 1
    where a has the higher hidden utility."""

    images_a: np.ndarray  # uint8 (N, H, W, 3)
    images_b: np.ndarray  # uint8 (N, H, W, 3)
    prompts: list[str]
    a_wins: np.ndarray  # (N,) bool / {0, 1}

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class CaptionData:
    """(image, caption) pairs for contrastive training."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)


@dataclass
class TrainConfig:
    """Optimisation hyper-parameters of one learned scorer."""

    steps: int = 300
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: int = 20
    n_train: int = 20_000
    n_heldout: int = 2_000
    vocab_min_count: int = 2
    tune_text: bool = False  # preference on CLIP: also fit CLIP's text tower (image tower frozen)
    ema: float = 0.0  # > 0: the returned weights are an exponential moving average (this decay)
    arch: ArchConfig = field(default_factory=ArchConfig)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["arch"] = self.arch.to_json()
        return data


def _to_nchw_uint8(images: np.ndarray) -> torch.Tensor:
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()


def _as_float(x: torch.Tensor, resolution: int) -> torch.Tensor:
    out = x.float().div_(127.5).sub_(1.0)
    if out.shape[-2:] != (resolution, resolution):
        out = torch.nn.functional.interpolate(
            out, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
        )
    return out


def _lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 5% of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on biases, norms and embeddings."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2 and "embed" not in n]
    other = [p for n, p in params if not (p.ndim >= 2 and "embed" not in n)]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


# --------------------------------------------------------------------------------------------
# Generic fitting (plain arrays in, trained model out)
# --------------------------------------------------------------------------------------------
class _Ema:
    """Exponential moving average of a model's trainable parameters (a no-op at decay 0)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad] if decay > 0 else []
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for s, p in zip(self.shadow, self.params, strict=True):
            p.copy_(s)


@torch.inference_mode()
def _features(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 2048
) -> torch.Tensor:
    return torch.cat([fn(x[s : s + batch]) for s in range(0, len(x), batch)])


def fit_preference(
    data: PairData,
    cfg: TrainConfig,
    seed: int,
    vocab: Vocab | None = None,
    init: tuple[ContrastiveModel, Vocab] | None = None,
) -> tuple[PreferenceModel, Vocab, list[float]]:
    """Fit a preference model with the Bradley-Terry loss; returns (model, vocab, losses).

    ``init``: a trained CLIP model and its vocabulary; its towers become the model's content
    towers, the image tower frozen (its features are computed once), the text tower frozen too
    unless ``cfg.tune_text``; its vocabulary becomes the model's. Without
    it the content towers are trained from scratch with the rest. Deterministic for a given
    ``seed`` and thread count; the caller's global RNG is untouched.
    """
    if init is not None:
        clip, vocab = init
        arch = dataclasses.replace(
            cfg.arch, kind="preference", vocab_size=len(vocab), content=clip.cfg.to_json()
        )
    else:
        vocab = vocab or Vocab.build(data.prompts, min_count=cfg.vocab_min_count)
        arch = dataclasses.replace(cfg.arch, kind="preference", vocab_size=len(vocab), content=None)
    res, c_res = arch.resolution, arch.content_arch().resolution
    xa, xb = _to_nchw_uint8(data.images_a), _to_nchw_uint8(data.images_b)
    ids = vocab.encode(data.prompts)
    lab = torch.as_tensor(np.asarray(data.a_wins).astype(np.float32))
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PreferenceModel(arch)
        frozen = init is not None
        if init is not None:
            model.content_image.load_state_dict(init[0].image.state_dict())
            model.content_text.load_state_dict(init[0].text.state_dict())
            frozen_parts = [model.content_image]
            if not cfg.tune_text:
                frozen_parts.append(model.content_text)
            for part in frozen_parts:
                part.requires_grad_(False)
            fa = _features(lambda x: model.content_image(_as_float(x, c_res)), xa)
            fb = _features(lambda x: model.content_image(_as_float(x, c_res)), xb)
            ft = _features(model.content_text, ids)
        opt = _optimizer(model, cfg)
        ema = _Ema(model, cfg.ema)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            idx = torch.randint(len(data), (min(cfg.batch_size, len(data)),), generator=gen)
            x = _as_float(torch.cat([xa[idx], xb[idx]]), res)
            if frozen:
                f_img = torch.cat([fa[idx], fb[idx]])
                f_txt = (model.content_text(ids[idx]) if cfg.tune_text else ft[idx]).repeat(2, 1)
            else:
                x_c = x if c_res == res else _as_float(torch.cat([xa[idx], xb[idx]]), c_res)
                f_img, f_txt = model.content_image(x_c), model.content_text(ids[idx]).repeat(2, 1)
            s = model.score_features(model.taste(x), f_img, f_txt)
            loss = bradley_terry_loss(s[: len(idx)], s[len(idx) :], lab[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update()
            losses.append(loss.item())
        ema.copy_to_model()
        for p in model.parameters():
            p.requires_grad_(True)
    model.eval()
    return model, vocab, losses


@torch.inference_mode()
def _score(
    model: PreferenceModel | ContrastiveModel,
    vocab: Vocab,
    images: np.ndarray,
    texts: Sequence[str],
    batch: int = 1024,
) -> np.ndarray:
    out = []
    x_all = _to_nchw_uint8(images)
    for s in range(0, len(texts), batch):
        x = _as_float(x_all[s : s + batch], model.cfg.resolution)
        out.append(model(x, vocab.encode(list(texts[s : s + batch]))).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def evaluate_preference(model: PreferenceModel, vocab: Vocab, data: PairData) -> float:
    """Held-out pairwise accuracy of ``model`` on ``data``."""
    sa = _score(model, vocab, data.images_a, data.prompts)
    sb = _score(model, vocab, data.images_b, data.prompts)
    return pairwise_accuracy(sa, sb, data.a_wins)


def fit_contrastive(
    data: CaptionData, cfg: TrainConfig, seed: int, vocab: Vocab | None = None
) -> tuple[ContrastiveModel, Vocab, list[float]]:
    """Fit a CLIP-style model with the symmetric InfoNCE loss over in-batch negatives."""
    vocab = vocab or Vocab.build(data.captions, min_count=cfg.vocab_min_count)
    arch = dataclasses.replace(cfg.arch, kind="contrastive", vocab_size=len(vocab))
    x_all = _to_nchw_uint8(data.images)
    ids = vocab.encode(data.captions)
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch)
        assert isinstance(model, ContrastiveModel)
        opt = _optimizer(model, cfg)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            idx = torch.randperm(len(data), generator=gen)[: cfg.batch_size]
            img = model.embed_images(_as_float(x_all[idx], arch.resolution))
            txt = model.embed_texts(ids[idx])
            loss = info_nce_loss(img, txt, model.logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():  # CLIP clamps the temperature at 100
                model.logit_scale.clamp_(0.0, math.log(100.0))
            losses.append(loss.item())
    model.eval()
    return model, vocab, losses


def retrieval_groups(captions: Sequence[str], group: int = 16, seed: int = 0) -> list[np.ndarray]:
    """Disjoint groups of ``group`` indices whose captions are pairwise distinct (greedy over a
    seeded shuffle), so that each image has exactly one matching caption in its group."""
    rng = np.random.default_rng(seed)
    pool = list(rng.permutation(len(captions)))
    groups: list[np.ndarray] = []
    while len(pool) >= group:
        chosen: list[int] = []
        seen: set[str] = set()
        rest: list[int] = []
        for i in pool:
            if len(chosen) < group and captions[i] not in seen:
                chosen.append(int(i))
                seen.add(captions[i])
            else:
                rest.append(i)
        if len(chosen) < group:
            break
        groups.append(np.array(chosen))
        pool = rest
    return groups


@torch.inference_mode()
def evaluate_retrieval(
    model: ContrastiveModel, vocab: Vocab, data: CaptionData, group: int = 16, seed: int = 0
) -> dict[str, float]:
    """Top-1 retrieval among ``group`` candidates: image -> caption and caption -> image."""
    x_all = _to_nchw_uint8(data.images)
    img = torch.cat(
        [
            model.embed_images(_as_float(x_all[s : s + 1024], model.cfg.resolution))
            for s in range(0, len(data), 1024)
        ]
    )
    txt = model.embed_texts(vocab.encode(data.captions))
    i2t, t2i = [], []
    for g in retrieval_groups(data.captions, group, seed):
        sim = (img[g] @ txt[g].T).double().numpy()
        i2t.append(retrieval_top1(sim))
        t2i.append(retrieval_top1(sim.T))
    return {
        "retrieval_top1_image_to_text": float(np.mean(i2t)) if i2t else float("nan"),
        "retrieval_top1_text_to_image": float(np.mean(t2i)) if t2i else float("nan"),
        "retrieval_groups": len(i2t),
        "retrieval_candidates": group,
    }


# --------------------------------------------------------------------------------------------
# The mini world's scorers
# --------------------------------------------------------------------------------------------
TASTE_ARCH = ArchConfig(thumb=2, lcn=True)
PREFERENCE_SCORERS: dict[str, dict[str, Any]] = {
    # name: hidden utility of opd.worlds.mini.utilities, seed offset, taste-tower architecture
    "pick": {"utility": "pick", "seed_offset": 0, "arch": TASTE_ARCH},
    # hps weighs edge softness heavily: a full-resolution first layer sees edge profiles better.
    "hps": {
        "utility": "hps",
        "seed_offset": 1,
        "arch": dataclasses.replace(TASTE_ARCH, strides=(1, 2, 2)),
    },
    # ImageReward analog (held-out metric): another utility, a wider GELU taste tower and head,
    # another seed.
    "pref2": {
        "utility": "ir",
        "seed_offset": 2,
        "arch": dataclasses.replace(
            TASTE_ARCH,
            channels=(16, 32, 48),
            strides=(2, 2, 1),
            embed_dim=96,
            head_hidden=96,
            activation="gelu",
        ),
    },
}
CLIP_ARCH = ArchConfig(kind="contrastive")
CLIP_SEED_OFFSET = 3
PAIRWISE_BAR = 0.90  # docs/mini_world.md property 1
RETRIEVAL_BAR = 0.90
# Corpus captions for the contrastive scorer: the corpus's alt-text phrasing (incl. the
# aesthetic adjectives, at a higher rate) but none of its corruptions, so that captions are true.
CLIP_CAPTION_OVERRIDES: dict[str, Any] = {
    "caption_drop_color": 0.0,
    "caption_drop_count": 0.0,
    "caption_drop_relation": 0.0,
    "caption_drop_text": 0.0,
    "caption_wrong": 0.0,
    "caption_generic": 0.0,
    "caption_adjective": 0.3,
    "extra_object_rate": 0.0,
    "caption_confuse_text": 0.0,
    "caption_confuse_shape": 0.0,
    "caption_confuse_text_pairs": (),
    "caption_confuse_shape_pairs": (),
}
# Clean renders of the training prompts added to the contrastive data (fraction of n_train per
# task): the prompt sets' phrasings and the fine distinctions between their prompts.
CLIP_PROMPT_MIX: dict[str, float] = {"composition": 0.3, "text": 0.15, "aesthetics": 0.3}


def world_config(config: Any = None) -> Any:
    """A :class:`~opd.worlds.mini.WorldConfig` from ``config``: a WorldConfig, a profile dict
    (its ``world.params``), a dict of WorldConfig fields, or None (the default world)."""
    if config is None:
        return DEFAULT_CONFIG
    if isinstance(config, WorldConfig):
        return config
    if isinstance(config, Mapping):
        if "world" in config:
            return WorldConfig.from_dict(dict((config.get("world") or {}).get("params") or {}))
        return WorldConfig.from_dict(dict(config))
    raise TypeError(f"cannot make a WorldConfig from {type(config).__name__}")


def scorer_train_config(name: str, config: Any = None) -> TrainConfig:
    """Default hyper-parameters of scorer ``name``, updated by the profile's
    ``scorer_training.<name>`` mapping (keys of :class:`TrainConfig`; ``arch`` keys nest)."""
    if name == "clip":
        cfg = TrainConfig(steps=600, lr=3e-3, n_train=20_000, n_heldout=4_000, arch=CLIP_ARCH)
    elif name in PREFERENCE_SCORERS:
        cfg = TrainConfig(
            steps=1000,
            batch_size=128,
            lr=3e-3,
            n_train=40_000,
            tune_text=True,
            arch=PREFERENCE_SCORERS[name]["arch"],
        )
    else:
        known = ", ".join([*PREFERENCE_SCORERS, "clip"])
        raise KeyError(f"unknown learned scorer {name!r}; known: {known}")
    over: dict[str, Any] = {}
    if isinstance(config, Mapping):
        over = dict(((config.get("scorer_training") or {}).get(name)) or {})
    arch_over = over.pop("arch", None) or {}
    if arch_over:
        cfg = dataclasses.replace(
            cfg, arch=ArchConfig.from_json(cfg.arch.to_json() | dict(arch_over))
        )
    return dataclasses.replace(cfg, **over)


def pair_data(pairs: Any, true_labels: bool = False) -> PairData:
    """:class:`PairData` from the world's ``PreferencePairs`` (``label`` or ``label_true``)."""
    labels = pairs.label_true if true_labels else pairs.label
    return PairData(pairs.images_a, pairs.images_b, list(pairs.prompts), np.asarray(labels) > 0)


def relabel(pairs: Any, utility: str, world: Any, min_margin: float = 0.05) -> PairData:
    """The same rendered pairs labelled by another hidden ``utility`` (near ties dropped, as
    ``preference_pairs`` does), so that one set of renders serves every preference scorer."""
    ua = hidden_utility(utility, pairs.scenes_a, pairs.prompts, world, pairs.metadata)
    ub = hidden_utility(utility, pairs.scenes_b, pairs.prompts, world, pairs.metadata)
    keep = np.nonzero(np.abs(ua - ub) >= min_margin)[0]
    return PairData(
        pairs.images_a[keep],
        pairs.images_b[keep],
        [pairs.prompts[i] for i in keep],
        ua[keep] > ub[keep],
    )


def _pairs(n: int, seed: int, utility: str, world: Any, split: str) -> Any:
    return preference_pairs(n, seed, utility, world, split=split)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _load_clip(init: Any) -> tuple[ContrastiveModel, Vocab] | None:
    """(model, vocab) of a trained clip scorer: given as a folder, a LearnedScorer, a tuple, or
    None (no initialisation)."""
    if init is None:
        return None
    if isinstance(init, tuple):
        return init

    scorer = init if isinstance(init, LearnedScorer) else LearnedScorer("clip", init)
    model, vocab = scorer.load()
    if not isinstance(model, ContrastiveModel):
        raise TypeError(f"{scorer.path} holds a {type(model).__name__}, not a contrastive model")
    return model, vocab


def train_preference_scorer(
    name: str,
    config: Any = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    *,
    clip: Any = None,
    train_config: TrainConfig | None = None,
    train_pairs: Any = None,
) -> dict[str, Any]:
    """Train preference scorer ``name`` (``pick``, ``hps`` or ``pref2``) on the world's pairs.

    ``config``: a WorldConfig or profile (see :func:`world_config`). ``clip``: the trained clip
    scorer to start from (its folder; PickScore and HPS start from CLIP); None trains the
    content towers from scratch too (much less accurate). ``train_pairs``: the world's
    ``PreferencePairs`` to relabel with this scorer's utility instead of drawing new ones.
    Held-out pairs are drawn fresh from ``seed + HELDOUT_SEED_OFFSET``: on the test prompts
    (``pairwise_accuracy``, the bar) and on the training prompts. Writes ``out_dir/{model.
    safetensors, config.json, metrics.json}`` when ``out_dir`` is given; returns the metrics.
    """
    spec = PREFERENCE_SCORERS[name]
    tcfg = train_config or scorer_train_config(name, config)
    world = world_config(config)
    utility = spec["utility"]
    t0 = time.perf_counter()
    if train_pairs is None:
        data = pair_data(_pairs(tcfg.n_train, seed, utility, world, "train"))
    else:
        data = relabel(train_pairs, utility, world)
    t1 = time.perf_counter()
    with calltime.timed("scorer_training"):
        model, vocab, losses = fit_preference(
            data, tcfg, seed + spec["seed_offset"], init=_load_clip(clip)
        )
    t2 = time.perf_counter()
    held_seed = seed + HELDOUT_SEED_OFFSET + spec["seed_offset"]
    held_test = pair_data(_pairs(tcfg.n_heldout, held_seed, utility, world, "test"), True)
    held_train = pair_data(_pairs(tcfg.n_heldout, held_seed + 1, utility, world, "train"), True)
    acc_test = evaluate_preference(model, vocab, held_test)
    acc_train = evaluate_preference(model, vocab, held_train)
    k = min(len(data), 2000)
    train_acc = evaluate_preference(
        model,
        vocab,
        PairData(data.images_a[:k], data.images_b[:k], data.prompts[:k], data.a_wins[:k]),
    )
    metrics = {
        "scorer": name,
        "kind": "preference",
        "utility": utility,
        "world_version": WORLD_VERSION,
        "seed": seed,
        "initialised_from_clip": clip is not None,
        "heldout": {
            "pairwise_accuracy": acc_test,
            "pairwise_accuracy_train_prompts": acc_train,
            "n_pairs": tcfg.n_heldout,
            "seed": held_seed,
            "bar": PAIRWISE_BAR,
            "passed": bool(acc_test >= PAIRWISE_BAR),
        },
        "train_pairwise_accuracy": train_acc,
        "n_train_pairs": len(data),
        "final_loss": float(np.mean(losses[-20:])),
        "data_seconds": t1 - t0,
        "train_seconds": t2 - t1,
        "eval_seconds": time.perf_counter() - t2,
        "train_config": tcfg.to_json(),
    }
    if out_dir is not None:
        save_scorer(model, vocab, out_dir, metrics)
        _write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


def clip_captions(
    n: int, seed: int, world: Any, prompt_mix: Mapping[str, float] | None = None
) -> CaptionData:
    """Contrastive data: ``n`` corpus scenes with true captions in alt-text phrasing (see
    ``CLIP_CAPTION_OVERRIDES``), plus clean renders of each task's training prompts
    (``prompt_mix[task] * n`` of them; default :data:`CLIP_PROMPT_MIX`)."""
    clean = world.replace(**CLIP_CAPTION_OVERRIDES)
    corpus = corpus_scenes(n, seed, clean)
    images, captions = [render(corpus.scenes, clean)], [list(corpus.captions)]
    mix = CLIP_PROMPT_MIX if prompt_mix is None else prompt_mix
    for i, (task, frac) in enumerate(sorted(mix.items())):
        k = round(frac * n)
        if k:
            im, prompts, _ = sample_scenes(
                task, k, seed * 7919 + i + 1, split="train", config=world
            )
            images.append(im)
            captions.append(list(prompts))
    return CaptionData(np.concatenate(images), [c for part in captions for c in part])


def train_clip_scorer(
    config: Any = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    *,
    train_config: TrainConfig | None = None,
) -> dict[str, Any]:
    """Train the contrastive scorer ``clip`` on (caption, image) pairs (:func:`clip_captions`).

    Held-out metric: top-1 retrieval among 16 candidates on fresh corpus pairs (image -> caption
    is the bar; caption -> image is reported), and the same on clean renders of each task's test
    prompts. Writes ``out_dir/{model.safetensors, config.json, metrics.json}`` when given.
    """
    tcfg = train_config or scorer_train_config("clip", config)
    world = world_config(config)
    t0 = time.perf_counter()
    data = clip_captions(tcfg.n_train, seed, world)
    t1 = time.perf_counter()
    with calltime.timed("scorer_training"):
        model, vocab, losses = fit_contrastive(data, tcfg, seed + CLIP_SEED_OFFSET)
    t2 = time.perf_counter()
    held_seed = seed + HELDOUT_SEED_OFFSET + CLIP_SEED_OFFSET
    held = clip_captions(tcfg.n_heldout, held_seed, world, prompt_mix={})
    heldout = evaluate_retrieval(model, vocab, held, 16, held_seed)
    per_task = {}
    for task in TASKS:
        n_task = min(512, tcfg.n_heldout)
        images, prompts, _ = sample_scenes(task, n_task, held_seed, split="test", config=world)
        res = evaluate_retrieval(model, vocab, CaptionData(images, prompts), 16, held_seed)
        per_task[task] = res["retrieval_top1_image_to_text"]
    top1 = heldout["retrieval_top1_image_to_text"]
    metrics = {
        "scorer": "clip",
        "kind": "contrastive",
        "world_version": WORLD_VERSION,
        "seed": seed,
        "heldout": {
            **heldout,
            "retrieval_top1": top1,
            "retrieval_top1_test_prompts": per_task,
            "n_pairs": tcfg.n_heldout,
            "seed": held_seed,
            "bar": RETRIEVAL_BAR,
            "passed": bool(top1 >= RETRIEVAL_BAR),
        },
        "n_train_pairs": len(data),
        "final_loss": float(np.mean(losses[-20:])),
        "logit_scale": float(model.logit_scale.detach().exp()),
        "data_seconds": t1 - t0,
        "train_seconds": t2 - t1,
        "eval_seconds": time.perf_counter() - t2,
        "train_config": tcfg.to_json(),
    }
    if out_dir is not None:
        save_scorer(model, vocab, out_dir, metrics)
        _write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics


ALL_SCORERS: tuple[str, ...] = ("clip", "pick", "hps", "pref2")


def train_all_scorers(
    config: Any = None,
    seed: int = 0,
    out_dir: str | Path = "scorers",
    threads: int | None = 1,
    names: Sequence[str] = ALL_SCORERS,
    log: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Train ``names`` (default: clip, then pick, hps, pref2 starting from it) into
    ``out_dir/<name>/`` and write ``out_dir/summary.json``. One set of rendered preference pairs
    serves every preference scorer (each relabels it with its own utility). A preference scorer
    trained without ``clip`` in ``names`` starts from ``out_dir/clip`` when that exists.
    ``threads`` sets torch's thread count for the duration (None: leave it)."""
    out = Path(out_dir)
    world = world_config(config)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    results: dict[str, Any] = {}
    t_start = time.perf_counter()
    data_seconds = 0.0
    try:
        if "clip" in names:
            results["clip"] = train_clip_scorer(config, seed, out / "clip")
            if log:
                r = results["clip"]
                log(
                    f"[scorers] clip: held-out top-1 {r['heldout']['retrieval_top1']:.3f} "
                    f"(bar {RETRIEVAL_BAR:.2f}), train {r['train_seconds']:.1f}s"
                )
        pref = [n for n in names if n in PREFERENCE_SCORERS]
        if pref:
            clip_dir = out / "clip"
            clip = clip_dir if (clip_dir / "config.json").is_file() else None
            n_train = max(scorer_train_config(n, config).n_train for n in pref)
            t0 = time.perf_counter()
            shared = _pairs(n_train, seed, PREFERENCE_SCORERS[pref[0]]["utility"], world, "train")
            data_seconds = time.perf_counter() - t0
            if log:
                log(f"[scorers] {len(shared)} preference pairs rendered in {data_seconds:.1f}s")
            for name in pref:
                res = train_preference_scorer(
                    name, config, seed, out / name, clip=clip, train_pairs=shared
                )
                results[name] = res
                if log:
                    log(
                        f"[scorers] {name}: held-out pairwise "
                        f"{res['heldout']['pairwise_accuracy']:.3f} (bar {PAIRWISE_BAR:.2f}), "
                        f"train {res['train_seconds']:.1f}s"
                    )
    finally:
        if threads is not None:
            torch.set_num_threads(old_threads)

    summary = {
        "world_version": WORLD_VERSION,
        "world": world.to_dict(),
        "seed": seed,
        "threads": threads,
        "shared_pairs_seconds": data_seconds,
        "total_seconds": time.perf_counter() - t_start,
        "scorers": {
            n: {
                "heldout": r["heldout"],
                "train_seconds": r["train_seconds"],
                "data_seconds": r["data_seconds"],
                "eval_seconds": r["eval_seconds"],
            }
            for n, r in results.items()
        },
        "all_passed": all(r["heldout"]["passed"] for r in results.values()),
    }
    _write_json(out / "summary.json", summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m opd.rewards.train_scorers --out DIR [--seed S] [--threads T] [--only ...]
    [--strict]``; with ``--strict`` it exits 1 when a scorer misses its held-out bar (otherwise
    the bars are only recorded in ``summary.json``)."""
    parser = argparse.ArgumentParser(description="train the mini world's learned scorers")
    parser.add_argument("--out", type=Path, required=True, help="folder for <name>/, summary.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=list(ALL_SCORERS), choices=ALL_SCORERS)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a bar is missed")
    args = parser.parse_args(argv)
    summary = train_all_scorers(None, args.seed, args.out, args.threads, args.only)
    return 1 if args.strict and not summary["all_passed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
