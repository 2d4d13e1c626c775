"""Pretraining corpus of the mini world: (image, caption) pairs with web-alt-text-like captions.

Scenes mix the prompt sets' contents (single objects, pairs, groups, relations, text, text with
an object). Each caption is written from the scene in the prompts' own phrasing, then degraded
as alt-text is, at rates set in :class:`WorldConfig`:

- ``caption_drop_color``: colour words left out; ``caption_drop_count``: "three circles" becomes
  "some circles"; ``caption_drop_relation``: "A left of B" becomes "A and B";
  ``caption_drop_text``: the quoted text becomes "some text";
- ``caption_wrong``: one attribute replaced by a wrong one (colour, shape, count, relation or a
  letter of the text);
- ``caption_confuse_text`` / ``caption_confuse_shape``: the caption names the fixed partner of
  the scene's letters (``alphabet[2i] <-> alphabet[2i+1]``) or of its shapes, a systematic
  confusion that CFG cannot undo (it sharpens the conditional, and the partner is part of it);
  ``caption_confuse_text_pairs`` / ``caption_confuse_shape_pairs`` set the rate per pair (above
  0.5: the alt text of that pair mostly names the partner, and CFG sharpens the wrong one);
- ``caption_generic``: the whole caption replaced by a generic one ("a photo", "an image");
- ``caption_adjective``: an aesthetic phrasing ("a lovely photo of ...") with no link to style;
- ``extra_object_rate``: an object the caption does not mention is added to the scene.

So a base model trained on it follows prompts only partly: the compositional and text metrics
have headroom for RL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from opd.worlds.mini.prompts import (
    AESTHETIC_TEMPLATES,
    COUNT_WORDS,
    GENERIC_SUBJECTS,
    TASKS,
    TEXT_TEMPLATES,
    _a,
    all_prompts,
    plural,
)
from opd.worlds.mini.render import render
from opd.worlds.mini.scenes import (
    DEFAULT_CONFIG,
    RELATIONS,
    SceneBatch,
    SceneSpec,
    WorldConfig,
    layout_scenes,
)

GENERIC_CAPTIONS: tuple[str, ...] = (
    "a photo",
    "an image",
    "a picture of shapes",
    "a drawing",
    "a photo of some shapes",
    "an image of a sign",
)
_MIX_KINDS = ("single", "two", "counting", "position", "text", "text_object")
_FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


@dataclass
class Corpus:
    """Corpus scenes, their noisy captions (the training text), the noise-free captions, and each
    item's kind (one of ``single``, ``two``, ``counting``, ``position``, ``text``,
    ``text_object``)."""

    scenes: SceneBatch
    captions: list[str]
    true_captions: list[str]
    kinds: list[str]


def corpus_scenes(n: int, seed: int, config: WorldConfig | None = None) -> Corpus:
    """Draw ``n`` corpus scenes and captions (deterministic in ``seed``)."""
    cfg = config or DEFAULT_CONFIG
    rng = np.random.default_rng([int(seed), 11])
    names, weights = zip(*cfg.corpus_mix, strict=True)
    unknown = set(names) - set(_MIX_KINDS)
    if unknown:
        raise ValueError(f"unknown corpus kinds {sorted(unknown)}; known: {_MIX_KINDS}")
    p = np.asarray(weights, dtype=np.float64)
    kinds_idx = rng.choice(len(names), size=n, p=p / p.sum())
    u = rng.random((n, 24)).tolist()  # Python floats: much faster to use one by one
    names_cache = (cfg.shapes, cfg.color_names)
    specs: list[SceneSpec] = []
    captions: list[str] = []
    true_caps: list[str] = []
    kinds: list[str] = []
    for i in range(n):
        kind = names[int(kinds_idx[i])]
        spec, cap, true = _one(kind, u[i], cfg, names_cache)
        specs.append(spec)
        captions.append(cap)
        true_caps.append(true)
        kinds.append(kind)
    return Corpus(layout_scenes(specs, rng, cfg), captions, true_caps, kinds)


def build_corpus(
    n: int, seed: int, config: WorldConfig | None = None
) -> tuple[np.ndarray, list[str]]:
    """``n`` pretraining pairs: ``(images uint8 (n, H, W, 3), noisy captions)``."""
    cfg = config or DEFAULT_CONFIG
    corpus = corpus_scenes(n, seed, cfg)
    return render(corpus.scenes, cfg), corpus.captions


def _pick(x: float, k: int) -> int:
    return min(int(x * k), k - 1)


def _one(
    kind: str, u: list[float], cfg: WorldConfig, names: tuple[tuple[str, ...], tuple[str, ...]]
) -> tuple[SceneSpec, str, str]:
    """One corpus item from 24 uniforms ``u`` (each slot has a fixed use)."""
    shapes, colors = names
    n_shapes, n_colors = len(shapes), len(colors)
    s1, s2 = _pick(u[0], n_shapes), _pick(u[1], n_shapes)
    if kind in ("two", "position") and s2 == s1 and u[2] > 0.2:  # mostly two different shapes
        s2 = (s1 + 1 + _pick(u[2], n_shapes - 1)) % n_shapes
    c1, c2 = _pick(u[3], n_colors), _pick(u[4], n_colors)
    count = 2 + _pick(u[5], cfg.max_count - 1)
    rel = RELATIONS[_pick(u[6], len(RELATIONS))]
    tlen = 1 + _pick(u[7], cfg.max_text_len)
    text = "".join(cfg.alphabet[_pick(x, len(cfg.alphabet))] for x in u[8 : 8 + tlen])
    template = cfg.templates[_pick(u[11], len(cfg.templates))]
    text_template = TEXT_TEMPLATES[_pick(u[12], len(TEXT_TEMPLATES))]
    drop_color = u[13] < cfg.caption_drop_color
    wrong = u[14] < cfg.caption_wrong
    wrong_u = u[15]
    # one more uniform, derived so that the 24 drawn per item (and every corpus without
    # confusions) stay as they were
    confuse_u = (u[15] * 7919.0 + u[16] * 104729.0) % 1.0
    # by the text's first letter; per pair (alphabet[2i], alphabet[2i+1]) or letter when given
    confuse_text = confuse_u < _confusion_rate(
        cfg.caption_confuse_text_pairs, cfg.alphabet, text[0], cfg.caption_confuse_text
    )
    shape_u = (confuse_u * 31.0) % 1.0

    def confuse_shape(shape: str) -> bool:
        rate = _confusion_rate(
            cfg.caption_confuse_shape_pairs, shapes, shape, cfg.caption_confuse_shape
        )
        return shape_u < rate

    def noisy(true_fn: Any, attrs: dict[str, Any], droppable: dict[str, bool]) -> tuple[str, str]:
        true = true_fn(**attrs)
        shown = dict(attrs)
        if wrong:
            key = sorted(attrs)[_pick(wrong_u, len(attrs))]
            shown[key] = _wrong(key, attrs[key], u[16], cfg, names)
        if confuse_text and shown.get("x"):
            shown["x"] = "".join(partner(cfg.alphabet, ch) for ch in shown["x"])
        for key in ("s", "t"):
            if shown.get(key) and confuse_shape(shown[key]):
                shown[key] = partner(shapes, shown[key])
        for key, drop in droppable.items():
            if drop:
                shown[key] = None
        return true_fn(**shown), true

    objects: tuple[tuple[int, int], ...]
    relation = None
    spec_text = None
    if kind == "single":
        objects = ((s1, c1),)

        def fn(s: str, c: str | None) -> str:
            return f"{template} {_obj(s, c)}"

        cap, true = noisy(fn, {"s": shapes[s1], "c": colors[c1]}, {"c": drop_color})
    elif kind == "two":
        objects = ((s1, c1), (s2, c2))

        def fn(s: str, c: str | None, t: str, d: str | None) -> str:
            return f"{template} {_obj(s, c)} and {_obj(t, d)}"

        attrs = {"s": shapes[s1], "c": colors[c1], "t": shapes[s2], "d": colors[c2]}
        cap, true = noisy(fn, attrs, {"c": drop_color, "d": drop_color})
    elif kind == "counting":
        objects = tuple((s1, c1) for _ in range(count))

        def fn(s: str, c: str | None, k: int | None) -> str:
            number = "some" if k is None else COUNT_WORDS[k]
            return f"{template} {number} {c + ' ' if c else ''}{plural(s)}"

        drops = {"c": drop_color, "k": bool(u[17] < cfg.caption_drop_count)}
        cap, true = noisy(fn, {"s": shapes[s1], "c": colors[c1], "k": count}, drops)
    elif kind == "position":
        objects = ((s2, c2), (s1, c1))  # object 1 <rel> object 0
        relation = (rel, 1, 0)

        def fn(s: str, c: str | None, t: str, d: str | None, r: str | None) -> str:
            return f"{template} {_obj(s, c)} {r or 'and'} {_obj(t, d)}"

        attrs = {"s": shapes[s1], "c": colors[c1], "t": shapes[s2], "d": colors[c2], "r": rel}
        drops = {"c": drop_color, "d": drop_color, "r": bool(u[17] < cfg.caption_drop_relation)}
        cap, true = noisy(fn, attrs, drops)
    else:  # text, text_object
        spec_text = text
        with_obj = kind == "text_object"
        objects = ((s1, c1),) if with_obj else ()

        def fn(x: str | None, s: str | None = None, c: str | None = None) -> str:
            line = text_template.format(x) if x else "a sign with some text"
            return f"{_obj(s, c)} next to {line}" if s else line

        attrs: dict[str, Any] = {"x": text}
        if with_obj:
            attrs |= {"s": shapes[s1], "c": colors[c1]}
        drops = {"x": bool(u[17] < cfg.caption_drop_text)}
        if with_obj:
            drops["c"] = drop_color
        cap, true = noisy(fn, attrs, drops)

    if u[18] < cfg.extra_object_rate and len(objects) <= (0 if spec_text else 3):
        objects = (*objects, (_pick(u[19], n_shapes), _pick(u[20], n_colors)))
    if u[21] < cfg.caption_generic:
        cap = GENERIC_CAPTIONS[_pick(u[22], len(GENERIC_CAPTIONS))]
    elif u[23] < cfg.caption_adjective and not spec_text:
        adj = AESTHETIC_TEMPLATES[_pick((u[23] * 7919.0) % 1.0, len(AESTHETIC_TEMPLATES))]
        cap = adj.format(cap[len(template) + 1 :])
    return SceneSpec(objects=objects, relation=relation, text=spec_text), cap, true


def _confusion_rate(
    rates: Sequence[float], names: Sequence[str], name: str, default: float
) -> float:
    """``name``'s confusion rate: from ``rates`` (one per pair of ``names``, or one per name)
    when given, else ``default``."""
    if not rates:
        return default
    i = list(names).index(name)
    return rates[i if len(rates) == len(names) else i // 2]


def partner(names: Sequence[str], name: str) -> str:
    """The fixed confusion partner of ``name`` among ``names``: index 2i <-> 2i + 1 (the last of
    an odd-length list is its own partner)."""
    i = list(names).index(name)
    j = i ^ 1
    return names[j] if j < len(names) else name


def _obj(shape: str, color: str | None) -> str:
    return _a(f"{color} {shape}" if color else shape)


def _wrong(
    key: str, value: Any, x: float, cfg: WorldConfig, names: tuple[tuple[str, ...], tuple[str, ...]]
) -> Any:
    """A value of the same kind as ``value`` but different."""

    def other(options: tuple[Any, ...]) -> Any:
        rest = [o for o in options if o != value]
        return rest[_pick(x, len(rest))]

    if key in ("s", "t"):
        return other(names[0])
    if key in ("c", "d"):
        return other(names[1])
    if key == "k":
        return other(tuple(range(2, cfg.max_count + 1)))
    if key == "r":
        return _FLIP[value]
    if key == "x":
        i = _pick(x, len(value))
        letter = other(tuple(cfg.alphabet))
        return value[:i] + letter + value[i + 1 :]
    raise KeyError(key)


def vocabulary(config: WorldConfig | None = None) -> list[str]:
    """Every lower-case word used by the prompt sets and the corpus captions, sorted; quoted
    text is not included (a tokenizer should spell it out over ``config.alphabet``)."""
    cfg = config or DEFAULT_CONFIG
    texts: list[str] = (
        list(GENERIC_CAPTIONS) + list(GENERIC_SUBJECTS) + ["a sign with some text next to some"]
    )
    for task in TASKS:
        texts.extend(all_prompts(task, cfg))
    texts.extend(AESTHETIC_TEMPLATES)
    texts.extend(COUNT_WORDS[k] for k in range(2, cfg.max_count + 1))
    texts.extend(cfg.color_names)
    texts.extend(plural(s) for s in cfg.shapes)
    words: set[str] = set()
    for t in texts:
        words.update(re.findall(r"[a-z]+", re.sub(r'"[^"]*"', " ", t.lower())))
    return sorted(words)
