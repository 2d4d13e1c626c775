"""Hidden utilities: synthetic human preferences over scenes, and preference pairs drawn from them.

A utility is a function of the scene's ground truth (style, layout, content) and of how well the
scene agrees with the prompt; it plays the part of the humans behind Pick-a-Pic (``"pick"``),
HPD (``"hps"``) and ImageReward's raters (``"ir"``, for a held-out metric). The learned
preference scorers are trained on images of pairs labelled by these utilities, the way
PickScore / HPS were trained on human choices, and never see the utilities themselves.

Features, each in [0, 1] (``scene_features``): ``gradient``, ``texture``, ``flat`` (background
kind), ``centred`` (1 - mean distance of the objects from the image centre / half diagonal),
``size`` (mean object half-extent / (0.25 * resolution), clipped), ``contrast``, ``softness``
(both rescaled from their config ranges), ``bright`` (background luminance, rescaled),
``clutter`` ((number of items - 1) / 4, clipped), ``colorful`` (distinct colours / 3, clipped),
and ``agree`` (:func:`prompt_agreement`).

Weights (see ``_WEIGHTS``):

- pick = 1.0 agree + 0.6 gradient - 0.3 texture + 0.5 centred + 0.6 size + 0.5 contrast
  + 0.2 colorful: likes gradients, big centred high-contrast objects.
- hps = 1.2 agree + 0.6 softness + 0.3 flat - 0.5 clutter + 0.5 contrast + 0.4 bright
  + 0.3 size: likes soft edges, plain bright backgrounds, few items.
- ir = 2.0 agree + 0.4 contrast + 0.3 size + 0.2 centred - 0.2 texture: mostly alignment.

pick and hps share contrast, size and agreement and disagree on backgrounds and clutter, so
they correlate moderately (as PickScore and HPS do).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from opd.worlds.mini.font import get_font
from opd.worlds.mini.prompts import choose_prompts, parse_prompt, spec_for
from opd.worlds.mini.render import render
from opd.worlds.mini.scenes import (
    DEFAULT_CONFIG,
    RELATIONS,
    Scene,
    SceneBatch,
    WorldConfig,
    layout_scenes,
    relations_between,
)

_WEIGHTS: dict[str, dict[str, float]] = {
    "pick": {
        "agree": 1.0,
        "gradient": 0.6,
        "texture": -0.3,
        "centred": 0.5,
        "size": 0.6,
        "contrast": 0.6,
        "softness": 0.15,
        "colorful": 0.2,
    },
    "hps": {
        "agree": 1.2,
        "softness": 0.6,
        "flat": 0.2,
        "texture": -0.2,
        "clutter": -0.4,
        "contrast": 0.6,
        "bright": 0.4,
        "size": 0.4,
        "centred": 0.2,
    },
    "ir": {"agree": 2.0, "contrast": 0.4, "size": 0.3, "centred": 0.2, "texture": -0.2},
}
UTILITIES: tuple[str, ...] = tuple(_WEIGHTS)


def _as_batch(scenes: SceneBatch | Sequence[Scene], config: WorldConfig | None) -> SceneBatch:
    if isinstance(scenes, SceneBatch):
        return scenes
    return SceneBatch.from_scenes(list(scenes), config or DEFAULT_CONFIG)


def scene_features(
    scenes: SceneBatch | Sequence[Scene], config: WorldConfig | None = None
) -> dict[str, np.ndarray]:
    """Style and layout features of each scene, each (N,) float64 in [0, 1] (see module doc)."""
    b = _as_batch(scenes, config)
    cfg = config or b.config
    res = float(b.resolution)
    valid = b.shape >= 0
    n_obj = valid.sum(1)
    has_text = (b.text >= 0).any(1)
    kind = b.bg_kind.astype(np.int64)
    dist = np.hypot(b.x - res / 2, b.y - res / 2) / (res / np.sqrt(2))
    # Text-only scenes: the text line's centre stands in for the objects.
    font = get_font(cfg.font_name)
    tw = np.where(has_text, (b.text >= 0).sum(1) * font.pitch - font.gap, 0)
    th = font.height
    tdist = np.hypot(b.text_x + tw / 2 - res / 2, b.text_y + th / 2 - res / 2) / (res / np.sqrt(2))
    mean_dist = np.where(n_obj > 0, (dist * valid).sum(1) / np.maximum(n_obj, 1), tdist)
    mean_size = np.where(n_obj > 0, (b.size * valid).sum(1) / np.maximum(n_obj, 1), 0.0)
    lum = ((b.bg_color + b.bg_color2) / 2).mean(1)
    n_colors = np.array([len({int(c) for c in row if c >= 0}) for row in b.color])

    def rescale(v: np.ndarray, lo_hi: tuple[float, float]) -> np.ndarray:
        lo, hi = lo_hi
        return np.clip((v - lo) / max(hi - lo, 1e-9), 0, 1)

    return {
        "flat": (kind == 0).astype(np.float64),
        "gradient": (kind == 1).astype(np.float64),
        "texture": (kind == 2).astype(np.float64),
        "centred": np.clip(1 - mean_dist, 0, 1),
        "size": np.clip(mean_size / (0.25 * res), 0, 1),
        "contrast": rescale(b.contrast.astype(np.float64), cfg.contrast),
        "softness": rescale(b.softness.astype(np.float64), cfg.softness),
        "bright": rescale(lum.astype(np.float64), cfg.bg_luminance),
        "clutter": np.clip((n_obj + has_text - 1) / 4, 0, 1),
        "colorful": np.clip(n_colors / 3, 0, 1),
    }


def prompt_agreement(
    scenes: SceneBatch | Sequence[Scene],
    prompts: Sequence[str],
    config: WorldConfig | None = None,
    metadata: Sequence[dict[str, Any]] | None = None,
) -> np.ndarray:
    """How well each scene matches its prompt, in [0, 1]: the mean over the prompt's demands.

    Each object clause scores min(matching objects, count) / count (class and, if named,
    colour), minus 0.5 if more objects of that class are present than asked; a relation scores
    1 if GenEval's rule holds on the true boxes; a text scores the fraction of positions with the
    right glyph (over the longer of the two strings). A prompt that demands nothing scores 1.
    """
    b = _as_batch(scenes, config)
    cfg = config or b.config
    metas = list(metadata) if metadata is not None else [parse_prompt(p, cfg) for p in prompts]
    texts = b.text_strings()
    out = np.ones(len(b))
    for i, meta in enumerate(metas):
        terms: list[float] = []
        valid = b.shape[i] >= 0
        shp = b.shape[i][valid]
        col = b.color[i][valid]
        clauses = meta.get("include") or meta.get("objects") or []
        for cl in clauses:
            s = cfg.shapes.index(cl["class"])
            same = shp == s
            match = same & (col == cfg.color_names.index(cl["color"])) if "color" in cl else same
            n = int(cl.get("count", 1))
            score = min(int(match.sum()), n) / n
            if int(same.sum()) > n:
                score -= 0.5
            terms.append(score)
        for j, cl in enumerate(meta.get("include") or []):
            if "position" in cl:
                rel, target = cl["position"]
                a = _first_index(meta["include"], j, valid, b.shape[i], cfg)
                t = _first_index(meta["include"], int(target), valid, b.shape[i], cfg)
                ok = False
                if a is not None and t is not None:
                    xs, ys, rs = b.x[i], b.y[i], b.size[i]
                    box_a = np.array([xs[a] - rs[a], ys[a] - rs[a], xs[a] + rs[a], ys[a] + rs[a]])
                    box_t = np.array([xs[t] - rs[t], ys[t] - rs[t], xs[t] + rs[t], ys[t] + rs[t]])
                    ok = bool(relations_between(box_a, box_t)[RELATIONS.index(rel)])
                terms.append(float(ok))
        if meta.get("task") == "text" and "text" in meta:
            want, got = meta["text"], texts[i]
            same_pos = sum(x == y for x, y in zip(want, got, strict=False))
            terms.append(same_pos / max(len(want), len(got), 1))
        if terms:
            out[i] = float(np.mean(terms))
    return np.clip(out, 0, 1)


def _first_index(
    include: list[dict[str, Any]], j: int, valid: np.ndarray, shapes: np.ndarray, cfg: WorldConfig
) -> int | None:
    """Slot of the first object of clause ``j``'s class."""
    s = cfg.shapes.index(include[j]["class"])
    idx = np.nonzero(valid & (shapes == s))[0]
    return int(idx[0]) if idx.size else None


