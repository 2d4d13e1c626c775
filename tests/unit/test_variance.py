"""Unit tests of opd.analysis.variance: the known-answer linear-Gaussian check of the measured
means and covariance traces, the core statistics, the per-sample LoRA gradients against plain
autograd on a tiny model, the study's table (rows absent where undefined) and the caption."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from opd.analysis import variance as V
from opd.analysis.gradient_stats import flat_grad

F64 = torch.float64


# ------------------------------------------------------------------ linear-Gaussian known answer
def _linear_gaussian_draws(
    name: str, n: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-draw gradients w.r.t. theta of estimator ``name`` at one fixed state, by autograd
    through :func:`V.estimator_losses` (float64). mu_S = A x + theta, mu_T fixed, std s."""
    g = torch.Generator().manual_seed(123)
    dim, s = 6, 0.5
    a_mat = torch.randn(dim, dim, generator=g, dtype=F64) / math.sqrt(dim)
    x = torch.randn(dim, generator=g, dtype=F64)
    theta = 0.2 * torch.randn(dim, generator=g, dtype=F64)
    mu_t = a_mat @ x + 0.2 * torch.randn(dim, generator=g, dtype=F64)
    # one copy of theta per draw: the gradient w.r.t. copy i is draw i's estimate
    theta_rep = theta.expand(n, dim).clone().requires_grad_(True)
    mu_s = (a_mat @ x).expand(n, dim) + theta_rep
    z = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    x_next = mu_s.detach() + s * z
    loss = V.estimator_losses(mu_s, mu_t.expand(n, dim), s, x_next, [name])[name]
    (grads,) = torch.autograd.grad(loss.sum(), theta_rep)
    diff = (a_mat @ x + theta - mu_t).detach()
    return grads, diff, s


@pytest.mark.parametrize("name", ["closed_form", "ppo", "logratio"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_known_answer_linear_gaussian(name: str, batch_size: int) -> None:
    n = 8000
    grads, diff, s = _linear_gaussian_draws(name, n, seed=batch_size)
    exact_mean, exact_trace = V.linear_gaussian_moments(diff, s, batch_size)[name]
    st = V.gradient_stats(grads, batch_size=batch_size, reference=exact_mean, n_boot=100)
    m = st.draws
    assert m == n // batch_size
    batch = grads[: m * batch_size].reshape(m, batch_size, -1).mean(dim=1)
    if name == "closed_form":  # deterministic at a fixed state
        assert st.deterministic and st["trace_cov"].value == 0.0
        assert math.isinf(st["snr"].value)
        torch.testing.assert_close(st.mean, exact_mean, rtol=1e-12, atol=1e-12)
        assert st["cosine"].value == pytest.approx(1.0, abs=1e-12)
        return
    # mean: every coordinate within 4 standard errors of the closed-form gradient
    se_mean = batch.std(dim=0) / math.sqrt(m)
    assert bool(((st.mean - exact_mean).abs() <= 4 * se_mean).all())
    # trace of covariance within 4 standard errors of the variance estimate
    sq = ((batch - batch.mean(dim=0)) ** 2).sum(dim=1)
    se_trace = float(sq.std() / math.sqrt(m))
    measured = st["trace_cov"].value
    assert abs(measured - exact_trace) <= 4 * se_trace, (measured, exact_trace, se_trace)
    # the bootstrap SE agrees with the delta-method one, and the CI brackets the point
    assert st["trace_cov"].se == pytest.approx(se_trace, rel=0.35)
    assert st["trace_cov"].ci_low <= measured <= st["trace_cov"].ci_high
    # SNR uses the same numbers: ||E g||^2 / tr Cov
    snr_exact = float(exact_mean @ exact_mean) / exact_trace
    assert st["snr"].value == pytest.approx(snr_exact, rel=0.25)


def test_known_answer_ordering() -> None:
    """Closed form < PPO-style < log-ratio, as the exact traces say (and batch B divides)."""
    diff = torch.tensor([0.3, -0.2, 0.1], dtype=F64)
    m1 = V.linear_gaussian_moments(diff, 0.4)
    m4 = V.linear_gaussian_moments(diff, 0.4, batch_size=4)
    assert m1["closed_form"][1] == 0.0 < m1["ppo"][1] < m1["logratio"][1]
    assert m4["ppo"][1] == pytest.approx(m1["ppo"][1] / 4)
    k = float(diff @ diff) / (2 * 0.4**2)
    assert m1["ppo"][1] == pytest.approx(3 * k**2 / 0.4**2)


# ------------------------------------------------------------------ core statistics
def test_gradient_stats_matches_direct_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=F64) * torch.tensor([1.0, 2, 3, 0.5, 1]) + 2.0
    ref = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0], dtype=F64)
    for b in (1, 2, 4):
        st = V.gradient_stats(x, batch_size=b, reference=ref, n_boot=50)
        batch = x.reshape(40 // b, b, 5).mean(dim=1)
        trace = float(batch.var(dim=0, unbiased=True).sum())
        assert st["trace_cov"].value == pytest.approx(trace, rel=1e-10)
        mean_sq = float(batch.mean(dim=0) @ batch.mean(dim=0))
        signal = max(mean_sq - trace / batch.shape[0], 0.0)
        assert st["mean_norm"].value == pytest.approx(math.sqrt(signal), rel=1e-10)
        assert st["snr"].value == pytest.approx(signal / trace, rel=1e-10)
        cos = (batch @ ref) / batch.norm(dim=1)
        assert st["cosine"].value == pytest.approx(float(cos.mean()), rel=1e-10)
        assert st["trace_cov"].ci_low < st["trace_cov"].value < st["trace_cov"].ci_high


def test_gradient_stats_leave_own_draws_out_reference() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, generator=g, dtype=F64)
    y = x + 0.1 * torch.randn(12, 3, generator=g, dtype=F64)
    st = V.gradient_stats(x, batch_size=2, reference_samples=y, n_boot=20)
    xb, yb = x.reshape(6, 2, 3).mean(1), y.reshape(6, 2, 3).mean(1)
    expected = []
    for i in range(6):
        r = torch.cat([yb[:i], yb[i + 1 :]]).mean(0)
        expected.append(float(xb[i] @ r / (xb[i].norm() * r.norm())))
    assert st["cosine"].value == pytest.approx(float(np.mean(expected)), rel=1e-10)


