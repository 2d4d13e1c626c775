"""Training prompt draws: uniform over the train set (the default, unchanged) or, with
``sampling.prompt_sampling: stratified``, balanced over the metadata tags as evaluation is."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

import opd.worlds.mini as W
from opd.config import ConfigError, load_config
from opd.training.base import RunContext, TaskData, stratified_draw
from opd.training.compute import ComputeCounter

# sha256 of json.dumps([prompts of iterations 0, 1, 2]) for seed 5, 8 prompts x 4, first 16 hex
# digits, computed with the sampler before the stratified option existed (commit 27e031e).
UNIFORM_BEFORE = {
    "composition": "1d155aa653fde07c",
    "text": "4f9b169af0c7923f",
    "aesthetics": "df32060d56d2817f",
}


def _context(profile: dict, seed: int = 5) -> RunContext:
    tasks = {}
    for task in W.TASKS:
        prompts, meta = W.prompt_set(task, "train")
        tasks[task] = TaskData(task, prompts, meta, reward=lambda *a: np.zeros(0))
    return RunContext(model=None, profile=profile, seed=seed, tasks=tasks, compute=ComputeCounter())


@pytest.mark.parametrize("profile", [{}, {"sampling": {"prompt_sampling": "uniform"}}])
def test_uniform_default_draws_the_prompts_it_drew_before(profile):
    ctx = _context(profile)
    for task, digest in UNIFORM_BEFORE.items():
        drawn = [ctx.sample_prompts(task, 8, it, 4)[0] for it in range(3)]
        assert hashlib.sha256(json.dumps(drawn).encode()).hexdigest()[:16] == digest


@pytest.mark.parametrize(("task", "n"), [("composition", 4), ("text", 2), ("aesthetics", 3)])
def test_stratified_tag_frequencies_are_uniform_over_tags(task, n):
    ctx = _context({"sampling": {"prompt_sampling": "stratified"}})
    iterations = 600
    tags = Counter()
    for it in range(iterations):
        prompts, meta, groups = ctx.sample_prompts(task, n, it, 2)
        assert groups.tolist() == np.repeat(np.arange(n), 2).tolist()
        assert prompts[::2] == prompts[1::2]  # each prompt repeated for its group
        assert len({m["tag"] for m in meta}) == n  # n <= number of tags: all different
        tags.update(m["tag"] for m in meta[::2])
    every = {m["tag"] for m in ctx.tasks[task].metadata}
    assert set(tags) == every
    draws, k = n * iterations, len(every)
    se = np.sqrt(draws * (1 / k) * (1 - 1 / k))  # binomial standard error of a tag's count
    for tag in every:
        assert abs(tags[tag] - draws / k) < 3 * se, (tag, tags[tag], draws / k, se)
    # Uniform over prompts would not pass this: its tag shares follow the tag sizes.
    uniform = _context({})
    shares = Counter(
        m["tag"] for it in range(iterations) for m in uniform.sample_prompts(task, n, it)[1]
    )
    assert max(abs(shares[t] - draws / k) for t in every) > 3 * se


def test_stratified_draws_cover_each_tag_without_repeats_and_are_keyed():
    ctx = _context({"sampling": {"prompt_sampling": "stratified"}})
    prompts, meta, _ = ctx.sample_prompts("composition", 12, 7)
    assert Counter(m["tag"] for m in meta) == {t: 2 for t in W.COMPOSITION_TAGS}
    assert len(set(prompts)) == 12  # no prompt twice while its tag has enough
    assert ctx.sample_prompts("composition", 12, 7)[0] == prompts  # keyed by seed, iteration
    assert ctx.sample_prompts("composition", 12, 8)[0] != prompts
    assert _context(ctx.profile, seed=6).sample_prompts("composition", 12, 7)[0] != prompts
    # Within a tag every prompt is drawn: single_object's train prompts over 300 draws.
    single = {p for p, m in zip(*W.prompt_set("composition", "train"), strict=True)}
    single = {p for p in single if W.parse_prompt(p)["tag"] == "single_object"}
    seen = {
        p
        for it in range(300)
        for p, m in zip(*ctx.sample_prompts("composition", 6, it)[:2], strict=True)
        if m["tag"] == "single_object"
    }
    assert seen == single


def test_stratified_draw_by_hand_and_option_checks():
    # Tags a (3 items) and b (1 item); 5 slots: one tag gets 3 slots, the other 2; b repeats.
    idx = stratified_draw(["a", "b", "a", "a"], 5, np.random.default_rng(0))
    counts = Counter("b" if i == 1 else "a" for i in idx)
    assert sorted(counts.values()) == [2, 3]
    a_slots = [i for i in idx if i != 1]
    assert len(a_slots) == len(set(a_slots))  # 2 or 3 slots, 3 items: no repeats
    with pytest.raises(ValueError, match="prompt_sampling"):
        _context({"sampling": {"prompt_sampling": "tags"}}).sample_prompts("text", 2, 0)
    assert load_config("mini", set_items=["sampling.prompt_sampling=stratified"])
    with pytest.raises(ConfigError, match="prompt_sampling"):
        load_config("mini", set_items=["sampling.prompt_sampling=tags"])