def hidden_utility(
    name: str,
    scenes: SceneBatch | Sequence[Scene],
    prompts: Sequence[str],
    config: WorldConfig | None = None,
    metadata: Sequence[dict[str, Any]] | None = None,
) -> np.ndarray:
    """Utility ``name`` (one of :data:`UTILITIES`) of each (scene, prompt): (N,) float64.

    Roughly in [-0.5, 4]; only differences matter (Bradley-Terry)."""
    if name not in _WEIGHTS:
        raise KeyError(f"unknown utility {name!r}; known: {', '.join(UTILITIES)}")
    feats = scene_features(scenes, config)
    feats["agree"] = prompt_agreement(scenes, prompts, config, metadata)
    return sum(w * feats[k] for k, w in _WEIGHTS[name].items())  # type: ignore[return-value]


@dataclass
class PreferencePairs:
    """Pairs of images for one prompt each. ``label[i] == 1`` means image A was preferred.

    ``label`` is what a (noisy, at ``temperature`` > 0) rater chose; ``label_true`` is the
    noise-free order ``utility_a > utility_b`` (use it for held-out accuracy)."""

    images_a: np.ndarray  # (n, H, W, 3) uint8
    images_b: np.ndarray
    prompts: list[str]
    metadata: list[dict[str, Any]]
    utility_a: np.ndarray  # (n,) float64
    utility_b: np.ndarray
    label: np.ndarray  # (n,) int8
    label_true: np.ndarray  # (n,) int8
    scenes_a: SceneBatch
    scenes_b: SceneBatch

    def __len__(self) -> int:
        return len(self.prompts)


