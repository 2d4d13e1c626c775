"""The three prompt sets of the mini world (composition, text, aesthetics) and their splits.

- ``composition`` mirrors GenEval: six tags (``single_object``, ``two_object``, ``counting``,
  ``colors``, ``position``, ``color_attr``), GenEval phrasing ("a photo of a red circle and a
  blue square", "a photo of a circle left of a square", "a photo of three triangles") and
  GenEval metadata: ``{"task", "tag", "prompt", "include": [{"class", "count", "color"?,
  "position"?: [relation, index of the include clause it refers to]}], "exclude": [{"class",
  "count"}]}``. Deviation, stated: GenEval forbids extra objects only in ``counting``; here every
  include clause of ``count`` n has an exclude clause ``{"class", "count": n + 1}`` (one circle
  asked, two drawn: wrong), so counts are exact in every tag.
- ``text``: a short string in double quotes ('a sign that says "MAT"'), metadata ``{"task":
  "text", "tag": "len<k>", "text", "prompt"}``.
- ``aesthetics``: free prompts without precise constraints ("a lovely photo of a red circle",
  "a beautiful painting of some shapes"), metadata ``{"task": "aesthetics", "tag", "prompt",
  "objects": [{"class", "count", "color"?}]}`` (empty for generic subjects).

A prompt string is a phrasing (template) applied to a content. Splits are deterministic (a
salted blake2b hash of the content): each test content appears in the test set in exactly one
phrasing; ``holdout="phrasing"`` keeps the content's other phrasings in train (few contents: the
GenEval situation, same classes in train and test), ``holdout="content"`` removes the content from
train entirely (text of length 2 and 3: unseen strings, as OCR test sets). Train and test never
share a prompt string.

The ``validation`` split (for tuning world, reward and budget choices; Table 1 stays on test) is
made the same way from what would otherwise be train, so test never changes with it: it takes
the contents that follow the test ones in hash order, one phrasing each; under ``"content"``
holdout those contents leave train entirely (validation strings are unseen and disjoint from
test's), under ``"phrasing"`` their other phrasings stay in train and, once the fresh contents
run out, test contents are taken again in a phrasing other than their test one (the few-content
tags, like GenEval's). Its sizes (``WorldConfig.validation_per_tag``,
``text_validation_per_length``, ``aesthetics_validation_size``) default to 0: no validation
split, train exactly as before.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

from opd.worlds.mini.scenes import DEFAULT_CONFIG, RELATIONS, SceneSpec, WorldConfig

TASKS: tuple[str, ...] = ("composition", "text", "aesthetics")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
COMPOSITION_TAGS: tuple[str, ...] = (
    "single_object",
    "two_object",
    "counting",
    "colors",
    "position",
    "color_attr",
)
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
TEXT_TEMPLATES: tuple[str, ...] = (
    'a sign that says "{}"',
    'a poster with the word "{}"',
    'a label reading "{}"',
    'the text "{}" on a wall',
)
AESTHETIC_TEMPLATES: tuple[str, ...] = (
    "a nice picture of {}",
    "a beautiful painting of {}",
    "an elegant drawing of {}",
    "a lovely photo of {}",
    "a stunning image of {}",
    "a simple picture of {}",
)
GENERIC_SUBJECTS: tuple[str, ...] = ("some shapes", "a few shapes", "colourful shapes", "a scene")
_SALT = "opd-mini-split"


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _a(word: str) -> str:
    return f"{article(word)} {word}"


def stable_hash(key: str) -> int:
    """A platform-independent 64-bit hash (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(f"{_SALT}:{key}".encode(), digest_size=8).digest(), "big")