def test_estimate_gradient_stats_and_errors() -> None:
    gen = torch.Generator().manual_seed(2)
    draws = [torch.randn(4, generator=gen, dtype=F64) for _ in range(20)]
    st = V.estimate_gradient_stats(lambda i: draws[i], 10, batch_size=2, n_boot=10)
    assert st.draws == 10 and st.batch_size == 2
    assert "cosine" not in st.metrics
    with pytest.raises(ValueError, match="at least 2"):
        V.gradient_stats(torch.zeros(3, 2, dtype=F64), batch_size=2)
    with pytest.raises(ValueError, match="stochastic kernel"):
        V.estimator_losses(torch.zeros(2, 3), torch.zeros(2, 3), 0.0, None, ["ppo"])


# ------------------------------------------------------------------ tiny FlowModel
@pytest.fixture(scope="module")
def tiny_model():
    pytest.importorskip("diffusers")
    from opd.models.tiny import TinyModelConfig, build_tiny_flow_model

    cfg = TinyModelConfig(
        resolution=8,
        patch_size=2,
        num_layers=1,
        num_heads=2,
        head_dim=8,
        text_width=16,
        vocab_words=("red", "blue", "circle"),
    )
    model = build_tiny_flow_model(cfg, seed=0)
    model.add_adapter("teacher_x", rank=2, alpha=4, init="random", seed=1, random_std=0.2)
    model.add_adapter("student", rank=2, alpha=4, init="random", seed=2, random_std=0.1)
    return model


def test_step_grads_match_autograd(tiny_model) -> None:
    from opd.sampling import sde_step, time_grid

    m = tiny_model
    m.set_trainable("student")
    params = m.adapter_parameters("student")
    emb = m.encode_prompts(["red circle", "blue", "red", "blue circle"])
    grid = time_grid(4)
    t, tn, a = float(grid[1]), float(grid[2]), 0.7
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=gen)
    with torch.no_grad():
        v_t = m.velocity(x, t, emb, guidance_scale=1.0, adapter="teacher_x")
        mu_t = sde_step(x, v_t, t, tn, a).mean
    x_next = 0.9 * x + 0.1 * torch.randn(4, 3, 8, 8, generator=gen)
    extra = {"reward_to_go": torch.rand(4, generator=gen, dtype=F64), "advantages": torch.randn(4)}
    grads, kl = V._step_grads(
        m,
        "student",
        emb,
        x,
        mu_t,
        (t, tn, a),
        list(V.ESTIMATORS),
        4.5,
        next_state=x_next,
        extra=extra,
    )
    assert kl is not None and kl.shape == (4,)
    for name in V.ESTIMATORS:
        for r in (0, 3):
            sl = slice(r, r + 1)
            v = m.velocity(x[sl], t, emb.index(sl), guidance_scale=4.5, adapter="student")
            out = sde_step(x[sl], v, t, tn, a)
            kw = {"reward_to_go": extra["reward_to_go"][sl], "advantages": extra["advantages"][sl]}
            loss = V.estimator_losses(out.mean, mu_t[sl], out.std, x_next[sl], [name], **kw)
            ref = flat_grad(loss[name].sum(), params).double()
            torch.testing.assert_close(grads[name][r], ref, rtol=1e-4, atol=1e-6 * ref.norm())
    assert all(p.grad is None for p in params)  # nothing accumulated into .grad
    m.set_trainable(None)


