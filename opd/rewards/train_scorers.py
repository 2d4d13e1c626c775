"""Training of the mini world's learned scorers (``pick``, ``hps``, ``clip`` and ``pref2``).

Preference models (``pick``, ``hps``, ``pref2``) are fit with the Bradley-Terry loss on image
pairs that the world renders for one prompt and labels with a hidden utility
(``opd.worlds.mini.utilities.preference_pairs``); their held-out metric is the pairwise accuracy
on fresh pairs drawn from a different seed. The contrastive model (``clip``) is fit with the
symmetric InfoNCE loss on (caption, image) pairs; its held-out metric is the top-1 retrieval
accuracy among 16 candidates (15 distractors with other captions) on fresh pairs.

Entry points: :func:`train_preference_scorer`, :func:`train_clip_scorer`,
:func:`train_all_scorers` (writes ``out_dir/{pick,hps,clip,pref2}/`` and ``summary.json``) and
``python -m opd.rewards.train_scorers --out DIR``. The generic fitting functions
(:func:`fit_preference`, :func:`fit_contrastive`) work on plain arrays so that they can be
tested without the world.
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

from opd.rewards.learned import (
    ArchConfig,
    ContrastiveModel,
    PreferenceModel,
    Vocab,
    bradley_terry_loss,
    build_model,
    info_nce_loss,
    pairwise_accuracy,
    retrieval_top1,
    save_scorer,
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
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98))


# --------------------------------------------------------------------------------------------
# Generic fitting (plain arrays in, trained model out)
# --------------------------------------------------------------------------------------------
def fit_preference(
    data: PairData, cfg: TrainConfig, seed: int, vocab: Vocab | None = None
) -> tuple[PreferenceModel, Vocab, list[float]]:
    """Fit a preference model with the Bradley-Terry loss; returns (model, vocab, losses).

    Deterministic for a given ``seed`` and thread count; the caller's global RNG is untouched.
    """
    vocab = vocab or Vocab.build(data.prompts, min_count=cfg.vocab_min_count)
    arch = dataclasses.replace(cfg.arch, kind="preference", vocab_size=len(vocab))
    xa, xb = _to_nchw_uint8(data.images_a), _to_nchw_uint8(data.images_b)
    ids = vocab.encode(data.prompts)
    lab = torch.as_tensor(np.asarray(data.a_wins).astype(np.float32))
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch)
        assert isinstance(model, PreferenceModel)
        opt = _optimizer(model, cfg)
        gen = torch.Generator().manual_seed(seed)
        model.train()
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            idx = torch.randint(len(data), (min(cfg.batch_size, len(data)),), generator=gen)
            x = _as_float(torch.cat([xa[idx], xb[idx]]), arch.resolution)
            f_img = model.image(x)
            f_txt = model.text(ids[idx]).repeat(2, 1)
            s = model.score_features(f_img, f_txt)
            loss = bradley_terry_loss(s[: len(idx)], s[len(idx) :], lab[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
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
        [model.embed_images(_as_float(x_all[s : s + 1024], model.cfg.resolution)) for s in range(0, len(data), 1024)]
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