# ---- contents ---------------------------------------------------------------------------
def _composition_contents(cfg: WorldConfig) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """For each tag: (phrase without template, metadata without prompt) for every content."""
    shapes, colors = cfg.shapes, cfg.color_names
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {t: [] for t in COMPOSITION_TAGS}

    def clause(s: str, n: int = 1, **kw: Any) -> dict[str, Any]:
        return {"class": s, "count": n, **kw}

    def excl(*pairs: tuple[str, int]) -> list[dict[str, Any]]:
        return [{"class": s, "count": n + 1} for s, n in pairs]

    for s in shapes:
        out["single_object"].append((_a(s), {"include": [clause(s)], "exclude": excl((s, 1))}))
    for a, b in itertools.permutations(shapes, 2):
        out["two_object"].append(
            (
                f"{_a(a)} and {_a(b)}",
                {"include": [clause(a), clause(b)], "exclude": excl((a, 1), (b, 1))},
            )
        )
    for s in shapes:
        for n in cfg.counting_counts:
            out["counting"].append(
                (
                    f"{COUNT_WORDS[n]} {plural(s)}",
                    {"include": [clause(s, n)], "exclude": excl((s, n))},
                )
            )
    for s in shapes:
        for c in colors:
            out["colors"].append(
                (f"{_a(c)} {s}", {"include": [clause(s, color=c)], "exclude": excl((s, 1))})
            )
    for a, b in itertools.permutations(shapes, 2):
        for rel in RELATIONS:
            # GenEval: "a photo of A <rel> B"; clause 0 is B, clause 1 is A positioned vs clause 0.
            meta = {
                "include": [clause(b), clause(a, position=[rel, 0])],
                "exclude": excl((b, 1), (a, 1)),
            }
            out["position"].append((f"{_a(a)} {rel} {_a(b)}", meta))
    for a, b in itertools.permutations(shapes, 2):
        for ca, cb in itertools.permutations(colors, 2):
            meta = {
                "include": [clause(a, color=ca), clause(b, color=cb)],
                "exclude": excl((a, 1), (b, 1)),
            }
            out["color_attr"].append((f"{_a(ca)} {a} and {_a(cb)} {b}", meta))
    return out


def _aesthetic_contents(cfg: WorldConfig) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for s in cfg.shapes:
        out.append((_a(s), {"tag": "object", "objects": [{"class": s, "count": 1}]}))
        for c in cfg.color_names:
            out.append(
                (
                    f"{_a(c)} {s}",
                    {"tag": "colored_object", "objects": [{"class": s, "count": 1, "color": c}]},
                )
            )
        for n in (2, 3):
            out.append(
                (
                    f"{COUNT_WORDS[n]} {plural(s)}",
                    {"tag": "group", "objects": [{"class": s, "count": n}]},
                )
            )
    for g in GENERIC_SUBJECTS:
        out.append((g, {"tag": "generic", "objects": []}))
    return out


