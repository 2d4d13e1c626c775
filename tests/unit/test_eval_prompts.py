"""The evaluation subset covers every sub-task of a prompt set (GenEval overall = mean of six)."""

from __future__ import annotations

from collections import Counter

from opd.evaluation import stratified_prompts
from opd.worlds.mini import WorldConfig, prompt_set


def test_stratified_subset_covers_every_tag_evenly() -> None:
    prompts, meta = prompt_set("composition", "test", WorldConfig())
    tags = Counter(m["tag"] for m in meta)
    assert len(tags) == 6 and max(tags.values()) > 10 * min(tags.values())  # very unbalanced
    sub_p, sub_m = stratified_prompts(prompts, meta, 16)
    counts = Counter(m["tag"] for m in sub_m)
    assert set(counts) == set(tags)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert len(set(sub_p)) == 16 and set(sub_p) <= set(prompts)
    # Within a tag the set's own order is kept, and the subset is deterministic.
    for tag in tags:
        idx = [prompts.index(p) for p, m in zip(sub_p, sub_m, strict=True) if m["tag"] == tag]
        assert idx == sorted(idx)
    assert stratified_prompts(prompts, meta, 16) == (sub_p, sub_m)


def test_small_tags_run_out_and_the_rest_fill_up() -> None:
    prompts = [f"p{i}" for i in range(10)]
    meta = [{"tag": "a"}] * 8 + [{"tag": "b"}] * 2
    sub_p, _ = stratified_prompts(prompts, meta, 6)
    assert sub_p == ["p0", "p8", "p1", "p9", "p2", "p3"]
    everything, _ = stratified_prompts(prompts, meta, 50)  # n beyond the set: all, once each
    assert everything == ["p0", "p8", "p1", "p9", "p2", "p3", "p4", "p5", "p6", "p7"]


def test_images_per_prompt_repeats_each_prompt_in_a_row() -> None:
    from opd.evaluation import repeat_prompts

    prompts, meta = ["a", "b", "c"], [{"tag": "x"}, {"tag": "y"}, {"tag": "x"}]
    rep_p, rep_m = repeat_prompts(prompts, meta, 3)
    assert rep_p == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert [m["tag"] for m in rep_m] == ["x"] * 3 + ["y"] * 3 + ["x"] * 3
    assert repeat_prompts(prompts, meta, 1) == (prompts, meta)
    import pytest

    with pytest.raises(ValueError, match="images_per_prompt"):
        repeat_prompts(prompts, meta, 0)
