"""Per-step losses and gradient estimators: DiffusionOPD's closed forms, its PPO-style and
log-ratio REINFORCE alternatives, and the GRPO / GRPO-Guard pieces the teachers are trained with.

Every function returns a per-sample (B,) tensor (the caller averages over the batch and sums or
averages over steps), computed in at least float32. Squared errors are averaged over the
non-batch (latent) elements, so the closed-form SDE loss is the reverse KL between the two
Gaussian kernels divided by the element count D (docs/method.md; paper Eqs. 11-12). Log-probs
follow whatever convention the caller used to compute them (element mean, Flow-GRPO's, or the
true summed density): the estimators are written for either, and the docstrings say where the
convention matters. Each objective is registered in :data:`opd.registry.OBJECTIVES`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from opd.registry import OBJECTIVES
from opd.sampling import flow_sde_sigma, transition_coefficient

__all__ = [
    "clipped_surrogate",
    "gaussian_kl_to_ref",
    "group_advantages",
    "grpo_clipped_loss",
    "grpo_clipped_loss_from_log_ratio",
    "guard_log_ratio",
    "logratio_reinforce",
    "nonconstant_group_mask",
    "opd_loss",
    "opd_loss_from_velocity",
    "ppo_opd_surrogate",
]


def _up(x: Tensor) -> Tensor:
    """Cast to at least float32."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _elem_mean(x: Tensor) -> Tensor:
    """Mean over the non-batch dims of a (B, ...) tensor -> (B,)."""
    return x.reshape(x.shape[0], -1).mean(dim=1) if x.dim() > 1 else x


def _std_per_sample(std: Tensor | float, batch: int, like: Tensor) -> Tensor:
    s = torch.as_tensor(std, device=like.device)
    s = s.to(torch.promote_types(s.dtype, like.dtype))
    if s.dim() > 1:
        s = s.reshape(s.shape[0], -1)[:, 0]
    return s.reshape(-1).expand(batch)


# --------------------------------------------------------------------------------------------
# DiffusionOPD
# --------------------------------------------------------------------------------------------
@OBJECTIVES.register("opd")
def opd_loss(mean_student: Tensor, mean_teacher: Tensor, std: Tensor | float | None) -> Tensor:
    """DiffusionOPD per-step loss on the transition means, per sample (B,).

    ``std`` None or all zero (ODE, paper Eq. 12): ``1/2 mean((mu_S - mu_T)^2)``. Otherwise
    (SDE, Eq. 11): ``mean((mu_S - mu_T)^2) / (2 s^2)`` with ``s`` per sample ((B,) or a float),
    the exact reverse KL between ``N(mu_S, s^2 I)`` and ``N(mu_T, s^2 I)`` divided by the
    element count D. The teacher mean is detached (a constant target).
    """
    mu_s, mu_t = _up(mean_student), _up(mean_teacher.detach())
    se = _elem_mean((mu_s - mu_t) ** 2)
    if std is None:
        return 0.5 * se
    s = _std_per_sample(std, se.shape[0], se)
    zero = s == 0
    if bool(zero.all()):
        return 0.5 * se
    if bool(zero.any()):
        raise ValueError("std mixes zero (ODE) and non-zero (SDE) entries within one batch")
    return se / (2.0 * s**2)


@OBJECTIVES.register("opd_velocity")
def opd_loss_from_velocity(
    v_student: Tensor,
    v_teacher: Tensor,
    t: float | Tensor,
    t_next: float | Tensor,
    noise_level: float,
) -> Tensor:
    """:func:`opd_loss` written on velocities: ``mu_S - mu_T = -c_j h (v_S - v_T)``.

    ODE (``noise_level`` 0): ``1/2 h^2 mean(dv^2)``. SDE: ``c_j^2 h^2 mean(dv^2) / (2 s^2)`` with
    ``s = sigma_t sqrt(h)``, i.e. ``(1+a^2/2)^2 h (1-t) / (2 a^2 t) mean(dv^2)`` for t < 1 and
    ``h (1-t_next) / (2 a^2) mean(dv^2)`` at t = 1. Equals :func:`opd_loss` on the Flow-GRPO
    means up to rounding. The teacher velocity is detached.
    """
    dv = _up(v_student) - _up(v_teacher.detach())
    se = _elem_mean(dv**2)
    dev = se.device
    tt = torch.as_tensor(t, dtype=torch.float64, device=dev)
    tn = torch.as_tensor(t_next, dtype=torch.float64, device=dev)
    h = tt - tn
    a = float(noise_level)
    if a == 0:
        w = 0.5 * h**2
    else:
        c = transition_coefficient(tt, tn, a)
        s2 = flow_sde_sigma(tt, tn, a) ** 2 * h
        w = c**2 * h**2 / (2.0 * s2)
    return w.to(se.dtype).reshape(-1).expand_as(se) * se


