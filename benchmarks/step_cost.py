"""What rollouts and training steps cost, measured against the bare model work they contain.

Usage: ``python benchmarks/step_cost.py [--profile mini] [--repeats 5] [--quick]``. Writes
``benchmarks/results/step_cost.json`` (``--out``) and prints a table. Everything runs in one
process on one thread (``torch.set_num_threads(1)``), and every time is that thread's CPU time
(``time.thread_time``), which other jobs on a shared machine disturb less than wall time:

1. **Overhead ratios.** The suite's real code paths (``opd.sampling.rollout`` with each
   registered sampler; one ``step()`` of ``opd``, ``grpo``, ``grpo_guard``, ``nft`` and
   ``multitask_grpo_guard``, built through ``opd.training.context.build_context`` as the trainer
   builds them) are timed against their *bare model cost*: the transformer calls the mathematics
   requires (one forward per rollout step, on the doubled batch with CFG; forward + backward for
   a trained step; the teacher / reference / old-policy forwards), replayed alone on the very
   tensors the real run fed the transformer, with the same adapter active (LoRA on, as in
   training), batch size and dtype. The calls are recorded by a hook on the transformer during
   one real run and checked against the count the method's formula gives (``calls_match``), so
   a redundant transformer call in the package would show. Real and bare runs alternate;
   ``ratio`` is the best real time over the best bare time (other jobs only ever add time) and
   ``ratio_median`` the median of the per-pair ratios; the cases under the bar (rollouts, the
   OPD step) get twice ``--repeats`` pairs. RL steps report their scorer seconds
   apart: ``ratio`` excludes the scorers (they are no model cost), ``ratio_with_scorer`` counts
   them.
2. **OPD against RL at the same batch.** Seconds per optimizer step of DiffusionOPD (every task,
   one student sample per prompt), one multi-task GRPO-Guard step (averaged over its tasks) and
   one GRPO-Guard teacher step, with the same number of rollout samples per optimizer step.
3. **Scaling** of each cost with the number of tasks, the denoising steps and the batch size.
4. **bf16 autocast** of the bare student call (forward + backward) against float32, with a
   1024 x 1024 matmul for reference.
5. **Feed-forward GELU**: the bare student call with SD3's tanh GELU against the exact (erf)
   form (``model.ff_gelu`` at run time, ``model.tiny.ff_gelu`` from pretraining on), same
   weights, alternating.
6. **torch.compile**: the bare student call with the whole transformer compiled (inductor)
   against eager, same weights, alternating; what the first calls spend compiling, and how far
   the velocity moves.

Model weights are random (a fresh base model of the profile's shape, random LoRA teachers,
learned scorers trained for one step): costs do not depend on the weights' values. ``--quick``
runs the smoke profile with one repeat and two points per scaling axis (for the test suite).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = ROOT / "results" / "step_cost.json"
DEFAULT_REPEATS = 5
BAR = 1.15  # issue 8: rollouts and OPD steps cost at most 1.15x their bare model cost
STUDENT = "student"
LEARNED_SCORER_STEPS = {"steps": 1, "n_train": 32, "n_heldout": 32, "batch_size": 16}


# --------------------------------------------------------------------------------------------
# recording and replaying the transformer calls
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Call:
    """One transformer call: its inputs, whether it was differentiated, the adapter it used."""

    kwargs: dict[str, Any]
    grad: bool
    adapter: str | None  # None: the base model (every adapter off)

    @property
    def batch(self) -> int:
        return int(self.kwargs["hidden_states"].shape[0])

    @property
    def evals(self) -> int:
        """Model evaluations in the convention of docs/mini_world.md (a backward counts 2 more)."""
        return self.batch * (3 if self.grad else 1)


def _active_adapter(model: Any) -> str | None:
    layers = model._layers()
    if not layers or layers[0].disable_adapters:
        return None
    return str(layers[0].active_adapters[0])


@contextmanager
def record_calls(model: Any) -> Iterator[list[Call]]:
    """Record every call of ``model.transformer`` made inside the block (inputs cloned)."""
    calls: list[Call] = []

    def hook(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        copied = {
            k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()
        }
        calls.append(Call(copied, torch.is_grad_enabled(), _active_adapter(model)))

    handle = model.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


def bare_replay(model: Any, calls: Sequence[Call]) -> Callable[[], None]:
    """A function that makes exactly ``calls`` on the transformer, nothing else."""
    from opd.models import lora as L

    layers = model._layers()
    trainable = model.trainable
    seeds = [torch.ones_like(c.kwargs["hidden_states"]) if c.grad else None for c in calls]
    restore = _active_adapter(model)
    transformer = model.transformer

    def run() -> None:
        current: Any = object()
        with torch.no_grad():
            for call, seed in zip(calls, seeds, strict=True):
                if call.adapter != current:
                    L.activate(layers, call.adapter, trainable)
                    current = call.adapter
                if seed is None:
                    transformer(**call.kwargs)
                else:
                    with torch.enable_grad():
                        transformer(**call.kwargs)[0].backward(seed)
        L.activate(layers, restore, trainable)

    return run


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------
def clock() -> float:
    """CPU seconds of this thread: with one torch thread every kernel, the backward included,
    runs on it, and time spent waiting while other processes hold the CPU is not counted."""
    return time.thread_time()


def _clock(fn: Callable[[], Any], before: Callable[[], None] | None) -> float:
    if before is not None:
        before()
    t0 = clock()
    fn()
    return clock() - t0


def paired(
    real: Callable[[], Any],
    bare: Callable[[], Any],
    repeats: int,
    *,
    before: Callable[[], None] | None = None,
    side: Callable[[], float] | None = None,
    warmup: int = 1,
) -> dict[str, float]:
    """Time ``real`` and ``bare`` in alternating pairs (``repeats`` of them).

    Returns the best (minimum) seconds of each, ``ratio`` = best real / best bare (other
    processes on the machine only ever add time, so the minima are the least disturbed
    estimates) and ``ratio_median``, the median of the per-pair ratios. ``before`` runs untimed
    before each call (e.g. clearing gradients); ``side()`` returns the seconds of ``real``'s
    last run spent outside the model (scorers), which the ratios exclude; with ``side`` the
    result also has ``scorer_s`` and ``ratio_with_scorer`` (everything counted).
    """
    for _ in range(warmup):
        _clock(real, before)
        _clock(bare, before)
    gc.collect()
    reals, bares, sides = [], [], []
    for i in range(max(repeats, 1)):
        if i % 2 == 0:
            r = _clock(real, before)
            s = side() if side else 0.0
            b = _clock(bare, before)
        else:
            b = _clock(bare, before)
            r = _clock(real, before)
            s = side() if side else 0.0
        reals.append(r)
        bares.append(b)
        sides.append(s)
    if before is not None:
        before()
    model = [r - s for r, s in zip(reals, sides, strict=True)]
    best = min(range(len(model)), key=model.__getitem__)
    out = {
        "real_s": min(reals),
        "bare_s": min(bares),
        "ratio": model[best] / min(bares),
        "ratio_median": statistics.median(m / b for m, b in zip(model, bares, strict=True)),
    }
    if side is not None:
        out["scorer_s"] = sides[best]
        out["ratio_with_scorer"] = min(reals) / min(bares)
    return out


class TimedReward:
    """A task reward that accumulates the seconds spent in it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.seconds = 0.0

    def __call__(self, *args: Any) -> Any:
        t0 = clock()
        try:
            return self.fn(*args)
        finally:
            self.seconds += clock() - t0


