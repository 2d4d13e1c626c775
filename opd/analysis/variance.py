"""Measured gradient variance of DiffusionOPD's closed form against its sampled alternatives.

The paper (Sec. 3.3) proves that the closed-form OPD objective has a lower-variance gradient
than the PPO-style estimator with advantage ``A_j = -KL_j`` but publishes no measurement. This
module measures it, per denoising step, per noise level and per batch size.

Core, model-agnostic statistics (in :mod:`opd.analysis.gradient_stats`, re-exported here)
    :func:`gradient_stats` takes ``N`` independent single-draw gradient estimates (an (N, P)
    tensor of flat gradients), forms ``N // B`` batch-B estimates (the mean of ``B`` consecutive
    draws; non-overlapping) and reports, for one batch-B estimate ``g_B``:

    - ``trace_cov``: ``tr Cov(g_B)``, the sum of the per-coordinate variances (unbiased, ``M - 1``
      denominator over the ``M`` batch estimates);
    - ``mean_norm``: the norm of the expected gradient, ``sqrt(max(||m||^2 - trace_cov / M, 0))``
      with ``m`` the mean of all estimates (``||m||^2`` alone is biased up by ``trace_cov / M``);
    - ``snr``: ``mean_norm^2 / trace_cov`` (infinite for a deterministic estimator, NaN for an
      identically zero gradient);
    - ``cosine``: the mean over estimates of ``cos(g_B, r)``, the cosine of ONE batch-B estimate
      to a reference gradient ``r``. We deliberately do not report the cosine of the all-draw
      mean: that mean is the same for every batch size, so it cannot show how well one minibatch
      gradient points. ``r`` is either a fixed vector (``reference=``, e.g. the closed form's
      exact gradient at fixed states) or the mean of aligned reference draws
      (``reference_samples=``, e.g. the closed form computed on the same rollouts); then estimate
      ``i`` is compared with the reference mean over the *other* batch estimates (leave-own-draws-
      out), so that an estimator is never scored against its own noise.

    Confidence intervals: nonparametric bootstrap over the ``M`` batch estimates (resampled with
    replacement, ``n_boot`` replicates, a fixed seed; the cosine's reference is held fixed),
    percentile intervals at ``level`` (default 95%); ``se`` is the bootstrap standard deviation.
    Statistics are computed in float64. An estimator whose draws
    are identical up to rounding (``trace_cov <= 1e-10 ||m||^2``) is reported as deterministic:
    ``trace_cov = 0`` and ``snr = inf``. :func:`estimate_gradient_stats` wraps a callable
    ``grad_fn(i) -> flat gradient`` of the draw index.

Estimators of one denoising step (:func:`estimator_losses`), all written for the TRUE (summed)
log-density and the summed per-step KL, so that the unbiased ones estimate the same gradient
``grad KL_j(S || T)`` (element-mean conventions would rescale the score terms by 1/D):

- ``closed_form``: :func:`opd.objectives.opd_loss` times D: ``||mu_S - mu_T||^2 / (2 s^2)`` at
  noise level ``a > 0`` (paper Eq. 11), ``1/2 ||mu_S - mu_T||^2`` for the ODE, ``a = 0``
  (Eq. 12; a different objective, so compare its SNR and cosine, not its scale);
- ``ppo``: :func:`opd.objectives.ppo_opd_surrogate` on-policy (ratio 1) with the closed-form,
  non-detached advantage ``-KL_j``: ``grad KL_j + KL_j grad log pi(x'|x)``;
- ``logratio``: :func:`opd.objectives.logratio_reinforce`, REINFORCE on the sampled
  ``log p_T(x') - log p_S(x')``;
- ``ppo_rtg`` (rollout mode): PPO-style with advantage ``-(KL_j + sum_{k>j} KL_k)`` (later
  steps' KLs detached): the exact gradient of the trajectory KL, whose extra reward-to-go
  score term the paper drops; its mean differs from the per-step closed form by that term;
- ``grpo`` (rollout mode, needs ``reward_fn``): the task-reward GRPO gradient
  (:func:`opd.objectives.grpo_clipped_loss` on-policy, group advantages of the reward with
  each prompt's group = all of its rollouts in the pool), a reference for the RL teachers.

PPO-style, log-ratio, reward-to-go and GRPO estimators need a stochastic kernel: at ``a = 0``
they are undefined and their rows are ABSENT from the table (never zeros).

Modes of :func:`variance_study` (one draw = one sample; batch size ``B`` averages ``B`` draws):

- ``fixed_state``: the stored student trajectory of the first prompt; at step ``j`` the state
  ``x_j`` is fixed and a draw is the transition noise ``z`` of ``x_{j+1} = mu_S + s z``. The
  closed form has no sampling noise there (zero variance: its only randomness is which states
  are visited).
- ``rollout``: a draw is a fresh student rollout (new initial and step noise) of a prompt drawn
  uniformly from the given prompts, as in a training minibatch, so every estimator has variance
  and the comparison is fair; GRPO's reward and the reward-to-go live here only.

Cosines are taken to the closed form computed on the same draws (leave-own-draws-out).

Implementation: gradients are taken w.r.t. the student adapter's LoRA weights. For a Gaussian
kernel with a parameter-free std, the cotangent ``dL/dmu_S`` of every estimator lies in
``span{mu_S - mu_T, x' - mu_S}`` per sample (the cotangents are obtained by autograd through the
objective functions themselves and the decomposition is checked to 1e-4), so two batched
vector-Jacobian products (cotangents ``mu_S - mu_T`` and ``x' - mu_S``) give every estimator's
per-draw gradient, with per-sample LoRA gradients from forward hooks (:class:`LoraRowGrads`);
at fixed states the closed form's product is taken once on the un-replicated state. Memory
grows as draws x trainable parameters (fine for the mini world; the paper profile needs small
``draws``). At mini size (4 noise levels, 64 draws, 9 steps) it took about 1.5 minutes on one
CPU core in the 24 px world of ``mini-1``; the 16 px world has as many tokens per image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from opd import objectives as obj
from opd.analysis.gradient_stats import (
    METRICS,
    GradientStats,
    MetricEstimate,
    estimate_gradient_stats,
    gradient_stats,
)
from opd.models.lora import adapter_layers
from opd.sampling import gaussian_log_prob, make_sampler, rollout, sde_step, step_noise, time_grid

__all__ = [
    "ESTIMATORS",
    "METRICS",
    "MODES",
    "GradientStats",
    "LoraRowGrads",
    "MetricEstimate",
    "estimate_gradient_stats",
    "estimator_losses",
    "gradient_stats",
    "linear_gaussian_moments",
    "variance_study",
]

#: Estimator names, in table order.
ESTIMATORS: tuple[str, ...] = ("closed_form", "ppo", "logratio", "ppo_rtg", "grpo")
#: Estimators that need a stochastic kernel (absent at a = 0).
STOCHASTIC_ONLY: frozenset[str] = frozenset({"ppo", "logratio", "ppo_rtg", "grpo"})
#: Estimators defined in rollout mode only (they need whole trajectories).
ROLLOUT_ONLY: frozenset[str] = frozenset({"ppo_rtg", "grpo"})
#: Study modes.
MODES: tuple[str, ...] = ("fixed_state", "rollout")
#: Columns of the tidy table returned by :func:`variance_study`.
COLUMNS: tuple[str, ...] = (
    "estimator",
    "mode",
    "noise_level",
    "batch_size",
    "step",
    "t",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "se",
    "draws",
)
F64 = torch.float64


# --------------------------------------------------------------------------------------------
# estimators of one step
# --------------------------------------------------------------------------------------------
def estimator_losses(
    mean_student: Tensor,
    mean_teacher: Tensor,
    std: Tensor | float,
    next_state: Tensor | None,
    estimators: Sequence[str],
    *,
    advantages: Tensor | None = None,
    reward_to_go: Tensor | None = None,
    clip_range: float = 0.2,
) -> dict[str, Tensor]:
    """Per-sample (B,) losses of one step whose gradients are the estimators (summed density).

    ``mean_student`` carries the graph to the trainable weights; ``mean_teacher`` is treated as a
    constant; ``std`` the kernel std (float or (B,); 0 / ``next_state=None`` for the ODE, where
    only ``closed_form`` exists). ``next_state`` is the sampled ``x'`` (detached inside).
    ``advantages`` (B,) for ``grpo``; ``reward_to_go`` (B,) (the later steps' summed KLs) for
    ``ppo_rtg``. The on-policy ratio is 1, so ``clip_range`` never binds; ``grpo`` uses 1e-4.
    """
    d = mean_student[0].numel()
    stochastic = next_state is not None and float(torch.as_tensor(std).min()) > 0
    out: dict[str, Tensor] = {}
    for name in estimators:
        if name not in ESTIMATORS:
            raise ValueError(f"unknown estimator {name!r}; known: {ESTIMATORS}")
        if name in STOCHASTIC_ONLY and not stochastic:
            raise ValueError(f"estimator {name!r} needs a stochastic kernel (noise level > 0)")
    if not stochastic:
        if "closed_form" in estimators:
            out["closed_form"] = obj.opd_loss(mean_student, mean_teacher, None) * d
        return out
    assert next_state is not None
    x_next = next_state.detach()
    kl = obj.opd_loss(mean_student, mean_teacher, std) * d  # summed KL(S || T) per sample
    logp = gaussian_log_prob(x_next, mean_student, std, reduce="sum")
    for name in estimators:
        if name == "closed_form":
            out[name] = kl
        elif name == "ppo":
            out[name] = obj.ppo_opd_surrogate(logp, logp.detach(), kl, clip_range)
        elif name == "logratio":
            logp_t = gaussian_log_prob(x_next, mean_teacher.detach(), std, reduce="sum")
            out[name] = obj.logratio_reinforce(logp, logp_t)
        elif name == "ppo_rtg":
            if reward_to_go is None:
                raise ValueError("ppo_rtg needs reward_to_go")
            adv_kl = kl + reward_to_go.detach().to(kl)
            out[name] = obj.ppo_opd_surrogate(logp, logp.detach(), adv_kl, clip_range)
        elif name == "grpo":
            if advantages is None:
                raise ValueError("grpo needs advantages")
            out[name] = obj.grpo_clipped_loss(logp, logp.detach(), advantages.to(logp), 1e-4)
    return out


def linear_gaussian_moments(
    mean_diff: Tensor, std: float, batch_size: int = 1
) -> dict[str, tuple[Tensor, float]]:
    """Exact mean and trace of covariance of each estimator for a Gaussian step (``J = I``).

    Student ``mu_S = A x + theta`` (theta in R^D), teacher mean ``mu_T`` fixed, ``d = mu_S -
    mu_T``, ``x' = mu_S + s z``, ``c = d / s``, ``K = ||c||^2 / 2`` (the summed KL). Per draw:

    - closed form: ``g = d / s^2``; covariance 0;
    - PPO-style: ``g = d / s^2 + K z / s``; covariance ``K^2 / s^2 I``, trace ``D K^2 / s^2``;
    - log-ratio: the reward is ``log p_T(x') - log p_S(x') = -(K + c.z)``, so
      ``g = (K + c.z) z / s``; ``E g = c / s = d / s^2`` and, with ``E[(c.z)^2 z z^T] = ||c||^2 I
      + 2 c c^T``, ``Cov g = ((K^2 + ||c||^2) I + c c^T) / s^2``, trace
      ``(D K^2 + (D + 1) ||c||^2) / s^2``.

    Batch B divides each trace by B. Returns ``{name: (mean (D,), trace_cov)}`` in float64.
    """
    dm = mean_diff.detach().to(torch.float64).reshape(-1)
    s = float(std)
    dim = dm.numel()
    c_sq = float(dm @ dm) / s**2
    k = c_sq / 2.0
    mean = dm / s**2
    b = float(batch_size)
    return {
        "closed_form": (mean, 0.0),
        "ppo": (mean, dim * k**2 / s**2 / b),
        "logratio": (mean, (dim * k**2 + (dim + 1) * c_sq) / s**2 / b),
    }


def _span_coefficients(
    cotangent: Tensor, basis: Sequence[Tensor], name: str, tol: float = 1e-4
) -> list[Tensor]:
    """Per-sample coefficients of ``cotangent`` (B, ...) in ``basis`` (each (B, ...)).

    Solved in float64 by least squares per sample; raises if the residual exceeds ``tol``
    relative to the cotangent's norm (the estimator is then not of the span form assumed).
    """
    w = cotangent.detach().to(torch.float64).flatten(1)
    bs = torch.stack([b.detach().to(torch.float64).flatten(1) for b in basis], dim=1)  # (B, k, D)
    gram = bs @ bs.transpose(1, 2)  # (B, k, k)
    rhs = (bs @ w.unsqueeze(2)).squeeze(2)  # (B, k)
    coef = (torch.linalg.pinv(gram, hermitian=True) @ rhs.unsqueeze(2)).squeeze(2)
    resid = w - (coef.unsqueeze(2) * bs).sum(dim=1)
    scale = torch.linalg.vector_norm(w, dim=1).clamp_min(1e-300)
    rel = float((torch.linalg.vector_norm(resid, dim=1) / scale).max())
    if rel > tol:
        raise RuntimeError(f"estimator {name!r}: cotangent outside span (relative residual {rel})")
    return [coef[:, i] for i in range(coef.shape[1])]


# --------------------------------------------------------------------------------------------
# per-sample LoRA gradients
# --------------------------------------------------------------------------------------------
class LoraRowGrads:
    """Per-row gradients of adapter ``name``'s LoRA weights, from one forward and any VJPs.

    Within the ``with`` block a forward hook records the input and output of each of the
    adapter's ``lora_A`` / ``lora_B`` linears (one forward per block). :meth:`vjp` then takes
    ``torch.autograd.grad`` of an output w.r.t. those recorded outputs (never touching
    ``.grad``) and forms the weight gradient of every transformer batch row,
    ``sum_tokens g_out^T x_in``: a (rows, P) float32 tensor in the order of
    :meth:`FlowModel.adapter_parameters` (weight, then bias if any, of A then B per layer).
    """

    def __init__(self, model: Any, name: str) -> None:
        self.linears: list[nn.Linear] = []
        for _, layer in adapter_layers(model.transformer, name):
            self.linears += [layer.lora_A[name], layer.lora_B[name]]
        if not self.linears:
            raise ValueError(f"adapter {name!r} has no LoRA layers")
        expected = [id(p) for p in model.adapter_parameters(name)]
        got = [id(p) for lin in self.linears for p in lin.parameters()]
        if expected != got:
            raise RuntimeError("LoRA parameter order does not match adapter_parameters")
        self.inputs: dict[int, Tensor] = {}
        self.outputs: dict[int, Tensor] = {}
        self._handles: list[Any] = []

    def _hook(self, i: int) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if i in self.inputs:
                raise RuntimeError("a LoRA linear ran twice in one captured forward")
            self.inputs[i] = inputs[0].detach()
            self.outputs[i] = output

        return hook

    def __enter__(self) -> LoraRowGrads:
        self._handles = [
            lin.register_forward_hook(self._hook(i)) for i, lin in enumerate(self.linears)
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.inputs, self.outputs = {}, {}

    def vjp(self, output: Tensor, cotangent: Tensor, retain_graph: bool = False) -> Tensor:
        """(rows, P) per-row gradients of ``<output, cotangent>`` (float32)."""
        missing = [i for i in range(len(self.linears)) if i not in self.outputs]
        if missing:
            raise RuntimeError("a LoRA linear did not run in the captured forward")
        keys = [i for i in range(len(self.linears)) if self.outputs[i].requires_grad]
        grads = torch.autograd.grad(
            output,
            [self.outputs[i] for i in keys],
            grad_outputs=cotangent.to(output.dtype),
            retain_graph=retain_graph,
            allow_unused=True,
        )
        by_key = dict(zip(keys, grads, strict=True))
        parts: list[Tensor] = []
        for i, lin in enumerate(self.linears):
            x = self.inputs[i]
            n = x.shape[0]
            g = by_key.get(i)
            if g is None:
                parts.append(torch.zeros(n, sum(p.numel() for p in lin.parameters())))
                continue
            x3 = x.reshape(n, -1, x.shape[-1]).float()
            g3 = g.reshape(n, -1, g.shape[-1]).float()
            parts.append(torch.einsum("nto,nti->noi", g3, x3).reshape(n, -1))
            if lin.bias is not None:
                parts.append(g3.sum(dim=1))
        return torch.cat(parts, dim=1)


def _fold_cfg(rows: Tensor, n: int) -> Tensor:
    """Per-sample gradients from per-row ones: CFG batches rows as [uncond (n); cond (n)]."""
    if rows.shape[0] == n:
        return rows
    if rows.shape[0] == 2 * n:
        return rows[:n] + rows[n:]
    raise RuntimeError(f"{rows.shape[0]} transformer rows for {n} samples")


# --------------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------------
def _expand_rows(x: Tensor, n: int) -> Tensor:
    """A (1, ...) tensor repeated to (n, ...) (no-op when it already has n rows)."""
    return x if x.shape[0] == n else x.expand(n, *x.shape[1:])


def _step_grads(
    model: Any,
    student: str,
    embeds: Any,
    x: Tensor,
    mean_teacher: Tensor,
    times: tuple[float, float, float],
    estimators: Sequence[str],
    guidance: float,
    *,
    next_state: Tensor | None = None,
    noise: Tensor | None = None,
    extra: dict[str, Tensor] | None = None,
) -> tuple[dict[str, Tensor], Tensor | None]:
    """Per-draw gradients (n, P) of each estimator and the per-sample summed KL (None at a = 0).

    ``x`` (n, ...) are the states of the n draws, one sample each (rollout mode), or ONE state
    (1, ...) shared by ``noise.shape[0]`` draws (fixed-state mode: the closed form's gradient is
    computed once on that state; the noise term needs one row per draw). ``times`` =
    ``(t, t_next, a)``; ``next_state`` (rollout) or ``noise`` (fixed state) give ``x'``.
    """
    t, t_next, a = times
    shared = noise is not None and x.shape[0] == 1
    n = noise.shape[0] if noise is not None else x.shape[0]
    emb1 = embeds.index(slice(0, 1)) if shared else embeds
    with LoraRowGrads(model, student) as hooks:
        v = model.velocity(x, t, emb1, guidance_scale=guidance, adapter=student)
        out = sde_step(x, v, t, t_next, a)
        mu, std = out.mean, out.std.detach()
        d = mu.detach() - mean_teacher
        u = _fold_cfg(hooks.vjp(mu, d, retain_graph=a > 0 and not shared), x.shape[0]).double()
        basis = [_expand_rows(d, n)]
        per_sample = [_expand_rows(u, n)]
        if a > 0 and not shared:
            assert next_state is not None
            z_dir = next_state.detach() - mu.detach()
            per_sample.append(_fold_cfg(hooks.vjp(mu, z_dir), n).double())
            basis.append(z_dir)
    mu_n, std_n = _expand_rows(mu.detach(), n), _expand_rows(std, n)
    if a > 0 and shared:
        assert noise is not None
        z_dir = std_n.reshape(-1, *[1] * (x.dim() - 1)) * noise.to(mu_n)
        next_state = mu_n + z_dir
        rows = _expand_rows(x, n)
        with LoraRowGrads(model, student) as hooks:
            v = model.velocity(rows, t, embeds, guidance_scale=guidance, adapter=student)
            mu_rows = sde_step(rows, v, t, t_next, a).mean
            per_sample.append(_fold_cfg(hooks.vjp(mu_rows, z_dir), n).double())
        basis.append(z_dir)
    leaf = mu_n.clone().requires_grad_(True)
    losses = estimator_losses(
        leaf,
        _expand_rows(mean_teacher, n),
        std_n if a > 0 else 0.0,
        next_state if a > 0 else None,
        estimators,
        **(extra or {}),
    )
    result: dict[str, Tensor] = {}
    for name, loss in losses.items():
        (w,) = torch.autograd.grad(loss.sum(), leaf, retain_graph=True)
        coefs = _span_coefficients(w, basis, name)
        result[name] = sum(c.unsqueeze(1) * g for c, g in zip(coefs, per_sample, strict=True))
    kl = None
    if a > 0:
        kl = (obj.opd_loss(mu_n, _expand_rows(mean_teacher, n), std_n) * mu[0].numel()).detach()
    return result, kl


@dataclass
class _Study:
    """Shared settings of one :func:`variance_study` call."""

    model: Any
    teacher: str
    student: str
    prompts: list[str]
    metadata: list[dict]
    embeds: Any
    draws: int
    grid: Tensor
    steps: list[int]
    trained: list[int]
    teacher_guidance: float
    student_guidance: float
    seed: int
    reward_fn: Callable[[np.ndarray, list[str], list[dict]], np.ndarray] | None
    batch_sizes: list[int]
    n_boot: int
    level: float
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.shape = tuple(self.model.latent_shape(1)[1:])
        self.device = self.model.device

    def times(self, j: int, a: float) -> tuple[float, float, float]:
        return float(self.grid[j]), float(self.grid[j + 1]), a

    def velocity(self, x: Tensor, j: int, embeds: Any, adapter: str, guidance: float) -> Tensor:
        with torch.no_grad():
            return self.model.velocity(
                x, float(self.grid[j]), embeds, guidance_scale=guidance, adapter=adapter
            )

    def teacher_mean(self, x: Tensor, j: int, a: float, embeds: Any) -> Tensor:
        v = self.velocity(x, j, embeds, self.teacher, self.teacher_guidance)
        return sde_step(x, v, float(self.grid[j]), float(self.grid[j + 1]), a).mean

    def record(self, mode: str, a: float, j: int, grads: dict[str, Tensor]) -> None:
        ref = grads["closed_form"]
        for name, g in grads.items():
            for b in self.batch_sizes:
                st = gradient_stats(
                    g,
                    batch_size=b,
                    reference_samples=ref,
                    n_boot=self.n_boot,
                    level=self.level,
                    seed=self.seed + 7919 * j + b,
                )
                base = {
                    "estimator": name,
                    "mode": mode,
                    "noise_level": float(a),
                    "batch_size": b,
                    "step": j,
                    "t": float(self.grid[j]),
                }
                for metric in METRICS:
                    if metric in st.metrics:
                        e = st.metrics[metric]
                        self.rows.append(
                            {
                                **base,
                                "metric": metric,
                                "value": e.value,
                                "ci_low": e.ci_low,
                                "ci_high": e.ci_high,
                                "se": e.se,
                                "draws": st.draws,
                            }
                        )

    def rollout(self, embeds: Any, a: float, n: int, seed: int) -> Any:
        sampler = make_sampler("flow_sde", noise_level=a) if a > 0 else make_sampler("ode")
        fn = self.model.velocity_fn(
            embeds, guidance_scale=self.student_guidance, adapter=self.student
        )
        with torch.no_grad():
            return rollout(
                fn, self.shape, self.grid, sampler, seed, list(range(n)), device=self.device
            )

    def fixed_state(self, a: float, names: Sequence[str]) -> None:
        """The stored student trajectory of the first prompt; one draw = one step noise."""
        embeds = self.embeds.index(slice(0, 1))
        traj = self.rollout(embeds, a, 1, self.seed)
        tiled = embeds.expand(self.draws)
        for j in self.steps:
            x = traj.states[j]
            mu_t = self.teacher_mean(x, j, a, embeds)
            ids = list(range(self.draws))
            noise = step_noise(self.seed + 1, j, ids, self.shape, device=self.device)
            if a > 0:
                grads, _ = _step_grads(
                    self.model,
                    self.student,
                    tiled,
                    x,
                    mu_t,
                    self.times(j, a),
                    names,
                    self.student_guidance,
                    noise=noise,
                )
            else:  # deterministic: computed once, the same for every draw
                grads, _ = _step_grads(
                    self.model,
                    self.student,
                    embeds,
                    x,
                    mu_t,
                    self.times(j, a),
                    names,
                    self.student_guidance,
                )
                grads = {k: g.expand(self.draws, -1) for k, g in grads.items()}
            self.record("fixed_state", a, j, grads)

    def rollout_mode(self, a: float, names: Sequence[str]) -> None:
        """One draw = a fresh student rollout (new initial and step noise) of a random prompt."""
        n = self.draws
        rng = np.random.default_rng([self.seed, 3])
        prompt_ids = rng.integers(0, len(self.prompts), size=n)
        embeds = self.embeds.index(torch.as_tensor(prompt_ids))
        traj = self.rollout(embeds, a, n, self.seed + 2)
        extra: dict[str, Tensor] = {}
        if "grpo" in names:
            assert self.reward_fn is not None
            prompts = [self.prompts[i] for i in prompt_ids]
            meta = [self.metadata[i] for i in prompt_ids]
            rewards = self.reward_fn(self.model.decode(traj.states[-1]), prompts, meta)
            rewards = np.asarray(rewards, dtype=np.float64)
            if rewards.shape != (n,) or not np.all(np.isfinite(rewards)):
                raise FloatingPointError("reward_fn must return finite (N,) scores")
            # each prompt's group: all of its rollouts in the pool
            extra["advantages"] = obj.group_advantages(
                torch.as_tensor(rewards), torch.as_tensor(prompt_ids)
            )
        need_rtg = "ppo_rtg" in names
        # reverse order: the reward-to-go of step j sums the KLs of the later trained steps
        order = sorted(set(self.steps) | (set(self.trained) if need_rtg else set()), reverse=True)
        rtg = torch.zeros(n, dtype=torch.float64)
        for j in order:
            x, x_next = traj.states[j], traj.states[j + 1]
            mu_t = self.teacher_mean(x, j, a, embeds)
            if need_rtg:
                extra["reward_to_go"] = rtg.clone()
            kl: Tensor | None = None
            if j in self.steps:
                grads, kl = _step_grads(
                    self.model,
                    self.student,
                    embeds,
                    x,
                    mu_t,
                    self.times(j, a),
                    names,
                    self.student_guidance,
                    next_state=x_next if a > 0 else None,
                    extra=extra,
                )
                self.record("rollout", a, j, grads)
            if need_rtg and j in self.trained:
                if kl is None:
                    v = self.velocity(x, j, embeds, self.student, self.student_guidance)
                    out = sde_step(x, v, *self.times(j, a))
                    kl = obj.opd_loss(out.mean, mu_t, out.std) * mu_t[0].numel()
                rtg = rtg + kl.detach().cpu().to(rtg)


def variance_study(
    model: Any,
    teacher_adapter: str,
    student_adapter: str,
    prompts: Sequence[str],
    *,
    noise_levels: Sequence[float] = (0.0, 0.7),
    batch_sizes: Sequence[int] = (1, 4),
    draws: int = 64,
    steps: Sequence[int] | None = None,
    num_steps: int = 10,
    shift: float = 3.0,
    teacher_guidance: float = 1.0,
    student_guidance: float = 4.5,
    seed: int = 0,
    reward_fn: Callable[[np.ndarray, list[str], list[dict]], np.ndarray] | None = None,
    metadata: Sequence[dict] | None = None,
    embeds: Any = None,
    modes: Sequence[str] = MODES,
    estimators: Sequence[str] | None = None,
    n_boot: int = 200,
    level: float = 0.95,
    log: Callable[[str], None] | None = None,
) -> Any:
    """Measure every estimator's gradient statistics; returns a tidy ``pandas.DataFrame``.

    ``model`` is a :class:`opd.models.FlowModel` carrying adapters ``teacher_adapter`` (frozen)
    and ``student_adapter`` (its LoRA weights are the gradient's coordinates). ``prompts``
    (``embeds`` optional, precomputed): fixed-state mode uses the first prompt's stored
    trajectory, rollout mode draws a prompt uniformly per draw. ``draws`` single draws are
    taken per (mode, noise level); batch size B uses ``draws // B`` batch estimates. ``steps``:
    the measured step indices of the ``num_steps``-step shifted grid (default: the trained
    ``0 .. num_steps - 2``). ``reward_fn(images, prompts, metadata)`` enables ``grpo``.
    ``estimators`` restricts the set (``closed_form`` is always kept: it is the cosine
    reference). The student's CFG ``student_guidance`` is used in its rollouts and gradients,
    ``teacher_guidance`` for the teacher's means. Columns: :data:`COLUMNS`; ``draws`` is the
    number of batch estimates. ``df.attrs`` records the settings, the skipped (undefined)
    combinations and the wall time. Modes, estimators, statistics: see the module docstring.
    """
    import pandas as pd

    say = log or (lambda _msg: None)
    t_start = time.perf_counter()
    prompts = list(prompts)
    if not prompts:
        raise ValueError("variance_study needs at least one prompt")
    wanted = list(estimators or ESTIMATORS)
    for name in wanted:
        if name not in ESTIMATORS:
            raise ValueError(f"unknown estimator {name!r}; known: {ESTIMATORS}")
    if "closed_form" not in wanted:
        wanted.insert(0, "closed_form")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {MODES}")
    sizes = sorted({int(b) for b in batch_sizes})
    if min(sizes) < 1 or int(draws) // max(sizes) < 2:
        raise ValueError(f"draws={draws} gives fewer than 2 estimates at batch {max(sizes)}")
    trained = list(range(max(int(num_steps) - 1, 1)))
    chosen = sorted({int(j) for j in (steps if steps is not None else trained)})
    for j in chosen:
        if not 0 <= j < int(num_steps):
            raise ValueError(f"step {j} outside [0, {num_steps})")
    study = _Study(
        model=model,
        teacher=teacher_adapter,
        student=student_adapter,
        prompts=prompts,
        metadata=list(metadata) if metadata is not None else [{} for _ in prompts],
        embeds=embeds if embeds is not None else model.encode_prompts(prompts),
        draws=int(draws),
        grid=time_grid(int(num_steps), shift=float(shift)),
        steps=chosen,
        trained=trained,
        teacher_guidance=float(teacher_guidance),
        student_guidance=float(student_guidance),
        seed=int(seed),
        reward_fn=reward_fn,
        batch_sizes=sizes,
        n_boot=int(n_boot),
        level=float(level),
    )
    previous = model.trainable
    model.set_trainable(student_adapter)
    skipped: list[str] = []
    try:
        for a in [float(x) for x in noise_levels]:
            for mode in modes:
                names = [
                    e
                    for e in wanted
                    if (a > 0 or e not in STOCHASTIC_ONLY)
                    and (mode == "rollout" or e not in ROLLOUT_ONLY)
                    and (e != "grpo" or reward_fn is not None)
                ]
                skipped += [f"{e} at a={a:g} ({mode})" for e in wanted if e not in names]
                tic = time.perf_counter()
                if mode == "fixed_state":
                    study.fixed_state(a, names)
                else:
                    study.rollout_mode(a, names)
                elapsed = time.perf_counter() - tic
                say(f"variance: a={a:g} {mode}: {', '.join(names)} ({elapsed:.1f} s)")
    finally:
        model.set_trainable(previous)
    df = pd.DataFrame(study.rows, columns=list(COLUMNS))
    df.attrs.update(
        {
            "prompts": prompts,
            "draws": int(draws),
            "num_steps": int(num_steps),
            "skipped": skipped,
            "wall_seconds": time.perf_counter() - t_start,
            "convention": "summed log-density; summed per-step KL",
        }
    )
    return df
