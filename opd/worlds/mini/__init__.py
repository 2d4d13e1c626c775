"""The mini world: a synthetic, deterministic text-to-image world at CPU scale (docs/mini_world.md).

Public API (every function takes an optional :class:`WorldConfig`; default 24 px):

- ``sample_scenes(task, n, seed, split="test", config=None, shuffle=None)
  -> (images uint8 (n, H, W, 3), prompts, metadata)``: clean renders of ``task``'s prompts
  (``task`` in ``TASKS``), balanced over the six GenEval tags for ``composition``.
- ``generate(task, n, seed, split="test", config=None, shuffle=None)
  -> (SceneBatch, prompts, metadata)``: the same scenes before rendering (full ground truth).
- ``prompt_set(task, split, config) -> (prompts, metadata)``: a whole prompt set (splits
  ``train``, ``validation``, ``test``); ``all_prompts(task, config)``: every split's prompts.
- ``render(scenes, config) -> images``: scenes as a :class:`SceneBatch` or a list of
  :class:`Scene` records (objects with class, colour, centre, size; text; style).
- ``build_corpus(n, seed, config) -> (images, captions)``: pretraining pairs with alt-text-like
  noisy captions; ``corpus_scenes`` gives the scenes and the true captions too.
- ``hidden_utility(name, scenes, prompts)`` (``"pick"``, ``"hps"``, ``"ir"``) and
  ``preference_pairs(n, seed, utility, config)``: synthetic human preferences.
- ``vocabulary(config)``: every word that prompts and captions use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from opd.worlds.mini.corpus import build_corpus, corpus_scenes, vocabulary
from opd.worlds.mini.font import Font, font_for_resolution, get_font
from opd.worlds.mini.prompts import (
    COMPOSITION_TAGS,
    SPLITS,
    TASKS,
    all_prompts,
    choose_prompts,
    describe,
    parse_prompt,
    prompt_set,
    quoted_text,
    spec_for,
)
from opd.worlds.mini.render import render
from opd.worlds.mini.scenes import (
    BACKGROUNDS,
    DEFAULT_CONFIG,
    POSITION_THRESHOLD,
    RELATIONS,
    WORLD_VERSION,
    Scene,
    SceneBatch,
    SceneObject,
    SceneSpec,
    Style,
    TextLine,
    WorldConfig,
    layout_scenes,
    relations_between,
)
from opd.worlds.mini.utilities import (
    UTILITIES,
    PreferencePairs,
    hidden_utility,
    preference_pairs,
    prompt_agreement,
)


def generate(
    task: str,
    n: int,
    seed: int,
    split: str = "test",
    config: WorldConfig | None = None,
    shuffle: bool | None = None,
) -> tuple[SceneBatch, list[str], list[dict[str, Any]]]:
    """Scenes that satisfy ``n`` prompts of ``task``'s ``split`` exactly, with random style.

    Prompts are cycled in the set's fixed order (``shuffle`` False, the default for ``test``) or
    drawn at random (default for ``train``); composition prompts are balanced over the tags.
    """
    cfg = config or DEFAULT_CONFIG
    rng = np.random.default_rng([int(seed), 7])
    if shuffle is None:
        shuffle = split == "train"
    prompts, metas = choose_prompts(task, n, split, cfg, rng if shuffle else None)
    specs = [spec_for(m, rng, cfg) for m in metas]
    return layout_scenes(specs, rng, cfg), prompts, metas


def sample_scenes(
    task: str,
    n: int,
    seed: int,
    split: str = "test",
    config: WorldConfig | None = None,
    shuffle: bool | None = None,
) -> tuple[np.ndarray, list[str], list[dict[str, Any]]]:
    """Clean renders of ``n`` prompts of ``task``: ``(images uint8 (n, H, W, 3), prompts,
    metadata)``. Deterministic in ``seed``; see :func:`generate`."""
    scenes, prompts, metas = generate(task, n, seed, split, config, shuffle)
    return render(scenes, config or DEFAULT_CONFIG), prompts, metas


__all__ = [
    "BACKGROUNDS",
    "COMPOSITION_TAGS",
    "DEFAULT_CONFIG",
    "POSITION_THRESHOLD",
    "RELATIONS",
    "SPLITS",
    "TASKS",
    "UTILITIES",
    "WORLD_VERSION",
    "Font",
    "PreferencePairs",
    "Scene",
    "SceneBatch",
    "SceneObject",
    "SceneSpec",
    "Style",
    "TextLine",
    "WorldConfig",
    "all_prompts",
    "build_corpus",
    "corpus_scenes",
    "describe",
    "font_for_resolution",
    "generate",
    "get_font",
    "hidden_utility",
    "layout_scenes",
    "parse_prompt",
    "preference_pairs",
    "prompt_agreement",
    "prompt_set",
    "quoted_text",
    "relations_between",
    "render",
    "sample_scenes",
    "vocabulary",
]