# --------------------------------------------------------------------------------------------
# the suite's objects, built as the trainer builds them
# --------------------------------------------------------------------------------------------
class Bench:
    """Stage-1 stand-ins for one profile in a temporary folder: base model, scorers, teachers."""

    def __init__(self, profile_name: str, root: Path) -> None:
        from opd.config import load_config

        self.root = root
        learned = {n: dict(LEARNED_SCORER_STEPS) for n in ("pick", "hps", "clip", "pref2")}
        self.profile = load_config(
            profile_name,
            overrides={
                "progress": False,
                "paths": {"results": str(root)},  # world/, scorers/, base/ below it
                "scorer_training": learned,
                # eager calls: the compile section compiles its own copy to compare with them
                "model": {"compile": False},
            },
        )
        self._build_stage1()

    def _build_stage1(self) -> None:
        from opd.models.tiny import TinyModelConfig, build_tiny_flow_model
        from opd.rewards.train_scorers import train_all_scorers
        from opd.training.pretrain import world_vocabulary
        from opd.worlds.mini import WorldConfig

        p = self.profile
        used = {name for spec in p["tasks"].values() for name in spec["reward"]}
        names = [n for n in ("clip", "pick", "hps", "pref2") if n in used]
        if names:
            train_all_scorers(
                p, seed=0, out_dir=p["paths"]["scorers"], threads=1, names=names, log=None
            )
        world = WorldConfig.from_dict(p["world"].get("params", {}))
        mcfg = TinyModelConfig(resolution=world.resolution, **p["model"].get("tiny", {}))
        model = build_tiny_flow_model(mcfg, world_vocabulary(world, []), seed=0)
        lora = p["model"]["lora"]
        self.teachers: dict[str, Path] = {}
        for i, task in enumerate(p["tasks"]):
            name = f"teacher_{task}"
            model.add_adapter(
                name, rank=int(lora["rank"]), alpha=float(lora["alpha"]), init="random", seed=i
            )
            self.teachers[task] = model.save_adapter(name, self.root / "teachers" / task)
            model.delete_adapter(name)
        model.save_pretrained(p["paths"]["base"])

    def method(self, run: str, *, method: str | None = None, **overrides: Any) -> tuple[Any, Any]:
        """A fresh context and method for profile run ``run`` (a method entry or
        ``teacher_<task>``), optionally as another registered ``method`` with the same
        section, with config ``overrides``; set up exactly as ``train_run`` does."""
        from opd.config import build_dataclass
        from opd.registry import METHODS
        from opd.training.base import keyed_seed
        from opd.training.compute import ComputeCounter
        from opd.training.context import build_context
        from opd.training.loop import resolve_method

        cls, cfg, section = resolve_method(self.profile, run)
        if method is not None:
            cls = METHODS.get(method)
            fields = {f.name for f in dataclasses.fields(cls.Config)}
            keep = {k: v for k, v in section.items() if k in fields}
            cfg = build_dataclass(cls.Config, keep, f"methods.{run}")
        cfg = dataclasses.replace(cfg, **overrides)
        cfg.validate()
        teachers = self.teachers if cls.needs_teachers else {}
        ctx = build_context(self.profile, 0, ComputeCounter(), teachers)
        torch.manual_seed(keyed_seed(0, run, "init"))
        m = cls(ctx, cfg)
        if cls.trainable is not None:
            lora = self.profile["model"]["lora"]
            ctx.model.add_adapter(
                STUDENT,
                rank=cfg.lora_rank or int(lora["rank"]),
                alpha=float(cfg.lora_alpha or lora["alpha"]),
            )
            ctx.model.set_trainable(STUDENT)
        m.setup()
        return ctx, m