# --------------------------------------------------------------------------------------------
# estimator ablations
# --------------------------------------------------------------------------------------------
@OBJECTIVES.register("clipped_surrogate")
def clipped_surrogate(log_ratio: Tensor, advantages: Tensor, clip_range: float) -> Tensor:
    """PPO clipped surrogate ``-min(rho A, clip(rho, 1-eps, 1+eps) A)``, ``rho = exp(log_ratio)``.

    ``advantages`` are used as given (detach them first if they must not carry gradient).
    """
    if clip_range < 0:
        raise ValueError(f"clip_range must be >= 0, got {clip_range}")
    ratio = torch.exp(_up(log_ratio))
    adv = _up(advantages)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) * adv
    return -torch.minimum(unclipped, clipped)


@OBJECTIVES.register("ppo_opd")
def ppo_opd_surrogate(
    log_prob_new: Tensor, log_prob_old: Tensor, kl: Tensor, clip_range: float
) -> Tensor:
    """PPO-style estimator of the OPD objective (paper Sec. 3.3), per sample (B,).

    Advantage ``A = -kl`` (closed-form per-step KL, NOT detached), ratio
    ``rho = exp(logp_new - logp_old)``, loss ``-min(rho A, clip(rho, 1-eps, 1+eps) A)``.
    On-policy (``logp_old = logp_new.detach()``) ``rho = 1`` and
    ``grad loss = grad KL + KL grad log pi(x'|x)``: the closed-form gradient plus a zero-mean
    score-function term (extra variance). That identity holds for the true density: pass
    summed log-probs with the summed KL (``opd_loss * D``); with element-mean log-probs the
    score term is scaled by 1/D.
    """
    return clipped_surrogate(_up(log_prob_new) - _up(log_prob_old), -_up(kl), clip_range)


@OBJECTIVES.register("logratio_reinforce")
def logratio_reinforce(log_prob_student: Tensor, log_prob_teacher: Tensor) -> Tensor:
    """LLM-style REINFORCE estimator on the sampled log-ratio, per sample (B,).

    The sample ``x' ~ p_S`` is fixed; the reward is ``r = log p_T(x') - log p_S(x')``
    (detached) and the loss is ``-r log p_S(x') = (log p_S - log p_T).detach() log p_S``. Its
    expected gradient is ``E_S[(log p_S - log p_T) grad log p_S] = grad KL(p_S || p_T)`` (the
    missing ``E_S[grad log p_S]`` is zero), so minimising it minimises the reverse KL. Use the
    summed log-density for the true KL gradient (element means scale it by 1/D^2).
    """
    lp_s = _up(log_prob_student)
    reward = (_up(log_prob_teacher) - lp_s).detach()
    return -reward * lp_s


# --------------------------------------------------------------------------------------------
# GRPO / GRPO-Guard helpers (teachers)
# --------------------------------------------------------------------------------------------
def _group_index(group_ids: Tensor | list, n: int, device: torch.device) -> Tensor:
    g = torch.as_tensor(group_ids, device=device).reshape(-1)
    if g.shape[0] != n:
        raise ValueError(f"{g.shape[0]} group ids for {n} rewards")
    _, inverse = torch.unique(g, return_inverse=True)
    return inverse


@OBJECTIVES.register("group_advantages")
def group_advantages(
    rewards: Tensor,
    group_ids: Tensor | list,
    eps: float = 1e-4,
    clip: float = 5.0,
    std_mode: str = "group",
) -> Tensor:
    """GRPO advantages ``(r - group mean) / (std + eps)`` clipped to ``+-clip``, (N,) float32+.

    ``std_mode="group"``: the population std of each group; ``"global"``: the population std
    of all rewards given (Flow-GRPO's shipped configs, which take the whole epoch's std).
    """
    if std_mode not in ("group", "global"):
        raise ValueError(f"std_mode must be 'group' or 'global', got {std_mode!r}")
    r = _up(torch.as_tensor(rewards)).reshape(-1)
    idx = _group_index(group_ids, r.shape[0], r.device)
    k = int(idx.max()) + 1 if r.numel() else 0
    count = torch.zeros(k, dtype=r.dtype, device=r.device).index_add_(0, idx, torch.ones_like(r))
    mean = torch.zeros(k, dtype=r.dtype, device=r.device).index_add_(0, idx, r) / count
    centred = r - mean[idx]
    if std_mode == "group":
        var = torch.zeros(k, dtype=r.dtype, device=r.device).index_add_(0, idx, centred**2)
        std = torch.sqrt(var / count)[idx]
    else:
        std = r.std(unbiased=False).expand_as(r)
    adv = centred / (std + eps)
    return torch.clamp(adv, -clip, clip)


def nonconstant_group_mask(rewards: Tensor, group_ids: Tensor | list) -> Tensor:
    """Boolean (N,) mask that is False for samples whose group's rewards are all equal."""
    r = torch.as_tensor(rewards).reshape(-1)
    idx = _group_index(group_ids, r.shape[0], r.device)
    k = int(idx.max()) + 1 if r.numel() else 0
    big = torch.finfo(torch.float64).max
    rr = r.to(torch.float64)
    lo = torch.full((k,), big, dtype=torch.float64, device=r.device).scatter_reduce(
        0, idx, rr, "amin"
    )
    hi = torch.full((k,), -big, dtype=torch.float64, device=r.device).scatter_reduce(
        0, idx, rr, "amax"
    )
    return (hi > lo)[idx]


