"""The matched-control reward: 0/1 draws at the real reward's batch mean, carrying no signal."""

from __future__ import annotations

import numpy as np
import pytest

from opd.config import ConfigError, load_config
from opd.training.base import MethodConfig
from opd.training.context import MatchedControl, make_reward

LEVELS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])  # compose_partial-like partial credits


def _real(images: np.ndarray, prompts: list[str], metadata: list[dict]) -> np.ndarray:
    """A stand-in reward read off the images: pixel value k/4 of 255 scores k/4."""
    return images[:, 0, 0, 0].astype(np.float64) / 255.0


def _batches(n_batches: int, size: int, seed: int = 0) -> list[tuple[np.ndarray, list[str]]]:
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        # Skewed towards 0, like an early compose reward; the batch means vary.
        values = rng.choice(LEVELS, size=size, p=[0.45, 0.2, 0.15, 0.1, 0.1])
        images = np.broadcast_to((values * 255).round()[:, None, None, None], (size, 2, 2, 3))
        out.append((images.astype(np.uint8), [f"prompt {b} {i}" for i in range(size)]))
    return out


def test_matched_control_rate_equals_the_real_mean_and_carries_no_signal():
    control = MatchedControl(_real, seed=3)
    real, drawn, batch_of = [], [], []
    for b, (images, prompts) in enumerate(_batches(500, 16)):
        r = _real(images, prompts, [])
        c = control(images, prompts, [{}] * len(prompts))
        assert set(np.unique(c)) <= {0.0, 1.0}
        real.append(r), drawn.append(c), batch_of.append(np.full(len(r), b))
    r, c, g = np.concatenate(real), np.concatenate(drawn), np.concatenate(batch_of)
    n = len(r)
    # Given the real values, the draws' total is a sum of Bernoullis at each batch's mean:
    # its expectation is the real total, its SE at most the binomial one at the pooled rate.
    p = r.mean()
    assert abs(c.mean() - p) < 3 * np.sqrt(p * (1 - p) / n)

    # No signal within a batch (what advantages compare): the correlation of the values
    # centred on their batch means is 0 within 3 standard errors (~ 1 / sqrt(n - batches)).
    def centred(x: np.ndarray) -> np.ndarray:
        return x - (np.bincount(g, weights=x) / np.bincount(g))[g]

    rc, cc = centred(r), centred(c)
    corr = float(rc @ cc / np.sqrt((rc @ rc) * (cc @ cc)))
    assert abs(corr) < 3 / np.sqrt(n - g.max() - 1)
    # The check can fail: draws at each sample's own real value (signal kept) correlate.
    leak = (np.random.default_rng(0).random(n) < r).astype(float)
    lc = centred(leak)
    assert float(rc @ lc / np.sqrt((rc @ rc) * (lc @ lc))) > 3 / np.sqrt(n - g.max() - 1)


def test_matched_control_is_keyed_by_seed_and_batch_not_by_call_order():
    (a_img, a_p), (b_img, b_p) = _batches(2, 64, seed=1)
    one, two = MatchedControl(_real, seed=0), MatchedControl(_real, seed=0)
    a1, b1 = one(a_img, a_p, []), one(b_img, b_p, [])
    b2, a2 = two(b_img, b_p, []), two(a_img, a_p, [])  # a resumed run sees batch b first
    assert np.array_equal(a1, a2) and np.array_equal(b1, b2)
    assert not np.array_equal(MatchedControl(_real, seed=1)(a_img, a_p, []), a1)
    # All-0 and all-1 batches draw all 0 and all 1; rewards outside [0, 1] are refused.
    zeros = np.zeros((5, 2, 2, 3), np.uint8)
    assert one(zeros, ["x"] * 5, []).tolist() == [0.0] * 5
    assert one(zeros + 255, ["x"] * 5, []).tolist() == [1.0] * 5
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MatchedControl(lambda im, p, m: np.full(len(im), 1.5))(zeros, ["x"] * 5, [])


def test_make_reward_wraps_the_mix_and_the_option_is_validated():
    import opd.worlds.mini as W

    profile = {"world": {"params": {}}}
    images, prompts, meta = W.sample_scenes("composition", 24, seed=0)
    real = make_reward({"compose_partial": 1.0}, profile)(images, prompts, meta)
    control = make_reward({"compose_partial": 1.0}, profile, "matched", seed="0/composition")
    assert isinstance(control, MatchedControl)
    drawn = control(images, prompts, meta)
    assert set(np.unique(drawn)) <= {0.0, 1.0} and real.mean() > 0.5  # clean renders
    assert np.array_equal(drawn, control(images, prompts, meta))
    with pytest.raises(ValueError, match="matched"):
        make_reward({"compose_partial": 1.0}, profile, "shuffled")
    MethodConfig(reward_control="matched").validate()
    with pytest.raises(ValueError, match="reward_control"):
        MethodConfig(reward_control="shuffled").validate()
    assert load_config("mini", set_items=["methods.opd.reward_control=matched"])
    with pytest.raises(ConfigError, match="reward_control"):
        load_config("mini", set_items=["methods.opd.reward_control=shuffled"])


def test_build_context_gives_every_task_the_control():
    from opd.training.compute import ComputeCounter
    from opd.training.context import build_context

    teacher = {"method": "grpo_guard", "guidance": 4.5}
    profile = {
        "world": {"params": {}},
        "sampling": {"num_steps": 4, "guidance": 4.5},
        "tasks": {
            "composition": {
                "prompts": {"source": "mini"},
                "reward": {"compose": 1.0},
                "teacher": teacher,
            },
            "text": {"prompts": {"source": "mini"}, "reward": {"text": 1.0}, "teacher": teacher},
        },
    }
    plain = build_context(profile, 0, ComputeCounter(), {}, model=object())
    ctx = build_context(profile, 0, ComputeCounter(), {}, model=object(), reward_control="matched")
    assert not any(isinstance(t.reward, MatchedControl) for t in plain.tasks.values())
    assert all(isinstance(t.reward, MatchedControl) for t in ctx.tasks.values())
    assert ctx.tasks["text"].reward.seed != ctx.tasks["composition"].reward.seed