def _cfg_factor(guidance: float) -> int:
    return 2 if guidance != 1.0 else 1


def expected_evals(m: Any, iterations: Sequence[int]) -> int:
    """Model evaluations that the mathematics of ``m.step`` requires (docs/mini_world.md)."""
    from opd.training.distill import DiffusionOPD
    from opd.training.rl import DiffusionNFT, FlowGRPO

    cfg, ctx = m.cfg, m.ctx
    total = 0
    for it in iterations:
        if isinstance(m, DiffusionOPD):
            n, g = cfg.prompts_per_task, _cfg_factor(m.guidance)
            for task in m.task_names:
                g_t = _cfg_factor(ctx.tasks[task].teacher_guidance)
                total += m.num_steps * n * g + m.train_steps * (n * g_t + 3 * n * g)
        elif isinstance(m, FlowGRPO):
            n, g = cfg.prompts_per_task * cfg.group_size, _cfg_factor(m.guidance)
            ref = n * g if cfg.beta > 0 else 0
            total += len(m.tasks_of(it)) * (m.num_steps * n * g + m.train_steps * (3 * n * g + ref))
        elif isinstance(m, DiffusionNFT):
            n = cfg.prompts_per_task * cfg.group_size
            per = m.num_steps * n * _cfg_factor(m.guidance)
            per += cfg.noisings * m.train_steps * 5 * n
            total += len(m.tasks_of(it)) * per
        else:
            raise TypeError(f"no formula for {type(m).__name__}")
    return total


