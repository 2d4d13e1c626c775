"""Unit tests of opd.objectives: the closed-form OPD losses against Monte Carlo KL and the
velocity form, exact zeros for identical weights, the PPO-style and log-ratio estimators'
expected gradients and variance, and the GRPO / GRPO-Guard helpers."""

from __future__ import annotations

import math

import pytest
import torch

from opd import objectives as O
from opd import sampling as S
from opd.registry import OBJECTIVES

F64 = torch.float64


def _within_4_se(samples: torch.Tensor, target: torch.Tensor | float) -> torch.Tensor:
    """Per-coordinate check that the mean of ``samples`` (K, ...) is within 4 SE of target."""
    k = samples.shape[0]
    se = samples.std(dim=0) / math.sqrt(k)
    return (samples.mean(dim=0) - target).abs() <= 4 * se


# ------------------------------------------------------------------------------- OPD losses
def test_closed_form_kl_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(0)
    b, shape, k = 3, (2, 2, 3), 20000
    d = math.prod(shape)
    mu_s = torch.randn(b, *shape, generator=g, dtype=F64)
    mu_t = mu_s + 0.3 * torch.randn(b, *shape, generator=g, dtype=F64)
    std = torch.tensor([0.4, 0.7, 1.3], dtype=F64)
    closed = O.opd_loss(mu_s, mu_t, std) * d  # summed KL(S || T) per sample
    z = torch.randn(k, b, *shape, generator=g, dtype=F64)
    x = mu_s + std.reshape(1, b, 1, 1, 1) * z  # x' ~ N(mu_S, s^2 I)
    flat = lambda a: a.reshape(k * b, *shape)  # noqa: E731
    rep = lambda a: a.expand(k, *a.shape).reshape(k * b, *shape)  # noqa: E731
    std_rep = std.expand(k, b).reshape(-1)
    log_s = S.gaussian_log_prob(flat(x), rep(mu_s), std_rep, reduce="sum").reshape(k, b)
    log_t = S.gaussian_log_prob(flat(x), rep(mu_t), std_rep, reduce="sum").reshape(k, b)
    assert bool(_within_4_se(log_s - log_t, closed).all())
    # the ODE form is half the element-mean squared error, whatever the (zero) std
    se = ((mu_s - mu_t) ** 2).mean(dim=(1, 2, 3))
    assert torch.equal(O.opd_loss(mu_s, mu_t, None), 0.5 * se)
    assert torch.equal(O.opd_loss(mu_s, mu_t, torch.zeros(b, dtype=F64)), 0.5 * se)
    with pytest.raises(ValueError):
        O.opd_loss(mu_s, mu_t, torch.tensor([0.0, 1.0, 1.0], dtype=F64))


def test_velocity_form_matches_mean_form() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 2, 2, generator=g, dtype=F64)
    v_s = torch.randn(2, 3, 2, 2, generator=g, dtype=F64)
    v_t = torch.randn(2, 3, 2, 2, generator=g, dtype=F64)
    se = ((v_s - v_t) ** 2).mean(dim=(1, 2, 3))
    # ODE: 1/2 h^2 mean(dv^2), equal to the loss on the Euler means
    t, tn = 0.6, 0.45
    h = t - tn
    ode = O.opd_loss_from_velocity(v_s, v_t, t, tn, 0.0)
    assert torch.allclose(ode, 0.5 * h**2 * se, rtol=1e-14)
    means = O.opd_loss(S.ode_step(x, v_s, t, tn), S.ode_step(x, v_t, t, tn), None)
    assert torch.allclose(ode, means, rtol=1e-12)
    a = 0.7
    for t, tn in ((0.6, 0.45), (1.0, 0.9)):
        h = t - tn
        out_s, out_t = S.sde_step(x, v_s, t, tn, a), S.sde_step(x, v_t, t, tn, a)
        from_means = O.opd_loss(out_s.mean, out_t.mean, out_s.std)
        from_v = O.opd_loss_from_velocity(v_s, v_t, t, tn, a)
        assert torch.allclose(from_v, from_means, rtol=1e-12)
        if t < 1:  # docs/method.md's explicit weights
            w = (1 + a * a / 2) ** 2 * h * (1 - t) / (2 * a * a * t)
        else:
            w = h * (1 - tn) / (2 * a * a)
        assert torch.allclose(from_v, w * se, rtol=1e-13)
    # (B,) time tensors give the same per-sample losses
    tt, tn_ = torch.tensor([0.6, 1.0], dtype=F64), torch.tensor([0.45, 0.9], dtype=F64)
    batched = O.opd_loss_from_velocity(v_s, v_t, tt, tn_, a)
    assert torch.allclose(batched[1], O.opd_loss_from_velocity(v_s, v_t, 1.0, 0.9, a)[1])


