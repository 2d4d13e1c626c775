"""The mini world's validation split: disjoint from train and test, sized by its WorldConfig
knobs, and leaving the test set (and, with its sizes at 0, train) exactly as before."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pytest

import opd.worlds.mini as W
from opd.worlds.mini import COMPOSITION_TAGS, WorldConfig
from opd.worlds.mini.prompts import AESTHETIC_TEMPLATES, TEXT_TEMPLATES, stable_hash

VAL = WorldConfig(
    validation_per_tag=64, text_validation_per_length=(8, 16, 64), aesthetics_validation_size=64
)
# sha256 of json.dumps([prompts, metadata], sort_keys=True) of each set, first 16 hex digits,
# computed with the code before the validation split existed (commit 27e031e).
BEFORE = {
    ("composition", "train"): "2530ac9c220d26e7",
    ("composition", "test"): "71117b446e100fd8",
    ("text", "train"): "165ed022b6f089bb",
    ("text", "test"): "6f635582a871326d",
    ("aesthetics", "train"): "694ec2344fa5dcc0",
    ("aesthetics", "test"): "fef973de7f8ca8e0",
}


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("task", W.TASKS)
def test_test_set_is_the_one_before_the_split_existed(task):
    for cfg in (WorldConfig(), VAL, WorldConfig(resolution=16, validation_per_tag=3)):
        assert _digest(list(W.prompt_set(task, "test", cfg))) == BEFORE[(task, "test")]
    # Without validation sizes (the default) train is unchanged too.
    assert _digest(list(W.prompt_set(task, "train", WorldConfig()))) == BEFORE[(task, "train")]
    assert _digest(list(W.prompt_set(task, "train", VAL))) != BEFORE[(task, "train")]


@pytest.mark.parametrize("task", W.TASKS)
def test_three_splits_are_disjoint_and_cover_only_old_prompts(task):
    sets = {s: W.prompt_set(task, s, VAL) for s in W.SPLITS}
    prompts = {s: set(p) for s, (p, _) in sets.items()}
    assert all(len(prompts[s]) == len(sets[s][0]) > 0 for s in W.SPLITS)  # no repeats
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]
    # Validation comes out of what was train: the union holds no prompt the old sets lacked.
    old = set(W.prompt_set(task, "train")[0]) | set(W.prompt_set(task, "test")[0])
    assert prompts["train"] | prompts["validation"] | prompts["test"] <= old
    for p, m in zip(*sets["validation"], strict=True):
        assert m["task"] == task and m["prompt"] == p and W.parse_prompt(p, VAL) == m


def test_text_validation_holds_out_whole_strings_of_length_two_and_more():
    texts = {s: [m["text"] for m in W.prompt_set("text", s, VAL)[1]] for s in W.SPLITS}
    long = {s: {t for t in v if len(t) >= 2} for s, v in texts.items()}
    assert long["validation"] and not long["validation"] & long["test"]
    assert not long["validation"] & long["train"]
    # One phrasing per held-out string, as the test set has.
    assert len(long["validation"]) == sum(len(t) >= 2 for t in texts["validation"])
    # Length 1 has 8 strings, all in test: validation reuses them in another phrasing.
    short = [(p, m["text"]) for p, m in zip(*W.prompt_set("text", "validation", VAL), strict=True)]
    short = [(p, t) for p, t in short if len(t) == 1]
    assert {t for _, t in short} == set(VAL.alphabet)
    for p, t in short:
        test_phrasing = TEXT_TEMPLATES[stable_hash(t) % len(TEXT_TEMPLATES)].format(t)
        assert p != test_phrasing


def test_validation_sizes_follow_the_knobs():
    shapes, colors, rel = len(VAL.shapes), len(VAL.color_names), len(W.RELATIONS)
    contents = {  # contents per tag, counted from the world's combinatorics
        "single_object": shapes,
        "two_object": shapes * (shapes - 1),
        "counting": shapes * len(VAL.counting_counts),
        "colors": shapes * colors,
        "position": shapes * (shapes - 1) * rel,
        "color_attr": shapes * (shapes - 1) * colors * (colors - 1),
    }
    tags = Counter(m["tag"] for m in W.prompt_set("composition", "validation", VAL)[1])
    assert tags == {t: min(64, contents[t]) for t in COMPOSITION_TAGS}
    lengths = Counter(m["tag"] for m in W.prompt_set("text", "validation", VAL)[1])
    # len1: 8 strings (reused from test); len2: 16 of the 64 - 32 not in test; len3: 64.
    assert lengths == {"len1": 8, "len2": 16, "len3": 64}
    # Aesthetics: 40 contents, all in test, each once more in another phrasing.
    aes_contents = shapes * (1 + colors + 2) + 4
    assert len(W.prompt_set("aesthetics", "validation", VAL)[0]) == min(64, aes_contents)
    assert len(W.prompt_set("aesthetics", "train", VAL)[0]) == aes_contents * (
        len(AESTHETIC_TEMPLATES) - 2
    )
    # Content holdout cannot take more strings than test leaves: len2 gives its 32 and its
    # train is empty; the other lengths keep text's train non-empty.
    greedy = WorldConfig(text_validation_per_length=(0, 100, 0))
    lengths = Counter(m["tag"] for m in W.prompt_set("text", "validation", greedy)[1])
    assert lengths == {"len2": 64 - 32}
    assert "len2" not in {m["tag"] for m in W.prompt_set("text", "train", greedy)[1]}


def test_validation_is_off_by_default_and_sizes_are_checked():
    with pytest.raises(ValueError, match="validation_per_tag"):
        W.prompt_set("composition", "validation")
    with pytest.raises(ValueError, match=">= 0"):
        WorldConfig(validation_per_tag=-1)
    with pytest.raises(KeyError, match="validation"):
        W.prompt_set("composition", "dev")
    assert WorldConfig.from_dict(VAL.to_dict()) == VAL


def test_vocabularies_cover_every_split_and_are_unchanged():
    from opd.training.pretrain import world_vocabulary

    # Digests of the vocabularies before the split existed (commit 27e031e).
    assert _digest(W.vocabulary(WorldConfig())) == "81f908804539752b"
    assert _digest(world_vocabulary(WorldConfig(), [])) == "bef67787d7980bf0"
    assert W.vocabulary(VAL) == W.vocabulary(WorldConfig())
    words = set(world_vocabulary(VAL, []))
    for task in W.TASKS:
        assert set(W.all_prompts(task, VAL)) >= set(W.prompt_set(task, "validation", VAL)[0])
    assert {"sign", "photo", "drawing"} <= words


def test_load_prompts_serves_validation_and_paper_sources_must_name_one():
    from opd.data import load_prompt_file
    from opd.training.context import load_prompts

    profile = {
        "world": {"params": VAL.to_dict()},
        "tasks": {"composition": {"prompts": {"source": "mini", "task": "composition"}}},
    }
    prompts, meta = load_prompts("composition", "validation", profile)
    assert prompts == W.prompt_set("composition", "validation", VAL)[0]
    assert {m["tag"] for m in meta} == set(COMPOSITION_TAGS)
    # A paper source with one `set` serves train and test, never validation (no fetch happens).
    with pytest.raises(KeyError, match="no validation set"):
        load_prompt_file({"source": "paper", "set": "geneval"}, "validation", {})