def measure_step(
    bench: Bench,
    name: str,
    run: str,
    repeats: int,
    *,
    method: str | None = None,
    all_tasks: bool = False,
    warmup: int = 1,
    **overrides: Any,
) -> dict[str, Any]:
    """Time ``step()`` of a run (every task once when ``all_tasks``) against its bare calls."""
    ctx, m = bench.method(run, method=method, **overrides)
    iterations = [0]
    if all_tasks and hasattr(m, "tasks_of"):
        iterations = list(range(len(m.task_names)))
    rewards = {}
    for task in ctx.tasks.values():
        task.reward = rewards[task.name] = TimedReward(task.reward)
    params = [p for p in ctx.model.parameters() if p.requires_grad]

    def clear() -> None:
        for p in params:
            p.grad = None

    def real() -> None:  # as the shared loop runs a step: every model call counted
        with ctx.model.counting(ctx.compute):
            for it in iterations:
                m.step(it)

    clear()
    evals0, samples0 = ctx.compute.model_evals, ctx.compute.samples
    with record_calls(ctx.model) as calls:
        real()
    counted = ctx.compute.model_evals - evals0
    samples = ctx.compute.samples - samples0
    bare = bare_replay(ctx.model, calls)
    marks: list[float] = [0.0]

    def scorer_seconds() -> float:
        now = sum(r.seconds for r in rewards.values())
        spent, marks[0] = now - marks[0], now
        return spent

    def real_timed() -> None:
        scorer_seconds()  # reset the mark
        real()

    timing = paired(real_timed, bare, repeats, before=clear, side=scorer_seconds, warmup=warmup)
    steps = len(iterations)
    recorded = sum(c.evals for c in calls)
    expected = expected_evals(m, iterations)
    out = {
        "name": name,
        "method": type(m).__name__,
        "run": run,
        "tasks": len(m.task_names),
        "num_steps": m.num_steps,
        "train_steps": m.train_steps,
        "samples_per_step": samples / steps,
        "guidance": m.guidance,
        "optimizer_steps": steps,
        "seconds_per_step": timing["real_s"] / steps,
        "bare_seconds_per_step": timing["bare_s"] / steps,
        "scorer_seconds_per_step": timing["scorer_s"] / steps,
        "ratio": timing["ratio"],
        "ratio_median": timing["ratio_median"],
        "ratio_with_scorer": timing["ratio_with_scorer"],
        "transformer_calls": len(calls) / steps,
        "model_evals_per_step": recorded / steps,
        "calls_match": recorded == expected == counted,
    }
    return out


def measure_rollout(
    bench: Bench,
    sampler_name: str,
    batch: int,
    num_steps: int,
    guidance: float,
    repeats: int,
    cache: dict[str, Any],
    warmup: int = 1,
) -> dict[str, Any]:
    """Time ``opd.sampling.rollout`` with a registered sampler against its bare forwards."""
    from opd.sampling import make_sampler, rollout, time_grid

    if "ctx" not in cache:
        cache["ctx"], _ = bench.method("opd")
    ctx = cache["ctx"]
    model = ctx.model
    task = next(iter(ctx.tasks))
    prompts, _meta, _groups = ctx.sample_prompts(task, batch, 0)
    embeds = ctx.embed(prompts)
    shift = float(bench.profile["sampling"].get("shift", 3.0))
    grid = time_grid(num_steps, shift=shift)
    params: dict[str, Any] = {}
    if sampler_name == "flow_sde":
        params["noise_level"] = 0.7
    sampler = make_sampler(sampler_name, **params)

    def real() -> None:
        with torch.no_grad():
            rollout(
                model.velocity_fn(embeds, guidance_scale=guidance, adapter=STUDENT),
                model.state_shape,
                grid,
                sampler,
                1234,
                list(range(batch)),
            )

    with record_calls(model) as calls:
        real()
    timing = paired(real, bare_replay(model, calls), repeats, warmup=warmup)
    expected = num_steps * batch * _cfg_factor(guidance)
    return {
        "name": f"rollout/{sampler_name}" + ("" if guidance != 1.0 else "/no_cfg"),
        "sampler": sampler_name,
        "batch": batch,
        "num_steps": num_steps,
        "guidance": guidance,
        "seconds": timing["real_s"],
        "bare_seconds": timing["bare_s"],
        "ratio": timing["ratio"],
        "ratio_median": timing["ratio_median"],
        "transformer_calls": len(calls),
        "model_evals": sum(c.evals for c in calls),
        "calls_match": sum(c.evals for c in calls) == expected,
    }


