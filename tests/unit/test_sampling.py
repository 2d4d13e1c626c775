"""Unit tests of opd.sampling: grid, step formulas against docs/method.md, noise keyed by sample id,
rollout / replay consistency, and DPM-Solver++(2M) convergence on analytic flows."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from opd import sampling as S
from opd.registry import SAMPLERS

F64 = torch.float64


def _linear_velocity(seed: int = 0, dim: int = 8, dtype: torch.dtype = torch.float32):
    """A small nn.Linear velocity model acting on flattened (B, 2, 2, 2) states."""
    torch.manual_seed(seed)
    lin = torch.nn.Linear(dim + 1, dim).to(dtype)

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        tt = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1).expand(b, 1)
        return lin(torch.cat([x.reshape(b, -1), tt], dim=1)).reshape(x.shape)

    return lin, fn


# ------------------------------------------------------------------------------- grid
def test_time_grid_shape_endpoints_and_shift() -> None:
    g = S.time_grid(10)
    assert g.dtype == torch.float32 and g.shape == (11,)
    assert g[0].item() == 1.0 and g[-1].item() == 0.0
    assert bool((g[:-1] > g[1:]).all())
    # shift 3 maps the midpoint 0.5 to 3*0.5/(1+2*0.5) = 0.75
    assert S.time_grid(2, shift=3.0)[1].item() == 0.75
    assert torch.equal(S.time_grid(4, shift=1.0), torch.linspace(1, 0, 5))
    t = torch.linspace(1, 0, 7, dtype=F64)
    ref = 2.5 * t / (1 + 1.5 * t)
    assert torch.equal(S.time_grid(6, shift=2.5), ref.float())


@pytest.mark.parametrize("kwargs", [{"num_steps": 0}, {"num_steps": 3, "shift": 0.0}])
def test_time_grid_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        S.time_grid(**kwargs)


# ------------------------------------------------------------------------------- log-probs
def test_gaussian_log_prob_matches_torch_normal_float64() -> None:
    g = torch.Generator().manual_seed(1)
    x, mu = torch.randn(3, 2, 4, 4, generator=g, dtype=F64), torch.randn(3, 2, 4, 4, dtype=F64)
    std = torch.tensor([0.3, 1.0, 2.5], dtype=F64)
    ref = torch.distributions.Normal(mu, std.reshape(3, 1, 1, 1)).log_prob(x)
    assert torch.allclose(S.gaussian_log_prob(x, mu, std), ref.mean(dim=(1, 2, 3)), rtol=1e-12)
    assert torch.allclose(
        S.gaussian_log_prob(x, mu, std, reduce="sum"), ref.sum(dim=(1, 2, 3)), rtol=1e-12
    )


def test_sde_step_log_prob_matches_normal_and_is_float32_for_half_inputs() -> None:
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(4, 2, 3, 3, generator=g, dtype=F64), torch.randn(4, 2, 3, 3, dtype=F64)
    t = torch.tensor([1.0, 0.8, 0.5, 0.2], dtype=F64)
    tn = torch.tensor([0.9, 0.6, 0.4, 0.0], dtype=F64)
    noise = torch.randn_like(x)
    out = S.sde_step(x, v, t, tn, 0.7, noise)
    ref = torch.distributions.Normal(out.mean, out.std.reshape(4, 1, 1, 1)).log_prob(
        out.prev_sample
    )
    assert torch.allclose(out.log_prob, ref.mean(dim=(1, 2, 3)), rtol=1e-12)
    assert torch.allclose(out.prev_sample, out.mean + out.std.reshape(4, 1, 1, 1) * noise)
    half = S.sde_step(x.half(), v.half(), 0.5, 0.4, 0.7, noise=torch.zeros_like(x))
    assert half.log_prob.dtype == torch.float32 and half.mean.dtype == torch.float32


# ------------------------------------------------------------------------------- SDE formulas
def _method_md_mean_std(x, v, t: float, t_next: float, a: float):
    """docs/method.md literally, in float64: sigma, mean and std of one Flow-GRPO step."""
    denom = (1 - t_next) if t == 1.0 else (1 - t)
    sigma = a * math.sqrt(t / denom)
    h = t - t_next
    mean = x - h * (v + sigma**2 / (2 * t) * (x + (1 - t) * v))
    return mean, sigma * math.sqrt(h)


@pytest.mark.parametrize(("t", "t_next"), [(1.0, 0.9), (0.6, 0.45), (0.2, 0.0)])
def test_sde_step_follows_method_md(t: float, t_next: float) -> None:
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(2, 3, 2, 2, generator=g, dtype=F64), torch.randn(2, 3, 2, 2, dtype=F64)
    a = 0.7
    ref_mean, ref_std = _method_md_mean_std(x, v, t, t_next, a)
    for tt, tn in (
        (t, t_next),
        (torch.full((2,), t, dtype=F64), torch.full((2,), t_next, dtype=F64)),
    ):
        out = S.sde_step(x, v, tt, tn, a, noise=torch.zeros_like(x))
        assert torch.allclose(out.mean, ref_mean, rtol=1e-13, atol=1e-14)
        assert out.std.shape == (2,)
        assert torch.allclose(out.std, torch.full((2,), ref_std, dtype=F64), rtol=1e-14)
    # at t = 1, sigma uses the next grid point: a sqrt(1/(1-t_next)), finite and non-zero
    sig = S.flow_sde_sigma(t, t_next, a).item()
    expected = a * math.sqrt(t / ((1 - t_next) if t == 1.0 else (1 - t)))
    assert sig == pytest.approx(expected, rel=1e-15) and math.isfinite(sig)


def test_transition_coefficient_exact_values() -> None:
    a = 0.7
    assert S.transition_coefficient(1.0, 0.9, a).item() == 1.0
    for t, tn in ((0.9, 0.8), (0.5, 0.3), (0.1, 0.0)):
        assert S.transition_coefficient(t, tn, a).item() == 1.0 + a * a / 2
    c = S.transition_coefficient(torch.tensor([1.0, 0.5]), torch.tensor([0.8, 0.3]), a)
    assert torch.equal(c, torch.tensor([1.0, 1.0 + a * a / 2], dtype=F64))
    # c_j is the velocity coefficient: mu(v1) - mu(v2) = -c h (v1 - v2)
    x = torch.randn(2, 4, dtype=F64)
    v1, v2 = torch.randn(2, 4, dtype=F64), torch.randn(2, 4, dtype=F64)
    for t, tn in ((1.0, 0.8), (0.5, 0.3)):
        d = S.sde_step(x, v1, t, tn, a).mean - S.sde_step(x, v2, t, tn, a).mean
        c = S.transition_coefficient(t, tn, a).item()
        assert torch.allclose(d, -c * (t - tn) * (v1 - v2), rtol=1e-12, atol=1e-15)


def test_zero_noise_sde_is_exactly_the_ode_step() -> None:
    x, v = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    grid = S.time_grid(5)
    for j in range(5):
        t, tn = grid[j].expand(3), grid[j + 1].expand(3)
        out = S.sde_step(x, v, t, tn, 0.0, noise=torch.randn_like(x))
        ode = S.ode_step(x, v, t, tn)
        assert torch.equal(out.mean, ode) and torch.equal(out.prev_sample, ode)
        assert out.log_prob is None and torch.equal(out.std, torch.zeros(3))
        assert torch.equal(ode, x - (grid[j] - grid[j + 1]) * v)


def test_sde_step_scores_prev_sample_instead_of_drawing() -> None:
    x, v = torch.randn(2, 5, dtype=F64), torch.randn(2, 5, dtype=F64)
    drawn = S.sde_step(x, v, 0.7, 0.5, 0.7, noise=torch.randn(2, 5, dtype=F64))
    scored = S.sde_step(x, v, 0.7, 0.5, 0.7, prev_sample=drawn.prev_sample)
    assert torch.equal(scored.prev_sample, drawn.prev_sample)
    assert torch.equal(scored.log_prob, drawn.log_prob)


def test_dance_sde_step_formula() -> None:
    g = torch.Generator().manual_seed(4)
    x, v = torch.randn(2, 6, generator=g, dtype=F64), torch.randn(2, 6, generator=g, dtype=F64)
    eta, t, tn = 0.3, 0.7, 0.55
    out = S.dance_sde_step(x, v, t, tn, eta, noise=torch.zeros_like(x))
    h = t - tn
    assert torch.allclose(out.std, torch.full((2,), eta * math.sqrt(h), dtype=F64), rtol=1e-14)
    x1_hat = x + (1 - t) * v
    assert torch.allclose(out.mean, x - h * v - h * eta**2 / (2 * t) * x1_hat, rtol=1e-13)
    # DanceGRPO's own form: x + dsigma v - 1/2 eta^2 score dsigma, score = -(x - (1-t) x0)/t^2
    x0_hat = x - t * v
    score = -(x - x0_hat * (1 - t)) / t**2
    dance = x + (tn - t) * v + (-0.5 * eta**2 * score) * (tn - t)
    assert torch.allclose(out.mean, dance, rtol=1e-13)
    assert S.dance_sde_step(x, v, t, tn, 0.0).log_prob is None


# ------------------------------------------------------------------------------- noise
def test_step_noise_is_independent_of_batch_layout() -> None:
    ids = [11, 3, 7, 0, 42, 5, 9, 100]
    batch = S.step_noise(123, 4, ids, (2, 3, 3))
    assert batch.shape == (8, 2, 3, 3) and batch.dtype == torch.float32
    for i, sid in enumerate(ids):
        assert torch.equal(S.step_noise(123, 4, [sid], (2, 3, 3))[0], batch[i])
    assert torch.equal(S.step_noise(123, 4, torch.tensor(ids), (2, 3, 3)), batch)
    # different step, seed or id -> different noise; the initial state uses step -1
    assert not torch.equal(S.step_noise(123, -1, ids, (2, 3, 3)), batch)
    assert not torch.equal(S.step_noise(124, 4, ids, (2, 3, 3)), batch)
    assert not torch.equal(batch[0], batch[1])


def test_rollout_of_a_sample_does_not_depend_on_its_batch() -> None:
    _, fn = _linear_velocity()
    grid, sampler = S.time_grid(6), S.make_sampler("flow_sde", noise_level=0.7)
    ids = list(range(20, 28))
    full = S.rollout(fn, (2, 2, 2), grid, sampler, seed=5, sample_ids=ids)
    k = 5
    single = S.rollout(fn, (2, 2, 2), grid, sampler, seed=5, sample_ids=[ids[k]])
    # The noise is bit-identical (test above); only the matmul of a batch of 1 vs 8 may round
    # differently. Each step adds O(eps_32) relative error to a Lipschitz-1-ish map, so after N
    # steps the discrepancy is bounded by ~N * eps_32 * |x| (with slack factor 10).
    tol = 10 * grid.numel() * torch.finfo(torch.float32).eps
    scale = full.states.abs().max().item()
    assert torch.allclose(single.states[:, 0], full.states[:, k], rtol=tol, atol=tol * scale)
    assert torch.allclose(single.log_probs[:, 0], full.log_probs[:, k], rtol=tol, atol=tol)
    assert torch.equal(single.states[0, 0], full.states[0, k])  # initial noise: identical


# ------------------------------------------------------------------------------- rollout/replay
def test_replay_with_unchanged_weights_gives_ratio_exactly_one() -> None:
    lin, fn = _linear_velocity(seed=1)
    grid = S.time_grid(5)
    sampler = S.make_sampler("flow_sde", noise_level=0.7)
    traj = S.rollout(fn, (2, 2, 2), grid, sampler, seed=9, sample_ids=[0, 1, 2])
    assert traj.states.shape == (6, 3, 2, 2, 2) and traj.log_probs.shape == (5, 3)
    assert not traj.states.requires_grad
    rep = S.replay(fn, traj, sampler)  # grad enabled here
    assert rep.log_probs.requires_grad
    assert torch.equal(rep.log_probs, traj.log_probs)
    assert torch.equal(torch.exp(rep.log_probs - traj.log_probs), torch.ones(5, 3))
    assert torch.equal(rep.means, traj.means) and torch.equal(rep.stds, traj.stds)
    sub = S.replay(fn, traj, sampler, steps=[3, 1])
    assert torch.equal(sub.log_probs, traj.log_probs[[3, 1]])
    assert torch.equal(sub.velocities[0], fn(traj.states[3], grid[3].expand(3)))
    sub.log_probs.sum().backward()
    assert lin.weight.grad is not None
    # float times (as the trainers pass them) give the same log-probs as the (B,) tensors
    x, x_next = traj.states[2], traj.states[3]
    out = S.sde_step(x, fn(x, grid[2].expand(3)), float(grid[2]), float(grid[3]), 0.7, None, x_next)
    assert torch.equal(out.log_prob, traj.log_probs[2])


def test_rollout_deterministic_samplers_and_trajectory_ops() -> None:
    _, fn = _linear_velocity(seed=2)
    grid = S.time_grid(4)
    traj = S.rollout(fn, (2, 2, 2), grid, "ode", seed=0, sample_ids=[0, 1, 2, 3])
    assert traj.log_probs is None and torch.equal(traj.stds, torch.zeros(4, 4))
    assert traj.num_steps == 4 and traj.batch_size == 4 and traj.recorded
    x = traj.states[0]
    for j in range(4):
        x = S.ode_step(x, fn(x, grid[j].expand(4)), grid[j].expand(4), grid[j + 1].expand(4))
    assert torch.equal(traj.final, x)
    part = traj.index([2, 0])
    assert torch.equal(part.states, traj.states[:, [2, 0]])
    assert part.sample_ids.tolist() == [2, 0]
    assert torch.equal(traj[1].states, traj.states[:, 1:2])
    cat = S.Trajectory.cat([traj.index(slice(0, 2)), traj.index(slice(2, 4))])
    assert torch.equal(cat.states, traj.states) and torch.equal(cat.means, traj.means)
    assert torch.equal(traj.detach().to("cpu").states, traj.states)
    short = S.rollout(fn, (2, 2, 2), grid, "ode", seed=0, sample_ids=[0, 1, 2, 3], record=False)
    assert short.states.shape[0] == 2 and torch.equal(short.final, traj.final)
    assert not short.recorded
    with pytest.raises(ValueError):
        S.replay(fn, short, "ode")
    # dpm2m replay rebuilds the multistep state: replayed means equal the recorded ones
    dpm = S.rollout(fn, (2, 2, 2), grid, "dpm2m", seed=0, sample_ids=[0, 1, 2, 3])
    rep = S.replay(fn, dpm, "dpm2m", steps=[2])
    assert rep.log_probs is None and torch.equal(rep.means[0], dpm.means[2])
    with torch.enable_grad():
        g = S.rollout(fn, (2, 2, 2), grid, "ode", 0, [0], grad=True)
    assert g.states.requires_grad


def test_sampler_registry_and_flags() -> None:
    for name, cls in (
        ("ode", S.ODESampler),
        ("flow_sde", S.FlowSDESampler),
        ("dance_sde", S.DanceSDESampler),
        ("dpm2m", S.DPMSolver2MSampler),
    ):
        assert SAMPLERS.get(name) is cls
    assert not S.make_sampler("ode").stochastic
    assert S.make_sampler("flow_sde", noise_level=0.7).stochastic
    assert not S.make_sampler("flow_sde", noise_level=0.0).stochastic
    assert S.make_sampler("dance_sde").noise_level == 0.3
    assert S.make_sampler("dpm2m").multistep and not S.make_sampler("dpm2m").stochastic


# ------------------------------------------------------------------------------- DPM-Solver++
def test_dpm2m_single_data_point_flow_lands_on_it() -> None:
    x0 = torch.tensor([[0.3, -1.2, 2.0]], dtype=F64)

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # exact flow of a point mass
        return (x - x0) / t.reshape(-1, 1).to(F64)

    traj = S.rollout(v, (3,), S.time_grid(7), "dpm2m", 0, [0], x_init=torch.randn(1, 3, dtype=F64))
    assert torch.allclose(traj.final, x0, rtol=0, atol=1e-15)


def test_dpm2m_is_second_order_on_a_gaussian_flow() -> None:
    # data N(m, s0^2): x_t = (1-t) m + sqrt((1-t)^2 s0^2 + t^2) z is the exact ODE flow
    m, s0 = 0.7, 0.4

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(F64).reshape(-1, 1)
        var = (1 - t) ** 2 * s0**2 + t**2
        return (x - (m + (1 - t) * s0**2 / var * (x - (1 - t) * m))) / t

    def exact(z: torch.Tensor, t: float) -> torch.Tensor:
        return (1 - t) * m + math.sqrt((1 - t) ** 2 * s0**2 + t**2) * z

    z = torch.linspace(-2, 2, 5, dtype=F64).reshape(5, 1)

    def err(n: int, name: str) -> float:
        g = torch.linspace(0.95, 0.05, n + 1, dtype=F64)  # interior: every step after the first
        sampler, x, state = S.make_sampler(name), exact(z, 0.95), None  # is second order
        for j in range(n):
            out, state = sampler.step(x, v(x, g[j].expand(5)), g[j], g[j + 1], state=state)
            x = out.prev_sample
        return (x - exact(z, 0.05)).abs().max().item()

    e_dpm = [err(n, "dpm2m") for n in (32, 64, 128)]
    e_ode = [err(n, "ode") for n in (32, 64, 128)]
    order_dpm = [math.log2(a / b) for a, b in itertools.pairwise(e_dpm)]
    order_ode = [math.log2(a / b) for a, b in itertools.pairwise(e_ode)]
    assert all(1.8 < p < 2.3 for p in order_dpm), order_dpm  # theory: 2
    assert all(0.8 < p < 1.2 for p in order_ode), order_ode  # theory: 1
    # on the full grid to t = 0 (ending on x0_hat) the second-order solver beats Euler
    grid = S.time_grid(40, shift=1.0)
    full = S.rollout(v, (1,), grid, "dpm2m", 0, range(5), x_init=z.clone())
    euler = S.rollout(v, (1,), grid, "ode", 0, range(5), x_init=z.clone())
    target = m + s0 * z
    assert (full.final - target).abs().max() < (euler.final - target).abs().max()


def test_rollout_with_a_final_ode_step_matches_float64_and_keeps_the_earlier_states() -> None:
    lin, fn = _linear_velocity(seed=4)
    grid, a, ids, seed = S.time_grid(5), 0.7, [3, 7, 11], 21
    sde = S.make_sampler("flow_sde", noise_level=a)
    plain = S.rollout(fn, (2, 2, 2), grid, sde, seed, ids)
    last = S.rollout(fn, (2, 2, 2), grid, sde, seed, ids, final_sampler="ode")
    n = grid.numel() - 1
    # every state before the last step, and its kernels, are the plain sampler's bit for bit
    assert torch.equal(last.states[:n], plain.states[:n])
    assert torch.equal(last.log_probs[: n - 1], plain.log_probs[: n - 1])
    assert torch.equal(last.stds[: n - 1], plain.stds[: n - 1])
    # the last step is deterministic: std 0, no log-prob, mean = next state
    assert torch.equal(last.stds[-1], torch.zeros(3)) and torch.isnan(last.log_probs[-1]).all()
    assert torch.equal(last.means[-1], last.states[-1])
    assert not torch.equal(last.states[-1], plain.states[-1])  # the noise is really gone
    # independent float64 walk: docs/method.md's SDE step with the same noise, then x - h v
    lin64 = torch.nn.Linear(9, 8).to(F64)
    lin64.load_state_dict({k: v.to(F64) for k, v in lin.state_dict().items()})

    def v64(x: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((x.shape[0], 1), t, dtype=F64)
        return lin64(torch.cat([x.reshape(x.shape[0], -1), tt], dim=1)).reshape(x.shape)

    times = grid.to(F64).tolist()
    x = S.step_noise(seed, -1, ids, (2, 2, 2)).to(F64)
    with torch.no_grad():
        for j in range(n - 1):
            t, t_next = times[j], times[j + 1]
            mean, std = _method_md_mean_std(x, v64(x, t), t, t_next, a)
            x = mean + std * S.step_noise(seed, j, ids, (2, 2, 2)).to(F64)
        x = x - (times[n - 1] - times[n]) * v64(x, times[n - 1])
    assert torch.allclose(last.states[-1].to(F64), x, rtol=1e-5, atol=1e-5)