def test_variance_study_tiny(tiny_model) -> None:
    def reward(images, prompts, metadata):
        return images.astype(np.float64).mean(axis=(1, 2, 3))

    df = V.variance_study(
        tiny_model,
        "teacher_x",
        "student",
        ["red circle", "blue"],
        noise_levels=[0.0, 0.7],
        batch_sizes=[1, 2],
        draws=4,
        num_steps=3,
        seed=0,
        reward_fn=reward,
        n_boot=20,
    )
    assert list(df.columns) == list(V.COLUMNS)
    assert set(df["step"]) == {0, 1}
    ode = df[df["noise_level"] == 0.0]
    assert set(ode["estimator"]) == {"closed_form"}  # the others are absent, not zero
    fixed = df[(df["mode"] == "fixed_state") & (df["metric"] == "trace_cov")]
    assert (fixed[fixed["estimator"] == "closed_form"]["value"] == 0).all()
    sde = df[(df["noise_level"] == 0.7) & (df["mode"] == "rollout")]
    assert set(sde["estimator"]) == set(V.ESTIMATORS)
    assert set(df[df["mode"] == "fixed_state"]["estimator"]) == {"closed_form", "ppo", "logratio"}
    tr = df[(df["metric"] == "trace_cov") & (df["estimator"] == "ppo")]
    assert (tr["value"] > 0).all()
    assert (df[df["batch_size"] == 2]["draws"] == 2).all()
    assert any("ppo at a=0" in s for s in df.attrs["skipped"])
    assert tiny_model.trainable is None  # restored


# ------------------------------------------------------------------ caption and figure
def _synthetic_table() -> pd.DataFrame:
    """Hand-made study table: PPO-style 37x and log-ratio 50x the closed form's variance."""
    rows = []
    factors = {"closed_form": 1.0, "ppo": 37.0, "logratio": 50.0}
    for mode in ("fixed_state", "rollout"):
        for a in (0.0, 0.7):
            names = ["closed_form"] if a == 0 else list(factors)
            for name in names:
                for b in (1, 4):
                    for j in range(3):
                        zero = mode == "fixed_state" and name == "closed_form"
                        trace = 0.0 if zero else 2.0 * factors[name] * (j + 1) / b
                        values = {
                            "trace_cov": trace,
                            "snr": 1.0 / factors[name],
                            "cosine": 0.9 / factors[name],
                            "mean_norm": 1.0,
                        }
                        for metric, v in values.items():
                            rows.append(
                                dict(
                                    estimator=name,
                                    mode=mode,
                                    noise_level=a,
                                    batch_size=b,
                                    step=j,
                                    t=1.0 - j / 3,
                                    metric=metric,
                                    value=v,
                                    ci_low=0.8 * v,
                                    ci_high=1.2 * v,
                                    se=0.1,
                                    draws=16 // b,
                                )
                            )
    return pd.DataFrame(rows, columns=list(V.COLUMNS))


def test_caption_states_measured_ratios(tmp_path) -> None:
    from opd.analysis.plots import variance_caption
    from opd.commands.variance import write_figure

    df = _synthetic_table()
    text = variance_caption(df)
    assert (
        "At a = 0.7, batch 4, over fresh rollouts, the PPO-style estimator's variance is 37x"
        in text
    )
    assert "log-ratio REINFORCE estimator's variance is 50x" in text
    assert "undefined for the ODE" in text
    write_figure(df, tmp_path)
    for suffix in ("grad_variance.png", "grad_variance.pdf", "grad_variance.caption.txt"):
        path = tmp_path / suffix
        assert path.exists() and path.stat().st_size > 0