# --------------------------------------------------------------------------------------------
# bf16
# --------------------------------------------------------------------------------------------
def _best_of(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    return min(_clock(fn, None) for _ in range(max(repeats, 1)))


def _versus(
    fn: Callable[[], Any],
    forms: dict[str, Callable[[], None]],
    repeats: int,
    *,
    warm_up: bool,
) -> dict[str, float]:
    """``fn`` timed under two forms (each set up by its callable), alternating for twice
    ``repeats`` pairs: each form's best seconds (``<form>_s``), the second's best over the
    first's (``ratio``) and the median of the per-pair ratios (``ratio_median``)."""
    (a, set_a), (b, set_b) = forms.items()
    if warm_up:
        for setup in (set_a, set_b):
            setup()
            fn()
    times: dict[str, list[float]] = {a: [], b: []}
    for _ in range(max(2 * repeats, 2)):
        for name, setup in ((a, set_a), (b, set_b)):
            setup()
            times[name].append(_clock(fn, None))
    pairs = [y / x for x, y in zip(times[a], times[b], strict=True)]
    return {
        f"{a}_s": min(times[a]),
        f"{b}_s": min(times[b]),
        "ratio": min(times[b]) / min(times[a]),
        "ratio_median": statistics.median(pairs),
    }


def _student_call(
    bench: Bench, batch: int
) -> tuple[Any, float, Callable[[bool, bool], Callable[[], torch.Tensor]]]:
    """The OPD context's model, its CFG scale and ``call(grad, autocast, adapter)``: a function
    making one bare student call (CFG batch of ``batch`` prompts; ``grad``: + backward of the
    sum; ``autocast``: under bf16 autocast; ``adapter``: another adapter active instead) that
    returns the detached velocity."""
    ctx, _m = bench.method("opd")
    model = ctx.model
    task = next(iter(ctx.tasks))
    prompts, _meta, _groups = ctx.sample_prompts(task, batch, 0)
    embeds = ctx.embed(prompts)
    x = torch.randn(model.latent_shape(batch), generator=torch.Generator().manual_seed(0))
    g = float(bench.profile["sampling"]["guidance"])

    def call(
        grad: bool, autocast: bool = False, adapter: str = STUDENT
    ) -> Callable[[], torch.Tensor]:
        def fn() -> torch.Tensor:
            with (
                torch.set_grad_enabled(grad),
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast),
            ):
                v = model.velocity(x, 0.5, embeds, guidance_scale=g, adapter=adapter)
                if grad:
                    v.float().sum().backward()
            return v.detach()

        return fn

    return model, g, call


def measure_bf16(bench: Bench, batch: int, repeats: int) -> dict[str, Any]:
    """Bare student call (forward + backward, CFG batch) in float32 and under bf16 autocast."""
    _model, g, call = _student_call(bench, batch)

    out: dict[str, Any] = {"batch": batch, "guidance": g}
    for label, grad in (("forward", False), ("forward_backward", True)):
        fp32 = _best_of(call(grad, False), repeats)
        bf16 = _best_of(call(grad, True), repeats)
        out[label] = {"fp32_s": fp32, "bf16_s": bf16, "speedup": fp32 / bf16}
    for n, reps in ((64, 200), (1024, 1)):  # bf16 at 1024 may take seconds where emulated
        a, b = torch.randn(n, n), torch.randn(n, n)
        a16, b16 = a.bfloat16(), b.bfloat16()
        fp32 = _best_of(lambda: [a @ b for _ in range(reps)], 2) / reps  # noqa: B023
        bf16 = _best_of(lambda: [a16 @ b16 for _ in range(reps)], 1) / reps  # noqa: B023
        out[f"matmul_{n}"] = {"fp32_s": fp32, "bf16_s": bf16, "speedup": fp32 / bf16}
    return out


# --------------------------------------------------------------------------------------------
# feed-forward GELU: tanh (SD3's) against exact
# --------------------------------------------------------------------------------------------
def measure_gelu(bench: Bench, batch: int, repeats: int) -> dict[str, Any]:
    """Bare student call (forward; forward + backward, CFG batch) with the transformer's
    feed-forward GELU in SD3's tanh form and in the exact (erf) form (``model.tiny.ff_gelu``),
    same weights, alternating; and the largest change of the velocity, relative to its scale."""
    from opd.models.base import set_ff_gelu

    model, g, call = _student_call(bench, batch)
    mcfg = bench.profile["model"]  # the form the profile runs the model in (load_base_model's)
    profile_form = mcfg.get("ff_gelu") or mcfg.get("tiny", {}).get("ff_gelu", "tanh")
    out: dict[str, Any] = {"batch": batch, "guidance": g}
    try:
        forms = {m: (lambda m=m: set_ff_gelu(model.transformer, m)) for m in ("tanh", "exact")}
        for label, grad in (("forward", False), ("forward_backward", True)):
            out[label] = _versus(call(grad), forms, repeats, warm_up=True)
        set_ff_gelu(model.transformer, "tanh")
        v_tanh = call(False)()
        set_ff_gelu(model.transformer, "exact")
        v_exact = call(False)()
        out["max_abs_change_over_std"] = float((v_exact - v_tanh).abs().max() / v_tanh.std())
    finally:
        set_ff_gelu(model.transformer, profile_form)
    out["profile_form"] = profile_form
    return out


