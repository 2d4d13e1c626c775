"""A task's ``reward_mix``: ``normalize_then_sum`` gives each scorer its weight's say whatever
its scale (checked against a float64 computation); ``sum`` keeps the raw weighted sum."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from opd import objectives as obj
from opd.config import ConfigError, load_config
from opd.training.context import WeightedReward, make_reward
from opd.training.options import NFTConfig
from opd.training.rl import DiffusionNFT
from opd.training.rollouts import Batch


def _float64_mixed(parts: dict, weights: dict, groups: np.ndarray, clip: float = 5.0):
    """sum_k w_k clip((r_k - group mean) / (group population std + 1e-4)), in float64."""
    total = np.zeros(len(groups))
    for name, r in parts.items():
        adv = np.empty(len(r))
        for g in np.unique(groups):
            m = groups == g
            adv[m] = (r[m] - r[m].mean()) / (r[m].std() + 1e-4)
        total += weights.get(name, 0.0) * np.clip(adv, -clip, clip)
    return total


def _parts(seed: int = 0, n_groups: int = 6, size: int = 4):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), size)
    n = len(groups)
    parts = {  # three scorers at scales 100 apart, like the mini world's hps, pick and clip
        "hps": rng.normal(-6.0, 2.0, n),
        "pick": rng.normal(-1.0, 0.4, n),
        "clip": rng.normal(0.6, 0.02, n),
    }
    parts["clip"][groups == 0] = 0.6  # a group where one scorer is constant
    return parts, groups


def test_mixed_advantages_match_a_float64_computation():
    parts, groups = _parts()
    weights = {"hps": 0.334, "pick": 0.333, "clip": 0.333}
    got = obj.mixed_group_advantages(
        {k: torch.tensor(v, dtype=torch.float32) for k, v in parts.items()},
        weights,
        torch.as_tensor(groups),
    )
    want = _float64_mixed(parts, weights, groups)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-4)
    # A name without a weight counts 0.
    only = obj.mixed_group_advantages(parts, {"clip": 1.0}, groups)
    np.testing.assert_allclose(
        only.numpy(), _float64_mixed(parts, {"clip": 1.0}, groups), atol=1e-6
    )
    with pytest.raises(ValueError, match="at least one"):
        obj.mixed_group_advantages({}, weights, groups)


def test_mixed_advantages_do_not_depend_on_a_scorers_scale_where_the_sum_does():
    parts, groups = _parts(seed=1)
    weights = {"hps": 1 / 3, "pick": 1 / 3, "clip": 1 / 3}
    scaled = dict(parts, clip=1000.0 * parts["clip"])
    mixed = obj.mixed_group_advantages(parts, weights, groups).numpy()
    mixed_scaled = obj.mixed_group_advantages(scaled, weights, groups).numpy()
    # Equal up to the 1e-4 added to each group's std: |c / (s + eps) - c / s| <= |a| eps / s.
    clip_std = np.array([parts["clip"][groups == g].std() for g in groups])
    clip_adv = obj.group_advantages(torch.as_tensor(parts["clip"]), groups).numpy()
    bound = weights["clip"] * np.abs(clip_adv) * 1e-4 / np.maximum(clip_std, 1e-12) + 1e-5
    assert np.all(np.abs(mixed - mixed_scaled) <= bound)
    assert np.abs(mixed - mixed_scaled).max() > 0  # the bound is not vacuous: eps is there

    def summed(p):
        total = sum(weights[k] * v for k, v in p.items())
        return obj.group_advantages(torch.as_tensor(total), groups).numpy()

    # The raw sum follows hps: clip's own advantages hardly correlate with it, until clip is
    # scaled up and then decides alone.
    keep = groups != 0
    assert np.corrcoef(summed(parts)[keep], clip_adv[keep])[0, 1] < 0.5
    assert np.corrcoef(summed(scaled)[keep], clip_adv[keep])[0, 1] > 0.99
    assert np.corrcoef(mixed[keep], clip_adv[keep])[0, 1] > 0.3


def test_mixed_mask_keeps_groups_where_any_weighted_scorer_varies():
    groups = np.repeat(np.arange(3), 2)
    parts = {
        "a": np.array([1.0, 1.0, 0.0, 1.0, 2.0, 2.0]),
        "b": np.array([3.0, 3.0, 5.0, 5.0, 1.0, 0.0]),
    }
    mask = obj.mixed_nonconstant_mask(parts, {"a": 0.5, "b": 0.5}, groups)
    assert mask.tolist() == [False, False, True, True, True, True]
    assert obj.mixed_nonconstant_mask(parts, {"a": 1.0, "b": 0.0}, groups).tolist() == [
        False,
        False,
        True,
        True,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="non-zero weight"):
        obj.mixed_nonconstant_mask(parts, {"a": 0.0}, groups)


def _scorer(scale: float, offset: float):
    return lambda images, prompts, metadata: offset + scale * images[:, 0, 0, 0].astype(float)


def test_weighted_reward_total_is_the_weighted_sum_and_names_a_bad_scorer():
    images = np.arange(8, dtype=np.uint8).reshape(8, 1, 1, 1)
    reward = WeightedReward(
        {"a": _scorer(2.0, 1.0), "b": _scorer(-0.5, 0.0)}, {"a": 0.25, "b": 3.0}
    )
    parts = reward.parts(images, [""] * 8, [{}] * 8)
    x = np.arange(8.0)
    np.testing.assert_array_equal(parts["a"], 1 + 2 * x)
    np.testing.assert_array_equal(reward(images, [""] * 8, [{}] * 8), 0.25 * (1 + 2 * x) - 1.5 * x)
    bad = WeightedReward({"nan": lambda *a: np.full(8, np.nan)}, {"nan": 1.0})
    with pytest.raises(FloatingPointError, match="'nan'"):
        bad(images, [""] * 8, [{}] * 8)
    with pytest.raises(ValueError, match="reward_mix"):
        WeightedReward({}, {}, mode="max")


def test_rl_advantages_use_the_parts_when_the_batch_carries_them():
    parts, groups = _parts(seed=2)
    weights = {"hps": 0.25, "pick": 0.25, "clip": 0.5}
    reward = WeightedReward({}, weights, "normalize_then_sum")
    batch = Batch("aesthetics", [""] * len(groups), [], groups, None, None, None)
    batch.rewards = reward.total(parts)
    method = types.SimpleNamespace(cfg=NFTConfig())
    plain = DiffusionNFT.advantages(method, batch).numpy()
    want_plain = _float64_mixed({"sum": batch.rewards}, {"sum": 1.0}, groups)
    np.testing.assert_allclose(plain, want_plain, rtol=1e-4, atol=1e-4)
    batch.reward_parts, batch.reward_weights = parts, weights
    mixed = DiffusionNFT.advantages(method, batch).numpy()
    np.testing.assert_allclose(mixed, _float64_mixed(parts, weights, groups), rtol=1e-4, atol=1e-4)
    # The kept groups follow the parts: group 0 varies in hps and pick though clip is constant.
    assert DiffusionNFT.kept_mask(method, batch).all()


def test_the_option_is_validated_and_reaches_the_tasks_reward():
    cfg = load_config("mini", set_items=["tasks.aesthetics.reward_mix=normalize_then_sum"])
    assert cfg["tasks"]["aesthetics"]["reward_mix"] == "normalize_then_sum"
    with pytest.raises(ConfigError, match="reward_mix"):
        load_config("mini", set_items=["tasks.aesthetics.reward_mix=max"])
    profile = {"world": {"params": {}}}
    reward = make_reward({"compose_partial": 1.0}, profile, mode="normalize_then_sum")
    assert reward.mode == "normalize_then_sum" and reward.weights == {"compose_partial": 1.0}
