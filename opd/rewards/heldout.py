"""Held-out metrics of the mini world: scorers that no training run ever uses as its reward.

They play the roles of the paper's held-out columns (LAION Aesthetic, ImageReward,
UnifiedReward) and are registered in ``opd.registry.SCORERS``:

``quality`` (analog of the LAION aesthetic predictor)
    A hand-written, deterministic, pure-numpy image-quality score in [0, 1]:
    ``noise * grid * clipping * (0.4 + 0.6 * mean(contrast, sharpness))`` where

    - ``noise = exp(-sigma / 6)``, ``sigma`` a robust estimate of the pixel-noise standard deviation
      (Immerkaer's Laplacian-difference operator on luminance, median-based so that sparse edges
      do not count; clean renders give sigma ~ 0-2, grey levels 0-255);
    - ``grid = exp(-g / 3)``, ``g`` the excess of the median pixel jump across the 2-pixel patch
      boundaries of the generators over the median jump inside patches (columns and rows), i.e.
      the patch-grid texture that reward hacking produces;
    - ``clipping = 1 - min(1, 4 * f)``, ``f`` the fraction of channel values at 0 or 255
      (over-saturated or blown-out colours; clean renders never clip);
    - ``contrast = 1 - exp(-std(luminance) / 20)`` (RMS contrast);
    - ``sharpness = clip(p99(|gradient|) / max(0.5 * (p99 - p1 of luminance), 10), 0, 1)``: how
      steep the steepest edges are relative to the image's range (faint edges never count);
      both on a copy blurred by a 1 px Gaussian, so that noise never counts as detail.

    Adding noise to an image lowers it (tested); it never reads the prompt.
``pref2`` (analog of ImageReward)
    A second learned preference model, trained by :func:`opd.rewards.train_scorers.
    train_all_scorers` like ``pick`` and ``hps`` (Bradley-Terry on top of the trained CLIP) but on
    another hidden utility, the world's ``ir`` (mostly prompt alignment, some contrast, size and
    centring), with another taste-tower architecture (GELU, strides 2-2-1, 48 channels, wider
    head) and seed. Raw logit, like ImageReward.
``judge`` (analog of UnifiedReward)
    A rule-based judge on a 1-5 scale combining prompt alignment and quality per prompt type:
    ``1 + 4 * (0.7 * alignment + 0.3 * quality)``, where alignment is the compositional
    detector's partial credit (``compose``) for compositional prompts, the text reader's score
    (``text``) for text prompts, their mean for prompts with both, and for free (preference)
    prompts the detector's partial credit on whatever objects the prompt names (or quality alone
    when it names none).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from opd.registry import SCORERS
from opd.rewards.compose import ComposeScorer
from opd.rewards.learned import LearnedScorer
from opd.rewards.text import TextScorer
from opd.worlds.mini import parse_prompt

# Luminance weights (ITU-R BT.601).
_LUMA = np.array([0.299, 0.587, 0.114], np.float64)
DENOISE_SIGMA = 1.0  # px, Gaussian blur before contrast and sharpness are measured
MIN_EDGE_SPAN = 10.0  # grey levels: faint edges never count as sharp


# --------------------------------------------------------------------------------------------
# quality
# --------------------------------------------------------------------------------------------
def _luminance(images: np.ndarray) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected images (N, H, W, 3), got {arr.shape}")
    return arr.astype(np.float64) @ _LUMA


def noise_sigma(lum: np.ndarray) -> np.ndarray:
    """Robust noise standard deviation per image (N,) from luminance (N, H, W).

    Immerkaer's operator ``[[1,-2,1],[-2,4,-2],[1,-2,1]]`` annihilates locally linear signals; for
    white noise of std s its output has std 6 s. The median absolute response / 0.6745 / 6 is a
    robust estimate of s that ignores the (sparse) object edges.
    """
    a = lum
    resp = (
        a[:, :-2, :-2] - 2 * a[:, :-2, 1:-1] + a[:, :-2, 2:]
        - 2 * a[:, 1:-1, :-2] + 4 * a[:, 1:-1, 1:-1] - 2 * a[:, 1:-1, 2:]
        + a[:, 2:, :-2] - 2 * a[:, 2:, 1:-1] + a[:, 2:, 2:]
    )  # fmt: skip
    return np.median(np.abs(resp).reshape(len(a), -1), axis=1) / 0.6745 / 6.0


def grid_artefact(lum: np.ndarray, period: int = 2) -> np.ndarray:
    """Patch-grid artefact per image (N,), in grey levels.

    For each phase of ``period`` the median absolute jump between neighbouring pixels (columns and
    rows); the score is the largest minus the smallest phase median. Medians ignore the sparse
    object edges, so clean renders give ~0, plain noise gives ~0 (every phase alike) and a
    texture with a jump at every patch boundary gives about its jump size.
    """
    out = np.zeros(len(lum))
    for axis in (1, 2):
        d = np.abs(np.diff(lum, axis=axis))
        phases = [np.take(d, range(p, d.shape[axis], period), axis=axis) for p in range(period)]
        med = np.stack([np.median(ph.reshape(len(lum), -1), axis=1) for ph in phases], 1)
        out += med.max(1) - med.min(1)
    return out / 2


def quality_components(images: np.ndarray) -> dict[str, np.ndarray]:
    """The factors of :func:`quality_score` per image (each (N,), all in [0, 1]) plus the raw
    statistics (``sigma``, ``grid_px``, ``clip_frac``, ``lum_std``)."""
    arr = np.asarray(images)
    lum = _luminance(arr)
    n = len(arr)
    sigma = noise_sigma(lum)
    grid_px = grid_artefact(lum)
    clip_frac = ((arr == 0) | (arr == 255)).reshape(n, -1).mean(1)
    # Contrast and sharpness are read on a denoised copy, so that noise never counts as detail.
    smooth = ndimage.gaussian_filter(lum, sigma=(0, DENOISE_SIGMA, DENOISE_SIGMA), mode="nearest")
    flat = smooth.reshape(n, -1)
    lum_std = flat.std(1)
    gy, gx = np.gradient(smooth, axis=(1, 2))
    grad = np.hypot(gx, gy).reshape(n, -1)
    span = np.percentile(flat, 99, axis=1) - np.percentile(flat, 1, axis=1)
    sharp = np.percentile(grad, 99, axis=1) / np.maximum(0.5 * span, MIN_EDGE_SPAN)
    sharp = np.clip(sharp, 0.0, 1.0)
    return {
        "noise": np.exp(-sigma / 6.0),
        "grid": np.exp(-grid_px / 3.0),
        "clipping": 1.0 - np.minimum(1.0, 4.0 * clip_frac),
        "contrast": 1.0 - np.exp(-lum_std / 20.0),
        "sharpness": sharp,
        "sigma": sigma,
        "grid_px": grid_px,
        "clip_frac": clip_frac,
        "lum_std": lum_std,
    }


def quality_score(images: np.ndarray) -> np.ndarray:
    """Hand-written image quality in [0, 1] per image (see the module docstring)."""
    if len(images) == 0:
        return np.zeros(0)
    c = quality_components(images)
    base = 0.4 + 0.6 * (c["contrast"] + c["sharpness"]) / 2.0
    return c["noise"] * c["grid"] * c["clipping"] * base


@SCORERS.register("quality")
def quality_scorer() -> Any:
    """LAION-Aesthetic analog: hand-written image quality in [0, 1]; ignores the prompt."""

    def score(
        images: np.ndarray,
        prompts: Sequence[str] | None = None,
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> np.ndarray:
        return quality_score(np.asarray(images))

    return score


# --------------------------------------------------------------------------------------------
# pref2
# --------------------------------------------------------------------------------------------
@SCORERS.register("pref2")
def pref2_scorer(weights: str | Path | None = None) -> LearnedScorer:
    """ImageReward analog: a second preference model (other utility mix, architecture, seed)."""
    return LearnedScorer("pref2", weights)


# --------------------------------------------------------------------------------------------
# judge
# --------------------------------------------------------------------------------------------
JUDGE_ALIGNMENT_WEIGHT = 0.7


def _demands(prompt: str, meta: dict[str, Any] | None, config: Any) -> tuple[bool, bool]:
    """(names objects, asks for text) of one prompt, from its metadata or by parsing it."""
    meta = dict(meta or {})
    if not any(k in meta for k in ("include", "objects", "text")):
        meta = parse_prompt(prompt, config) if prompt else {}
    has_objects = bool(meta.get("include") or meta.get("objects"))
    return has_objects, "text" in meta


class JudgeScorer:
    """UnifiedReward analog on a 1-5 scale: ``1 + 4 * (0.7 * alignment + 0.3 * quality)``.

    Alignment per prompt type: the compositional detector's partial credit (``compose_partial``)
    when the prompt names objects, the text reader's score (``text``) when it asks for text, the
    mean of both when it does both; prompts that demand nothing are judged on quality alone
    (``1 + 4 * quality``). ``components(...)`` returns the parts.
    """

    def __init__(self, config: Any = None) -> None:
        self.config = config
        self.compose = ComposeScorer(config, partial=True)
        self.text = TextScorer(config)

    def components(
        self,
        images: np.ndarray,
        prompts: Sequence[str],
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> dict[str, np.ndarray]:
        images = np.asarray(images)
        n = len(images)
        prompts = list(prompts)
        metas = list(metadata) if metadata is not None else [{}] * n
        if len(prompts) != n or len(metas) != n:
            raise ValueError("images, prompts and metadata differ in length")
        demands = np.array(
            [_demands(p, m, self.config) for p, m in zip(prompts, metas, strict=True)]
        )
        demands = demands.reshape(n, 2)
        compose = np.full(n, np.nan)
        text = np.full(n, np.nan)
        for col, scorer, out in ((0, self.compose, compose), (1, self.text, text)):
            idx = np.nonzero(demands[:, col])[0]
            if idx.size:
                sub_meta = [metas[i] or {} for i in idx]
                if col == 0:  # the detector reads only object clauses; drop a text target
                    sub_meta = [{k: v for k, v in m.items() if k != "text"} for m in sub_meta]
                out[idx] = scorer(images[idx], [prompts[i] for i in idx], sub_meta)
        quality = quality_score(images)
        parts = np.stack([compose, text])
        count = (~np.isnan(parts)).sum(0)
        has_any = count > 0
        alignment = np.where(has_any, np.nansum(parts, 0) / np.maximum(count, 1), np.nan)
        a = JUDGE_ALIGNMENT_WEIGHT
        mixed = np.where(has_any, a * np.nan_to_num(alignment) + (1 - a) * quality, quality)
        return {
            "judge": 1.0 + 4.0 * mixed,
            "alignment": alignment,
            "compose_partial": compose,
            "text": text,
            "quality": quality,
        }

    def __call__(
        self,
        images: np.ndarray,
        prompts: Sequence[str],
        metadata: Sequence[dict[str, Any]] | None = None,
    ) -> np.ndarray:
        return self.components(images, prompts, metadata)["judge"].astype(np.float64)


@SCORERS.register("judge")
def judge_scorer(config: Any = None) -> JudgeScorer:
    """UnifiedReward analog: detector, reader and quality combined per prompt type, 1-5."""
    return JudgeScorer(config)