def preference_pairs(
    n: int,
    seed: int,
    utility: str = "pick",
    config: WorldConfig | None = None,
    *,
    split: str = "train",
    tasks: Sequence[str] = ("aesthetics", "composition", "text"),
    task_weights: Sequence[float] = (0.6, 0.25, 0.15),
    off_prompt: float = 0.3,
    temperature: float = 0.0,
    min_margin: float = 0.05,
) -> PreferencePairs:
    """``n`` pairs (A, B) of clean renders for the same prompt, labelled by ``utility``.

    Prompts come from ``split`` of the ``tasks`` sets (mixed by ``task_weights``). Each image of a
    pair is, independently, a scene for its prompt (probability 1 - ``off_prompt``) or a scene for
    another prompt of the same set; layouts and styles are independent draws. The label is
    Bradley-Terry: P(A preferred) = sigmoid((u_a - u_b) / temperature), or the larger utility
    when ``temperature`` is 0. Pairs with |u_a - u_b| < ``min_margin`` (near ties) are redrawn.
    Deterministic in ``seed``.
    """
    cfg = config or DEFAULT_CONFIG
    rng = np.random.default_rng([int(seed), 13])
    w = np.asarray(task_weights, dtype=np.float64)
    kept: list[
        tuple[SceneBatch, SceneBatch, list[str], list[dict[str, Any]], np.ndarray, np.ndarray]
    ] = []
    total = 0
    while total < n:
        m = max(16, int((n - total) * 1.3))
        task_of = rng.choice(len(tasks), size=m, p=w / w.sum())
        prompts: list[str] = [""] * m
        metas: list[dict[str, Any]] = [{}] * m
        specs_a, specs_b = [], []
        for ti, task in enumerate(tasks):
            idx = np.nonzero(task_of == ti)[0]
            if idx.size == 0:
                continue
            p, md = choose_prompts(task, int(idx.size), split, cfg, rng)
            _, alt_md = choose_prompts(task, int(idx.size) * 2, split, cfg, rng)
            for j, i in enumerate(idx):
                prompts[i], metas[i] = p[j], md[j]
            for j, i in enumerate(idx):
                ma = alt_md[2 * j] if rng.random() < off_prompt else md[j]
                mb = alt_md[2 * j + 1] if rng.random() < off_prompt else md[j]
                specs_a.append((int(i), spec_for(ma, rng, cfg)))
                specs_b.append((int(i), spec_for(mb, rng, cfg)))
        specs_a.sort(key=lambda t: t[0])
        specs_b.sort(key=lambda t: t[0])
        sa = layout_scenes([s for _, s in specs_a], rng, cfg)
        sb = layout_scenes([s for _, s in specs_b], rng, cfg)
        ua = hidden_utility(utility, sa, prompts, cfg, metas)
        ub = hidden_utility(utility, sb, prompts, cfg, metas)
        keep = np.nonzero(np.abs(ua - ub) >= min_margin)[0][: n - total]
        kept.append(
            (
                sa.subset(keep),
                sb.subset(keep),
                [prompts[i] for i in keep],
                [metas[i] for i in keep],
                ua[keep],
                ub[keep],
            )
        )
        total += keep.size
    scenes_a = SceneBatch.concat([k[0] for k in kept])
    scenes_b = SceneBatch.concat([k[1] for k in kept])
    prompts_all = [p for k in kept for p in k[2]]
    metas_all = [m for k in kept for m in k[3]]
    ua = np.concatenate([k[4] for k in kept])
    ub = np.concatenate([k[5] for k in kept])
    label_true = (ua > ub).astype(np.int8)
    if temperature > 0:
        p_a = 1 / (1 + np.exp(-(ua - ub) / temperature))
        label = (rng.random(ua.shape) < p_a).astype(np.int8)
    else:
        label = label_true.copy()
    return PreferencePairs(
        images_a=render(scenes_a, cfg),
        images_b=render(scenes_b, cfg),
        prompts=prompts_all,
        metadata=metas_all,
        utility_a=ua,
        utility_b=ub,
        label=label,
        label_true=label_true,
        scenes_a=scenes_a,
        scenes_b=scenes_b,
    )