@pytest.mark.parametrize("noise_level", [0.0, 0.7])
def test_identical_weights_give_exactly_zero_loss_and_gradient(noise_level: float) -> None:
    torch.manual_seed(2)
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)
    v_s = lin(x)
    with torch.no_grad():
        v_t = lin(x)
    out_s = S.sde_step(x, v_s, 0.5, 0.4, noise_level)
    out_t = S.sde_step(x, v_t, 0.5, 0.4, noise_level)
    loss = O.opd_loss(out_s.mean, out_t.mean, out_s.std)
    assert torch.equal(loss, torch.zeros(4))
    loss.sum().backward()
    assert torch.equal(lin.weight.grad, torch.zeros_like(lin.weight))
    assert torch.equal(lin.bias.grad, torch.zeros_like(lin.bias))
    lin.zero_grad()
    lv = O.opd_loss_from_velocity(lin(x), v_t, 0.5, 0.4, noise_level)
    lv.sum().backward()
    assert torch.equal(lv, torch.zeros(4)) and torch.equal(lin.weight.grad, torch.zeros(8, 8))


# ------------------------------------------------------------------------------- estimators
def test_ppo_and_logratio_estimators_expected_gradient_and_variance() -> None:
    torch.manual_seed(3)
    d, k, a, t, tn = 6, 4000, 0.7, 0.6, 0.45
    lin = torch.nn.Linear(d, d).to(F64)  # student: v = W x + b
    w_t = lin.weight.detach() + 0.3 * torch.randn(d, d, dtype=F64)  # fixed teacher
    b_t = lin.bias.detach() + 0.3 * torch.randn(d, dtype=F64)
    x = torch.randn(k, d, dtype=F64)  # K independent states and noise draws
    z = torch.randn(k, d, dtype=F64)
    mu_t = S.sde_step(x, x @ w_t.T + b_t, t, tn, a).mean

    def per_sample_grads(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample parameter gradients (K, P) of the per-sample losses, and dL_k/dv_k."""
        v = lin(x)
        out = S.sde_step(x, v, t, tn, a, noise=z)
        x_next = out.prev_sample.detach()  # on-policy sample, fixed
        kl = O.opd_loss(out.mean, mu_t, out.std) * d  # summed KL
        logp = S.gaussian_log_prob(x_next, out.mean, out.std, reduce="sum")
        if kind == "closed":
            loss = kl
        elif kind == "ppo":
            loss = O.ppo_opd_surrogate(logp, logp.detach(), kl, clip_range=0.2)
        else:
            logp_t = S.gaussian_log_prob(x_next, mu_t, out.std, reduce="sum")
            loss = O.logratio_reinforce(logp, logp_t)
        (g_v,) = torch.autograd.grad(loss.sum(), v, retain_graph=True)  # row k: dL_k/dv_k
        # linear layer: dL_k/dW = g_v[k] x[k]^T, dL_k/db = g_v[k]
        g = torch.cat([(g_v[:, :, None] * x[:, None, :]).reshape(k, -1), g_v], dim=1)
        # chain rule sanity: the per-sample gradients sum to autograd's batch gradient
        w_grad, b_grad = torch.autograd.grad(loss.sum(), list(lin.parameters()))
        assert torch.allclose(g.sum(0), torch.cat([w_grad.reshape(-1), b_grad]), rtol=1e-10)
        return g, g_v

    g_cf, gv_cf = per_sample_grads("closed")
    g_ppo, gv_ppo = per_sample_grads("ppo")
    g_lr, _ = per_sample_grads("logratio")

    # closed form: dKL/dv = -c h (mu_S - mu_T) / s^2
    c, h = S.transition_coefficient(t, tn, a).item(), t - tn
    out = S.sde_step(x, lin(x).detach(), t, tn, a)
    s = out.std[:, None]
    assert torch.allclose(gv_cf, -c * h * (out.mean - mu_t) / s**2, rtol=1e-10)
    # on-policy PPO gradient = grad KL + KL * grad log pi, exactly, per sample
    kl = (O.opd_loss(out.mean, mu_t, out.std) * d)[:, None]
    assert torch.allclose(gv_ppo, gv_cf + kl * (-c * h) * z / s, rtol=1e-10, atol=1e-12)
    # same expected gradient (paired difference has zero mean within 4 SE per coordinate) ...
    assert bool(_within_4_se(g_ppo - g_cf, 0.0).all())
    assert bool(_within_4_se(g_lr - g_cf, 0.0).all())
    # ... and the test has power: the closed-form mean gradient itself is far from zero
    assert not bool(_within_4_se(g_cf, 0.0).all())
    # extra variance of the score-function estimators
    assert g_ppo.var(dim=0).sum() > g_cf.var(dim=0).sum()
    assert g_lr.var(dim=0).sum() > g_cf.var(dim=0).sum()


def test_ppo_surrogate_value_and_clipping() -> None:
    logp = torch.tensor([-1.0, -2.0], dtype=F64, requires_grad=True)
    kl = torch.tensor([0.5, 2.0], dtype=F64, requires_grad=True)
    loss = O.ppo_opd_surrogate(logp, logp.detach(), kl, clip_range=0.2)
    assert torch.equal(loss, kl.detach())  # rho = 1: loss = KL
    loss.sum().backward()
    assert torch.equal(kl.grad, torch.ones(2, dtype=F64))  # A not detached
    assert torch.equal(logp.grad, kl.detach())  # + KL grad log pi
    # ratio above 1 + eps with negative advantage: the clipped branch is taken, no ratio grad
    new = torch.tensor([0.5], dtype=F64, requires_grad=True)
    kl1 = torch.tensor([1.0], dtype=F64)
    loss = O.ppo_opd_surrogate(new, torch.tensor([0.0], dtype=F64), kl1, clip_range=0.2)
    assert torch.allclose(loss, torch.tensor([math.exp(0.5)], dtype=F64))  # -min(-e^.5, -1.2)
    ratio_low = O.ppo_opd_surrogate(
        torch.tensor([-0.5], dtype=F64), torch.tensor([0.0], dtype=F64), kl1, 0.2
    )
    assert torch.allclose(ratio_low, torch.tensor([0.8], dtype=F64))  # -min(-e^-.5, -0.8)


def test_logratio_reinforce_value_and_gradient() -> None:
    lp_s = torch.tensor([-3.0, -1.0], requires_grad=True)
    lp_t = torch.tensor([-2.0, -4.0])
    loss = O.logratio_reinforce(lp_s, lp_t)
    assert torch.equal(loss, torch.tensor([-1.0, 3.0]) * lp_s.detach())
    loss.sum().backward()
    assert torch.equal(lp_s.grad, torch.tensor([-1.0, 3.0]))  # (log S - log T), detached


# ------------------------------------------------------------------------------- GRPO helpers
def test_group_advantages() -> None:
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 4.0])
    groups = [0, 0, 0, 7, 7, 7]
    adv = O.group_advantages(r, groups, eps=0.0, clip=100.0)
    for idx in ([0, 1, 2], [3, 4, 5]):
        rg = r[idx].double()
        ref = (rg - rg.mean()) / rg.std(unbiased=False)
        assert torch.allclose(adv[idx].double(), ref, rtol=1e-6)
    glob = O.group_advantages(r, groups, eps=1e-4, clip=100.0, std_mode="global")
    means = torch.tensor([2.0, 2, 2, 8, 8, 8])
    assert torch.allclose(glob, (r - means) / (r.std(unbiased=False) + 1e-4), rtol=1e-6)
    clipped = O.group_advantages(torch.tensor([0.0, 0, 0, 0, 1]), [0] * 5, eps=0.0, clip=1.5)
    assert clipped[-1].item() == 1.5  # raw (1 - 0.2)/0.4 = 2 clipped
    mask = O.nonconstant_group_mask(torch.tensor([1.0, 1, 2, 3, 5, 5]), [0, 0, 1, 1, 2, 2])
    assert mask.tolist() == [False, False, True, True, False, False]
    with pytest.raises(ValueError):
        O.group_advantages(r, groups, std_mode="bad")


def test_grpo_clipped_loss_on_policy_and_clipping() -> None:
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5], requires_grad=True)
    loss = O.grpo_clipped_loss(logp, logp.detach(), adv, 1e-4)
    assert torch.equal(loss, -adv.detach())
    loss.sum().backward()
    assert torch.equal(logp.grad, -adv.detach()) and adv.grad is None
    # ratio beyond 1 + eps with positive advantage: clipped, zero gradient
    new = torch.tensor([0.1], requires_grad=True)
    out = O.grpo_clipped_loss(new, torch.tensor([0.0]), torch.tensor([1.0]), 0.01)
    out.sum().backward()
    assert torch.allclose(out, torch.tensor([-1.01])) and new.grad.item() == 0.0


def test_kl_to_ref_and_guard_log_ratio() -> None:
    g = torch.Generator().manual_seed(5)
    mu_old = torch.randn(3, 4, 2, generator=g, dtype=F64)
    mu_new = mu_old + 0.2 * torch.randn(3, 4, 2, generator=g, dtype=F64)
    s = torch.tensor([0.3, 0.5, 0.9], dtype=F64)
    kl = O.gaussian_kl_to_ref(mu_new, mu_old, s)
    assert torch.allclose(kl, ((mu_new - mu_old) ** 2).mean(dim=(1, 2)) / (2 * s**2))
    z = torch.randn(3, 4, 2, generator=g, dtype=F64)
    x_next = mu_old + s.reshape(3, 1, 1) * z
    lp_new = S.gaussian_log_prob(x_next, mu_new, s)
    lp_old = S.gaussian_log_prob(x_next, mu_old, s)
    # raw log-ratio = mean(z dmu)/s - bias; the guard form = mean(z * dmu)
    guard = O.guard_log_ratio(lp_new, lp_old, mu_new, mu_old, s)
    assert torch.allclose(guard, (z * (mu_new - mu_old)).mean(dim=(1, 2)), rtol=1e-10)
    on_policy = O.guard_log_ratio(lp_old, lp_old, mu_old, mu_old, s)
    assert torch.equal(on_policy, torch.zeros(3, dtype=F64))
    assert torch.equal(O.grpo_clipped_loss_from_log_ratio(on_policy, -kl, 0.1), kl)


def test_objectives_are_registered() -> None:
    for name, fn in (
        ("opd", O.opd_loss),
        ("opd_velocity", O.opd_loss_from_velocity),
        ("ppo_opd", O.ppo_opd_surrogate),
        ("logratio_reinforce", O.logratio_reinforce),
        ("group_advantages", O.group_advantages),
        ("grpo_clipped", O.grpo_clipped_loss),
        ("kl_to_ref", O.gaussian_kl_to_ref),
        ("guard_log_ratio", O.guard_log_ratio),
    ):
        assert OBJECTIVES.get(name) is fn