# --------------------------------------------------------------------------------------------
# the transformer through torch.compile
# --------------------------------------------------------------------------------------------
def measure_compile(bench: Bench, batch: int, repeats: int) -> dict[str, Any]:
    """Bare student call (forward; forward + backward, CFG batch) eager and with the whole
    transformer through ``torch.compile`` (inductor), same weights, alternating after a warm-up;
    the seconds of each first compiled call (compilation: the student forward, the same forward
    with the base active, which recompiles, then forward + backward); and how far each velocity
    lies from the same call in float64 (a copy of the transformer), relative to its scale, so
    that the compiled call's rounding is judged against eager float32's own. The eager module is
    restored afterwards."""
    import copy

    model, g, call = _student_call(bench, batch)
    eager = model.transformer
    v_eager = call(False)()
    with model.use_adapter(STUDENT):  # the copy keeps the student active; no switch below
        model.transformer = copy.deepcopy(eager).double()
        try:
            v_exact = call(False)()
        finally:
            model.transformer = eager
    scale = v_exact.std()
    compiled = torch.compile(eager)
    out: dict[str, Any] = {"batch": batch, "guidance": g, "compile_s": {}}
    try:
        model.transformer = compiled
        for label, first in (
            ("forward", call(False)),
            ("forward_other_adapter", call(False, adapter="base")),
            ("forward_backward", call(True)),
        ):
            t0 = time.perf_counter()
            first()
            out["compile_s"][label] = time.perf_counter() - t0
        v_compiled = call(False)()
        out["max_abs_change_over_std"] = float((v_compiled - v_eager).abs().max() / scale)
        out["eager_error_over_std"] = float((v_eager - v_exact).abs().max() / scale)
        out["compiled_error_over_std"] = float((v_compiled - v_exact).abs().max() / scale)
        modules = {"eager": eager, "compiled": compiled}
        forms = {k: (lambda k=k: setattr(model, "transformer", modules[k])) for k in modules}
        for label, grad in (("forward", False), ("forward_backward", True)):
            out[label] = _versus(call(grad), forms, repeats, warm_up=False)
    finally:
        model.transformer = eager
    return out


# --------------------------------------------------------------------------------------------
# the whole benchmark
# --------------------------------------------------------------------------------------------
SECTIONS = ("rollout", "steps", "comparison", "scaling", "bf16", "gelu", "compile")
#: What runs without ``--sections``: compiling costs a minute, so it runs only when asked.
DEFAULT_SECTIONS = SECTIONS[:-1]