def _split(
    contents: Sequence[tuple[str, dict[str, Any]]],
    render: Sequence[str],
    test_count: int,
    holdout: str,
    validation_count: int = 0,
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Split contents x phrasings (``render[j].format(phrase)``) into train, validation and test
    prompts (the module docstring's rules; test depends on ``test_count`` alone)."""
    keyed = sorted(contents, key=lambda c: (stable_hash(c[0]), c[0]))
    n_test = min(test_count, len(keyed))
    test_keys = {c[0] for c in keyed[:n_test]}
    # Validation: the contents after the test ones, then (phrasing holdout, at least two
    # phrasings) the test contents again in another phrasing.
    candidates = [c[0] for c in keyed[n_test:]]
    if holdout == "phrasing" and len(render) > 1:
        candidates += [c[0] for c in keyed[:n_test]]
    val_phrasing: dict[str, int] = {}
    for phrase in candidates[: max(validation_count, 0)]:
        j = stable_hash(phrase) % len(render)
        if phrase in test_keys:  # any phrasing but the test one
            j = (j + 1 + stable_hash(f"validation:{phrase}") % (len(render) - 1)) % len(render)
        val_phrasing[phrase] = j
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {s: [] for s in SPLITS}
    for phrase, meta in keyed:
        h = stable_hash(phrase)
        held_out = phrase in test_keys or phrase in val_phrasing
        for j, tmpl in enumerate(render):
            prompt = tmpl.format(phrase)
            item = (prompt, {**meta, "prompt": prompt})
            if phrase in test_keys and j == h % len(render):
                out["test"].append(item)
            elif val_phrasing.get(phrase) == j:
                out["validation"].append(item)
            elif not held_out or holdout == "phrasing":
                out["train"].append(item)
    return out


def _per_length(sizes: Sequence[int], length: int) -> int:
    """The size for text of ``length`` (the last entry serves longer texts)."""
    return int(sizes[min(length, len(sizes)) - 1])


@cache
def _all_sets(cfg: WorldConfig) -> dict[str, dict[str, list[tuple[str, dict[str, Any]]]]]:
    comp_render = [f"{t} {{}}" for t in cfg.templates]
    sets: dict[str, dict[str, list[tuple[str, dict[str, Any]]]]] = {}
    comp: dict[str, list[tuple[str, dict[str, Any]]]] = {s: [] for s in SPLITS}
    for tag, contents in _composition_contents(cfg).items():
        meta = [(p, {"task": "composition", "tag": tag, **m}) for p, m in contents]
        part = _split(meta, comp_render, cfg.test_per_tag, "phrasing", cfg.validation_per_tag)
        for k in comp:
            comp[k].extend(part[k])
    sets["composition"] = comp

    text: dict[str, list[tuple[str, dict[str, Any]]]] = {s: [] for s in SPLITS}
    for length in range(1, cfg.max_text_len + 1):
        strings = ["".join(p) for p in itertools.product(cfg.alphabet, repeat=length)]
        contents = [(s, {"task": "text", "tag": f"len{length}", "text": s}) for s in strings]
        n_test = _per_length(cfg.text_test_per_length, length)
        n_val = _per_length(cfg.text_validation_per_length, length)
        holdout = "phrasing" if n_test >= len(strings) else "content"
        part = _split(contents, TEXT_TEMPLATES, n_test, holdout, n_val)
        for k in text:
            text[k].extend(part[k])
    sets["text"] = text

    aes = [(p, {"task": "aesthetics", **m}) for p, m in _aesthetic_contents(cfg)]
    sets["aesthetics"] = _split(
        aes,
        AESTHETIC_TEMPLATES,
        cfg.aesthetics_test_size,
        "phrasing",
        cfg.aesthetics_validation_size,
    )
    for name, task in sets.items():
        if not task["train"]:
            raise ValueError(f"the {name} prompt set has no train prompts left (validation sizes)")
        for items in task.values():
            for _, m in items:
                m.setdefault("tag", "")
    return sets


def prompt_set(
    task: str, split: str = "test", config: WorldConfig | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """All prompts of ``task``'s ``split`` and their metadata (fresh copies, fixed order:
    grouped by tag, then by content hash)."""
    if task not in TASKS:
        raise KeyError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    items = _all_sets(config or DEFAULT_CONFIG)[task][split]
    if not items and split == "validation":  # its sizes default to 0
        raise ValueError(
            f"the world has no {split} prompts for {task!r}: set world.params "
            "validation_per_tag, text_validation_per_length, aesthetics_validation_size"
        )
    return [p for p, _ in items], [_copy(m) for _, m in items]


def all_prompts(task: str, config: WorldConfig | None = None) -> list[str]:
    """Every prompt of ``task`` over all splits (empty ones included): what a vocabulary must
    cover."""
    sets = _all_sets(config or DEFAULT_CONFIG)[task]
    return [p for split in SPLITS for p, _ in sets[split]]


def _copy(meta: dict[str, Any]) -> dict[str, Any]:
    out = dict(meta)
    for key in ("include", "exclude", "objects"):
        if key in out:
            out[key] = [
                dict(c, **({"position": list(c["position"])} if "position" in c else {}))
                for c in out[key]
            ]
    return out


@cache
def _lookup(cfg: WorldConfig) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for task in _all_sets(cfg).values():
        for items in task.values():
            for p, m in items:
                table[p] = m
    return table


_QUOTED = re.compile(r'"([^"]*)"')


def quoted_text(prompt: str) -> str | None:
    """The first double-quoted string of ``prompt`` (the text target), or None."""
    m = _QUOTED.search(prompt)
    return m.group(1) if m else None


def parse_prompt(prompt: str, config: WorldConfig | None = None) -> dict[str, Any]:
    """Metadata of a prompt of any set (exact lookup), or of any prompt with a quoted text
    (``{"task": "text", ...}``); otherwise the loose description of :func:`describe`."""
    cfg = config or DEFAULT_CONFIG
    meta = _lookup(cfg).get(prompt)
    if meta is not None:
        return _copy(meta)
    text = quoted_text(prompt)
    if text is not None:
        return {"task": "text", "tag": f"len{len(text)}", "text": text, "prompt": prompt}
    return {
        "task": "unknown",
        "tag": "",
        "prompt": prompt,
        "objects": describe(prompt, cfg)["objects"],
    }


def describe(prompt: str, config: WorldConfig | None = None) -> dict[str, Any]:
    """Loose reading of any prompt or caption: the objects it names (``{"class", "count",
    "color"?}``, count 1 unless a number word precedes), relations named, and quoted text."""
    cfg = config or DEFAULT_CONFIG
    words = re.findall(r"[a-z]+", _QUOTED.sub(" ", prompt.lower()))
    numbers = {w: n for n, w in COUNT_WORDS.items()}
    names = {s: s for s in cfg.shapes} | {plural(s): s for s in cfg.shapes}
    objects: list[dict[str, Any]] = []
    count, color = 1, None
    for w in words:
        if w in numbers:
            count = numbers[w]
        elif w in cfg.color_names:
            color = w
        elif w in names:
            obj: dict[str, Any] = {"class": names[w], "count": count}
            if color:
                obj["color"] = color
            objects.append(obj)
            count, color = 1, None
    rels = [r for r in RELATIONS if f" {r} " in f" {prompt} "]
    return {"objects": objects, "relations": rels, "text": quoted_text(prompt)}


# ---- scene requests ---------------------------------------------------------------------
def spec_for(meta: dict[str, Any], rng: np.random.Generator, config: WorldConfig) -> SceneSpec:
    """A scene request that satisfies ``meta`` exactly (unnamed colours drawn from ``rng``)."""
    cfg = config
    n_col = len(cfg.colors)
    task = meta.get("task")
    if task == "text":
        return SceneSpec(text=meta["text"])
    if "include" in meta:
        objs: list[tuple[int, int]] = []
        first: list[int] = []
        relation = None
        for clause in meta["include"]:
            first.append(len(objs))
            s = cfg.shapes.index(clause["class"])
            for _ in range(int(clause["count"])):
                c = (
                    cfg.color_names.index(clause["color"])
                    if "color" in clause
                    else int(rng.integers(n_col))
                )
                objs.append((s, c))
            if "position" in clause:
                rel, target = clause["position"]
                relation = (rel, first[-1], first[int(target)])
        return SceneSpec(objects=tuple(objs), relation=relation)
    objects = meta.get("objects") or []
    if not objects:  # generic subject: 1-3 random objects
        k = int(rng.integers(1, 4))
        return SceneSpec(
            objects=tuple(
                (int(rng.integers(len(cfg.shapes))), int(rng.integers(n_col))) for _ in range(k)
            )
        )
    objs = []
    for o in objects:
        s = cfg.shapes.index(o["class"])
        for _ in range(int(o.get("count", 1))):
            c = cfg.color_names.index(o["color"]) if "color" in o else int(rng.integers(n_col))
            objs.append((s, c))
    return SceneSpec(objects=tuple(objs))


def choose_prompts(
    task: str, n: int, split: str, config: WorldConfig, rng: np.random.Generator | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """``n`` prompts of a set, balanced over tags for composition (item i has tag i mod 6).

    Without ``rng``: each tag's prompts are cycled in the set's fixed order (evaluation); with
    ``rng``: drawn at random, still balanced over tags (training)."""
    prompts, metas = prompt_set(task, split, config)
    groups: dict[str, list[int]] = {}
    if task == "composition":
        for tag in COMPOSITION_TAGS:
            groups[tag] = [i for i, m in enumerate(metas) if m["tag"] == tag]
    else:
        groups[""] = list(range(len(prompts)))
    keys = list(groups)
    chosen: list[int] = []
    for i in range(n):
        g = groups[keys[i % len(keys)]]
        j = int(rng.integers(len(g))) if rng is not None else (i // len(keys)) % len(g)
        chosen.append(g[j])
    return [prompts[i] for i in chosen], [_copy(metas[i]) for i in chosen]
