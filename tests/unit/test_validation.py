"""The world-validation table reads the learned scorers' held-out figures as written."""

from __future__ import annotations

import json
from pathlib import Path

from opd.validation import learned_checks


def test_learned_checks_read_the_nested_heldout_figures(tmp_path: Path) -> None:
    summary = {
        "scorers": {
            "hps": {"heldout": {"pairwise_accuracy": 0.871, "n": 2000}, "train_seconds": 9.0},
            "pick": {"heldout": {"pairwise_accuracy": 0.93}},
            "clip": {"heldout": {"retrieval_top1": 0.984, "retrieval_candidates": 16}},
        }
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    rows = {r["check"]: r for r in learned_checks(tmp_path)}
    assert set(rows) == {
        "hps held-out pairwise accuracy",
        "pick held-out pairwise accuracy",
        "clip held-out top-1 of 16",
    }
    assert rows["hps held-out pairwise accuracy"]["passed"] is False  # 0.871 < 0.9
    assert rows["pick held-out pairwise accuracy"]["passed"] is True
    assert rows["clip held-out top-1 of 16"]["value"] == 0.984


def test_validation_profile_sets_only_the_prompt_count() -> None:
    from opd.validation import validation_profile

    profile = {"eval": {"prompts_per_task": 16, "seeds": [1, 2]}, "benchmarks": {}}
    assert validation_profile(profile) is profile
    same = {**profile, "validation": {"prompts_per_task": 16}}
    assert validation_profile(same) is same
    more = {**profile, "validation": {"prompts_per_task": 96}}
    out = validation_profile(more)
    assert out["eval"] == {"prompts_per_task": 96, "seeds": [1, 2]}
    assert more["eval"]["prompts_per_task"] == 16  # the given profile is not changed


def test_scorer_checks_read_with_the_worlds_own_font_and_alphabet() -> None:
    """Property 1 scores clean renders with the scorers the world builds: a world with the 5x7
    font at 16 px and its own alphabet reads its single glyphs (the default 3x5 reader would
    read nothing and fail the check)."""
    from opd.validation import scorer_checks

    params = {
        "resolution": 16,
        "text_align": "corner",
        "font": "5x7",
        "max_text_len": 1,
        "alphabet": "ACDEFHJKLMNOPRSTUVXYZ",
        "text_test_per_length": [21],
    }
    rows = {r["check"]: r for r in scorer_checks({"world": {"params": params}}, n=200)}
    assert rows["text on clean renders"]["value"] == 1.0
    assert rows["text on shuffled prompts"]["value"] <= 0.3