def mixed_group_advantages(
    parts: dict[str, Any],
    weights: dict[str, float],
    group_ids: Tensor | list,
    clip: float = 5.0,
    std_mode: str = "group",
) -> Tensor:
    """``normalize_then_sum``: ``sum_k w_k A_k``, the weighted sum of each reward's own
    :func:`group_advantages` (each clipped to ``+-clip``), so that a reward's say does not
    depend on its scale. ``parts`` maps a reward name to its (N,) values; a name without a
    weight counts 0."""
    total: Tensor | None = None
    for name, values in parts.items():
        adv = group_advantages(
            torch.as_tensor(values), group_ids, clip=clip, std_mode=std_mode
        ) * float(weights.get(name, 0.0))
        total = adv if total is None else total + adv
    if total is None:
        raise ValueError("mixed_group_advantages needs at least one reward")
    return total


def mixed_nonconstant_mask(
    parts: dict[str, Any], weights: dict[str, float], group_ids: Tensor | list
) -> Tensor:
    """The samples of groups where any reward of non-zero weight varies (the groups whose
    :func:`mixed_group_advantages` are not all 0)."""
    masks = [
        nonconstant_group_mask(torch.as_tensor(values), group_ids)
        for name, values in parts.items()
        if weights.get(name, 0.0) != 0
    ]
    if not masks:
        raise ValueError("mixed_nonconstant_mask needs a reward of non-zero weight")
    return torch.stack(masks).any(0)


@OBJECTIVES.register("grpo_clipped")
def grpo_clipped_loss(
    log_prob_new: Tensor, log_prob_old: Tensor, advantages: Tensor, clip_range: float
) -> Tensor:
    """Flow-GRPO's clipped policy loss per sample: :func:`clipped_surrogate` on
    ``logp_new - logp_old`` with detached advantages (Flow-GRPO uses element-mean log-probs
    and ``clip_range`` 1e-4)."""
    return grpo_clipped_loss_from_log_ratio(
        _up(log_prob_new) - _up(log_prob_old.detach()), advantages, clip_range
    )


def grpo_clipped_loss_from_log_ratio(
    log_ratio: Tensor, advantages: Tensor, clip_range: float
) -> Tensor:
    """:func:`grpo_clipped_loss` for a precomputed log-ratio (e.g. :func:`guard_log_ratio`)."""
    return clipped_surrogate(log_ratio, _up(advantages).detach(), clip_range)


@OBJECTIVES.register("kl_to_ref")
def gaussian_kl_to_ref(mean: Tensor, mean_ref: Tensor, std: Tensor | float) -> Tensor:
    """KL penalty to the reference model ``mean(||mu - mu_ref||^2) / (2 s^2)`` per sample.

    Element-mean convention (the true KL / D when ``s`` is the kernel std ``sigma_t sqrt(h)``;
    Flow-GRPO's code passes ``sigma_t``, without ``sqrt(h)``, and its beta values are tuned
    against that form). ``mean_ref`` is detached.
    """
    mu, mu_ref = _up(mean), _up(mean_ref.detach())
    se = _elem_mean((mu - mu_ref) ** 2)
    s = _std_per_sample(std, se.shape[0], se)
    return se / (2.0 * s**2)


@OBJECTIVES.register("guard_log_ratio")
def guard_log_ratio(
    log_prob_new: Tensor,
    log_prob_old: Tensor,
    mean_new: Tensor,
    mean_old: Tensor,
    std: Tensor | float,
) -> Tensor:
    """GRPO-Guard's de-biased, per-step normalised log-ratio (our form), per sample (B,).

    For ``x' = mu_old + s z`` the element-mean Gaussian log-ratio is
    ``(s z . dmu - ||dmu||^2 / 2) / (s^2 D)`` with ``dmu = mu_new - mu_old``: biased below zero
    by ``b = mean(dmu^2) / (2 s^2)``. We add ``b`` back (gradient flows through ``mu_new``;
    ``mu_old`` is detached) and multiply by ``s``:
    ``guard = s * (logp_new - logp_old + mean((mu_new - mu_old)^2) / (2 s^2))``,
    which equals ``mean(z * dmu)`` (element mean), zero-mean and with a scale that no longer
    grows as ``1/s`` at low-noise steps. It is 0 on-policy. The companion 1/h per-step weight of
    GRPO-Guard is applied by the caller to the per-step loss. Expects element-mean log-probs.
    """
    lp_new, lp_old = _up(log_prob_new), _up(log_prob_old.detach())
    mu_new, mu_old = _up(mean_new), _up(mean_old.detach())
    s = _std_per_sample(std, lp_new.shape[0], lp_new).detach()
    bias = _elem_mean((mu_new - mu_old) ** 2) / (2.0 * s**2)
    return s * (lp_new - lp_old + bias)
