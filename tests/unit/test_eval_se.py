"""The per-seed standard error over prompts of an evaluation column (``opd.evaluation.column_se``)
against Monte Carlo: prompts drawn from a population, several 0/1 images per prompt, and for
GenEval's overall the mean of per-tag means."""

from __future__ import annotations

import math

import numpy as np
import pytest

from opd.evaluation import column_se, column_value, repeat_prompts
from opd.rewards.compose import ComposeScorer, compose_overall

REPS = 3000


class _Mean:
    """A column that is the plain mean of its images' scores."""


class _Overall:
    """A column that is the mean of its tags' means, as the strict compose score."""

    def aggregate(self, scores, metadata):
        return compose_overall(scores, metadata)

    def strata(self, metadata):
        return [m["tag"] for m in metadata]


def _draw(rng: np.random.Generator, sizes: dict[str, tuple[int, float, float]], k: int):
    """Prompts of each tag (count, Beta a, b) with a success rate each, then k 0/1 images each."""
    prompts, meta, rates = [], [], []
    for tag, (n, a, b) in sizes.items():
        for i in range(n):
            prompts.append(f"{tag}{i}")
            meta.append({"tag": tag})
            rates.append(rng.beta(a, b))
    prompts, meta = repeat_prompts(prompts, meta, k)
    scores = (rng.random(len(prompts)) < np.repeat(rates, k)).astype(np.float64)
    return scores, prompts, meta


@pytest.mark.parametrize(
    ("scorer", "sizes"),
    [
        (_Mean(), {"all": (18, 0.8, 0.7)}),  # one population of prompts: the plain mean
        # the strict compose design: a fixed number of prompts per tag, each tag its own rates
        (_Overall(), {"single": (6, 8.0, 1.0), "two": (5, 2.0, 2.0), "colors": (7, 0.6, 0.9)}),
    ],
    ids=["mean", "overall"],
)
def test_column_se_matches_the_spread_of_the_value_over_prompt_draws(scorer, sizes) -> None:
    rng = np.random.default_rng(0)
    values, sq = [], []
    for _ in range(REPS):
        scores, prompts, meta = _draw(rng, sizes, k=3)
        values.append(column_value(scorer, scores, meta))
        sq.append(column_se(scorer, scores, prompts, meta) ** 2)
    var_mc, var_est = float(np.var(values, ddof=1)), float(np.mean(sq))
    # Monte Carlo SEs of both sides: a sample variance of near-normal values has relative SE
    # sqrt(2 / (REPS - 1)); the mean of the squared SEs has its own sd / sqrt(REPS)
    rel = math.hypot(
        math.sqrt(2 / (REPS - 1)), float(np.std(sq, ddof=1)) / math.sqrt(REPS) / var_est
    )
    assert abs(var_est / var_mc - 1) < 4 * rel, (var_est, var_mc, rel)
    # clustering matters: the per-image SE, blind to repeated images of a prompt, is smaller
    naive = float(np.std(scores, ddof=1) / math.sqrt(len(scores)))
    assert naive < column_se(_Mean(), scores, prompts, meta)


def test_column_se_is_nan_with_a_single_prompt_in_a_group() -> None:
    meta = [{"tag": "a"}, {"tag": "a"}, {"tag": "b"}]
    assert math.isnan(column_se(_Overall(), np.array([1.0, 0.0, 1.0]), ["x", "y", "z"], meta))
    assert column_se(_Mean(), np.array([1.0, 0.0, 1.0]), ["x", "y", "z"], meta) == pytest.approx(
        float(np.std([1.0, 0.0, 1.0], ddof=1) / math.sqrt(3))
    )


def test_strict_compose_is_stratified_by_tag_and_partial_credit_is_not() -> None:
    meta = [{"tag": "single"}, {"tag": "two"}]
    assert ComposeScorer(partial=False).strata(meta) == ["single", "two"]
    assert ComposeScorer(partial=True).strata(meta) is None