def run_benchmark(
    profile: str,
    repeats: int,
    quick: bool,
    log: Callable[[str], None],
    sections: Sequence[str] = DEFAULT_SECTIONS,
) -> dict[str, Any]:
    """The measurements of the module docstring (``sections`` of them); JSON-ready results."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="step_cost_") as tmp:
        bench = Bench(profile, Path(tmp))
        p = bench.profile
        log(f"[step_cost] stage-1 stand-ins built in {time.perf_counter() - t_start:.1f}s")
        tasks = list(p["tasks"])
        n_steps = int(p["sampling"]["num_steps"])
        guidance = float(p["sampling"]["guidance"])
        rl_cfg = p["methods"]["multitask_grpo_guard"]
        group = int(rl_cfg["group_size"])
        rl_batch = int(rl_cfg["prompts_per_task"]) * group
        per_task = int(p["methods"]["opd"]["prompts_per_task"])
        cache: dict[str, Any] = {}
        mt = "multitask_grpo_guard"

        gated = 2 * repeats  # the cases under the bar get twice the pairs
        if "rollout" in sections:
            res["rollout"] = [
                measure_rollout(bench, name, rl_batch, n_steps, guidance, gated, cache)
                for name in ("ode", "flow_sde", "dance_sde", "dpm2m")
            ]
            res["rollout"].append(
                measure_rollout(bench, "dpm2m", rl_batch, n_steps, 1.0, gated, cache)
            )
            for r in res["rollout"]:
                log(f"  {r['name']:<24} {r['ratio']:.3f}x")

        if "steps" in sections:
            res["steps"] = [
                measure_step(bench, "opd", "opd", gated),
                measure_step(bench, "grpo", "teacher_text", repeats, method="grpo"),
                measure_step(bench, "grpo_guard", "teacher_text", repeats),
                measure_step(bench, "nft", "teacher_composition", repeats),
                measure_step(bench, mt, mt, repeats, all_tasks=True),
            ]
            for s in res["steps"]:
                log(f"  step/{s['name']:<19} {s['ratio']:.3f}x")

        if "comparison" in sections:  # the same rollout samples per optimizer step
            total = per_task * len(tasks)
            same = {"prompts_per_task": max(total // group, 1), "group_size": group}
            steps = {r["name"]: r for r in res.get("steps", [])}
            rows = [
                dict(steps["opd"]) if "opd" in steps else measure_step(bench, "opd", "opd", gated),
                measure_step(bench, mt, mt, repeats, all_tasks=True, **same),
                measure_step(bench, "grpo_guard_teacher", "teacher_text", repeats, **same),
            ]
            for row in rows:
                row["relative_to_opd"] = row["seconds_per_step"] / rows[0]["seconds_per_step"]
                row["evals_relative_to_opd"] = (
                    row["model_evals_per_step"] / rows[0]["model_evals_per_step"]
                )
            res["comparison"] = {"samples_per_step": total, "rows": rows}
            parts = [f"{r['name']} {r['relative_to_opd']:.2f}" for r in rows]
            log("  seconds per step relative to opd: " + ", ".join(parts))

        if "scaling" in sections:  # two pairs per point, no warm-up (the recorded run warms)
            k, w = (1, 0) if quick else (2, 0)
            step_points = [2, 3] if quick else [4, 8, 12]
            batch_points = [2, 4] if quick else [4, 8, 16]  # samples per task batch
            scaling: dict[str, list[dict[str, Any]]] = {"tasks": [], "num_steps": [], "batch": []}
            for n in range(1, len(tasks) + 1):
                sub = tasks[:n]
                scaling["tasks"] += [
                    measure_step(bench, "opd", "opd", k, warmup=w, tasks=sub) | {"point": n},
                    measure_step(bench, mt, mt, k, all_tasks=True, warmup=w, tasks=sub)
                    | {"point": n},
                ]
            for ns in step_points:
                scaling["num_steps"] += [
                    measure_rollout(bench, "ode", rl_batch, ns, guidance, k, cache, w)
                    | {"point": ns},
                    measure_step(bench, "opd", "opd", k, warmup=w, num_steps=ns) | {"point": ns},
                    measure_step(bench, mt, mt, k, warmup=w, num_steps=ns) | {"point": ns},
                ]
            for b in batch_points:
                rl = {"prompts_per_task": max(b // group, 1), "group_size": min(group, b)}
                scaling["batch"] += [
                    measure_rollout(bench, "ode", b, n_steps, guidance, k, cache, w) | {"point": b},
                    measure_step(bench, "opd", "opd", k, warmup=w, prompts_per_task=b)
                    | {"point": b},
                    measure_step(bench, mt, mt, k, warmup=w, **rl) | {"point": b},
                ]
            res["scaling"] = scaling
            log("  scaling done")

        if "bf16" in sections:
            res["bf16"] = measure_bf16(bench, rl_batch, repeats)
        if "gelu" in sections:
            res["gelu"] = measure_gelu(bench, rl_batch, repeats)
        if "compile" in sections:
            res["compile"] = measure_compile(bench, rl_batch, repeats)
        cache.clear()

    under_bar = [*res.get("rollout", [])]
    under_bar += [s for s in res.get("steps", []) if s["name"] == "opd"]
    if "comparison" in res:
        under_bar.append(res["comparison"]["rows"][0])
    worst = max((r["ratio"] for r in under_bar), default=None)  # None: no section measures it
    command = "python benchmarks/step_cost.py" + (" --quick" if quick else "")
    if profile != ("smoke" if quick else "mini"):
        command += f" --profile {profile}"
    if repeats != (1 if quick else DEFAULT_REPEATS):
        command += f" --repeats {repeats}"
    if tuple(sections) != DEFAULT_SECTIONS:
        command += " --sections " + ",".join(sections)
    meta = {
        "profile": profile,
        "world_version": p.get("world", {}).get("version"),
        "quick": quick,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(time.perf_counter() - t_start, 1),
        "command": command,
        "model": p["model"],
        "num_steps": n_steps,
        "guidance": guidance,
    }
    acceptance = {
        "bar": BAR,
        "what": "rollouts and the OPD step: best real / best bare seconds",
        "profile": profile,
        "max_ratio": worst,
        "passed": None if worst is None else bool(worst <= BAR),
    }
    return {"meta": meta, "acceptance": acceptance, **res}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_table(res: dict[str, Any]) -> str:
    """The results as plain-text tables."""
    lines = [f"step cost, profile {res['meta']['profile']} ({res['meta']['command']})"]
    head = (
        f"{'case':<26}{'seconds':>9}{'bare':>9}{'scorer':>9}{'ratio':>8}{'median':>8}{'+scorer':>9}"
    )
    if "rollout" in res or "steps" in res:
        lines += ["", head]
    for r in res.get("rollout", []):
        lines.append(
            f"{r['name']:<26}{r['seconds']:>9.4f}{r['bare_seconds']:>9.4f}{'':>9}"
            f"{r['ratio']:>8.3f}{r['ratio_median']:>8.3f}"
        )
    for r in res.get("steps", []):
        lines.append(
            f"{'step/' + r['name']:<26}{r['seconds_per_step']:>9.4f}"
            f"{r['bare_seconds_per_step']:>9.4f}{r['scorer_seconds_per_step']:>9.4f}"
            f"{r['ratio']:>8.3f}{r['ratio_median']:>8.3f}{r['ratio_with_scorer']:>9.3f}"
        )
    acc = res["acceptance"]
    verdict = (
        "not measured (run the rollout, steps or comparison section)"
        if acc["passed"] is None
        else f"max ratio {acc['max_ratio']:.3f}, bar {acc['bar']}: "
        + ("passed" if acc["passed"] else "FAILED")
    )
    lines.append(f"acceptance (rollouts, opd step, {acc['profile']} profile): {verdict}")
    if "comparison" in res:
        cmp_ = res["comparison"]
        lines += ["", f"per optimizer step at {cmp_['samples_per_step']} rollout samples:"]
        lines.append(f"{'method':<26}{'seconds':>9}{'evals':>8}{'scorer':>9}{'vs opd':>8}")
        for r in cmp_["rows"]:
            lines.append(
                f"{r['name']:<26}{r['seconds_per_step']:>9.4f}{r['model_evals_per_step']:>8.0f}"
                f"{r['scorer_seconds_per_step']:>9.4f}{r['relative_to_opd']:>8.2f}"
            )
    for axis, rows in res.get("scaling", {}).items():
        lines += ["", f"scaling with {axis}: {'point':>10}{'seconds':>9}{'evals':>8}{'ratio':>8}"]
        for r in rows:
            secs = r.get("seconds_per_step", r.get("seconds"))
            evals = r.get("model_evals_per_step", r.get("model_evals"))
            lines.append(
                f"  {r['name']:<24}{r['point']:>6}{secs:>9.4f}{evals:>8.0f}{r['ratio']:>8.3f}"
            )
    if "bf16" in res:
        bf = res["bf16"]
        lines += ["", f"bf16 autocast / float32 speed-up (student call, batch {bf['batch']}):"]
        for k in ("forward", "forward_backward", "matmul_64", "matmul_1024"):
            lines.append(
                f"  {k:<20}{bf[k]['fp32_s'] * 1e3:>10.3f} ms{bf[k]['bf16_s'] * 1e3:>10.3f} ms"
                f"{bf[k]['speedup']:>8.2f}x"
            )
    if "gelu" in res:
        ge = res["gelu"]
        lines += [
            "",
            f"feed-forward GELU, exact / tanh (student call, batch {ge['batch']}; velocity change"
            f" at most {ge['max_abs_change_over_std']:.1e} of its std):",
        ]
        for k in ("forward", "forward_backward"):
            lines.append(
                f"  {k:<20}{ge[k]['tanh_s'] * 1e3:>10.3f} ms{ge[k]['exact_s'] * 1e3:>10.3f} ms"
                f"{ge[k]['ratio']:>8.2f}x (median pair {ge[k]['ratio_median']:.2f}x)"
            )
    if "compile" in res:
        co = res["compile"]
        first = ", ".join(f"{k} {v:.1f} s" for k, v in co["compile_s"].items())
        lines += [
            "",
            f"torch.compile / eager (student call, batch {co['batch']}; velocity change at most"
            f" {co['max_abs_change_over_std']:.1e} of its std, error against float64"
            f" {co['compiled_error_over_std']:.1e} compiled, {co['eager_error_over_std']:.1e}"
            f" eager; first calls: {first}):",
        ]
        for k in ("forward", "forward_backward"):
            lines.append(
                f"  {k:<20}{co[k]['eager_s'] * 1e3:>10.3f} ms{co[k]['compiled_s'] * 1e3:>10.3f} ms"
                f"{co[k]['ratio']:>8.2f}x (median pair {co[k]['ratio_median']:.2f}x)"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="config profile (default: mini)")
    parser.add_argument("--repeats", type=int, default=None, help="timed pairs per case")
    parser.add_argument("--quick", action="store_true", help="smoke profile, one repeat")
    parser.add_argument(
        "--sections",
        default=",".join(DEFAULT_SECTIONS),
        help=f"comma list of {', '.join(SECTIONS)}",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    profile = args.profile or ("smoke" if args.quick else "mini")
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else DEFAULT_REPEATS)
    res = run_benchmark(
        profile, repeats, args.quick, log=lambda s: print(s, file=sys.stderr), sections=sections
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
