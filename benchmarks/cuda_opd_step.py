"""Benchmark of the paper profile's DiffusionOPD step: time, FLOPs, fraction of the card's peak.

Usage (a CUDA GPU; writes JSON and prints a table)::

    python benchmarks/cuda_opd_step.py --out benchmarks/results/cuda_opd_step_h100.json
    python benchmarks/cuda_opd_step.py --tiny --out /tmp/tiny.json   # CPU, seconds (the test)

What is measured: one optimizer step's worth of the suite's own ``opd`` method
(`opd.training.distill.DiffusionOPD.step`, driven through `FlowModel`, `opd.sampling` and
`opd.objectives`) on one GPU's share of the paper's batch: for each of the three tasks, 3 prompts
(the paper: 3 prompts per GPU x 8 GPUs x 3 tasks), a 10-step student rollout with CFG 4.5 under
no_grad, the task's teacher (a named LoRA adapter on the shared backbone; CFG 1.0 for the
composition teacher, 4.5 for text and aesthetics) at the student's states, and a student forward +
backward with CFG 4.5 on each of the first 9 steps. The backbone is an SD3.5-Medium-shaped
``SD3Transformer2DModel`` with random weights in bf16 (no hub access), with LoRA r 32 / alpha 64
on the joint attention's projections for the student and for each teacher. There are no text
encoders and no VAE: prompt embeddings are random tensors of SD3's shapes (77 CLIP + 128 T5
tokens x 4096, the paper profile's T5 length; pooled 2048), and the states are the 16 x 64 x 64
latents of a 512 px image (the OPD step never decodes).

Three timings, each the median of ``--repeats`` after ``--warmup`` (CUDA events on a GPU,
``time.perf_counter`` on the CPU): (a) ``bare``: exactly the transformer calls the step needs
(same batches, adapters and grad modes, called on the transformer directly with ready tensors,
a minimal loss), the floor for the suite's code; (b) ``suite``: ``DiffusionOPD.step``; (c)
``update``: gradient clipping and the AdamW step of the shared loop. The ratio (b)/(a) is the
suite's overhead. FLOPs are counted analytically from the model config (`forward_flops`,
`backward_flops`: 2 x MACs of every linear / convolution / attention matmul, LoRA included; the
backward of a LoRA-trained model with a frozen backbone computes input gradients for the frozen
layers and weight gradients for the LoRA factors only), and checked against
``torch.utils.flop_counter.FlopCounterMode`` (fused attention kernels recompute the score matrix in
their backward, which FlopCounterMode counts and the model FLOPs do not).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))

from opd.models.base import FlowModel  # noqa: E402
from opd.models.prompts import PromptEmbeds, PromptEncoder  # noqa: E402
from opd.training.base import RunContext, TaskData  # noqa: E402
from opd.training.compute import ComputeCounter  # noqa: E402
from opd.training.distill import DiffusionOPD, OPDConfig  # noqa: E402

#: SD3.5-Medium's transformer (its hub config), ``sample_size`` set from the resolution.
SD35_MEDIUM = {
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
#: An 81k-parameter model of the same structure (dual attention, qk norm, last block
#: context-pre-only) for the CPU test.
TINY = {
    **SD35_MEDIUM,
    "in_channels": 4,
    "out_channels": 4,
    "num_layers": 3,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "caption_projection_dim": 16,
    "pooled_projection_dim": 24,
    "pos_embed_max_size": 16,
    "dual_attention_layers": (0,),
}
VAE_FACTOR = 8  # SD3's VAE: 512 px -> 64 x 64 latents
TIME_PROJ = 256  # SD3's sinusoidal timestep features
#: The paper profile's tasks and their teachers' CFG (config/profiles/paper.yaml).
PAPER_TASKS = {"composition": 1.0, "text": 4.5, "aesthetics": 4.5}
#: Dense bf16 tensor-core peaks (vendor datasheets, TFLOP/s), matched on the device name in order.
BF16_PEAKS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.4),  # SXM: the H100's core
    ("GH200", 989.4),
    ("A100", 312.0),
)


# --------------------------------------------------------------------------------------------
# analytic FLOPs
# --------------------------------------------------------------------------------------------
def _mm(rows: int, k: int, n: int) -> int:
    return 2 * rows * k * n


@dataclasses.dataclass(frozen=True)
class Shape:
    """One transformer call: ``batch`` rows, ``side`` x ``side`` latents, ``text`` tokens."""

    batch: int
    side: int
    text: int


def _dims(cfg: dict[str, Any], shape: Shape) -> tuple[int, int, int, int]:
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    if cfg["caption_projection_dim"] != d:
        raise ValueError("SD3 needs caption_projection_dim == heads x head dim")
    n = (shape.side // cfg["patch_size"]) ** 2
    return d, n, shape.text, n + shape.text


def forward_flops(cfg: dict[str, Any], shape: Shape, rank: int) -> int:
    """Matmul FLOPs of one ``SD3Transformer2DModel`` forward with one LoRA adapter of ``rank``
    active on the joint attention's projections (0: none)."""
    d, n, t, s = _dims(cfg, shape)
    b, p, layers = shape.batch, cfg["patch_size"], cfg["num_layers"]
    total = 2 * b * n * cfg["in_channels"] * p * p * d  # patch embedding (a strided conv)
    total += _mm(b, TIME_PROJ, d) + _mm(b, d, d)  # timestep MLP
    total += _mm(b, cfg["pooled_projection_dim"], d) + _mm(b, d, d)  # pooled-text MLP
    total += _mm(b * t, cfg["joint_attention_dim"], d)  # context embedder
    for i in range(layers):
        last, dual = i == layers - 1, i in cfg["dual_attention_layers"]
        total += _mm(b, d, (9 if dual else 6) * d) + _mm(b, d, (2 if last else 6) * d)  # AdaLN
        rows = 4 * b * n + (3 if last else 4) * b * t  # q, k, v, out (+ add_q/k/v, to_add_out)
        total += rows * (_mm(1, d, d) + (_mm(1, d, rank) + _mm(1, rank, d)))
        total += 4 * b * s * s * d  # joint attention: scores and values
        if dual:  # SD3.5's image-only second attention (not adapted)
            total += 4 * _mm(b * n, d, d) + 4 * b * n * n * d
        total += 2 * _mm(b * n, d, 4 * d) + (0 if last else 2 * _mm(b * t, d, 4 * d))  # MLPs
    total += _mm(b, d, 2 * d) + _mm(b * n, d, p * p * cfg["out_channels"])  # output
    return total


def backward_flops(cfg: dict[str, Any], shape: Shape, rank: int, recompute: bool = False) -> int:
    """Matmul FLOPs of the backward of `forward_flops`' call when only the active LoRA adapter
    is trained: input gradients of the frozen layers downstream of the first adapter, weight and
    input gradients of the LoRA factors (block 0's inputs need none), 4 attention matmuls (5 with
    ``recompute``: the fused kernels' score recomputation). AdaLN and embedding layers read only
    inputs that need no gradient."""
    d, n, t, s = _dims(cfg, shape)
    b, p, layers = shape.batch, cfg["patch_size"], cfg["num_layers"]
    lora = _mm(1, d, rank) + _mm(1, rank, d)  # per row, one factor pair
    attn = (10 if recompute else 8) * b  # x s^2 d
    total = _mm(b * n, d, p * p * cfg["out_channels"])  # proj_out's input gradient
    for i in range(layers):
        last, dual = i == layers - 1, i in cfg["dual_attention_layers"]
        qkv = 3 * b * n + 3 * b * t
        out = b * n + (0 if last else b * t)
        if i == 0:  # the block's inputs need no gradient: A gets a weight gradient, B both
            total += qkv * (_mm(1, d, rank) + 2 * _mm(1, rank, d))
        else:
            total += qkv * (_mm(1, d, d) + 2 * lora)
        total += out * (_mm(1, d, d) + 2 * lora)
        total += attn * s * s * d
        if dual and i > 0:
            total += 4 * _mm(b * n, d, d) + attn * n * n * d
        total += 2 * _mm(b * n, d, 4 * d) + (0 if last else 2 * _mm(b * t, d, 4 * d))
    return total


@dataclasses.dataclass(frozen=True)
class Call:
    """A group of identical transformer calls of the step."""

    what: str
    count: int
    shape: Shape
    grad: bool
    adapter: str


def step_calls(tasks: dict[str, float], args: argparse.Namespace, side: int) -> list[Call]:
    """The transformer calls of one OPD step (per task: rollout, teacher, student training)."""

    def shape(guidance: float) -> Shape:  # CFG batches the unconditional rows with the prompts
        return Shape(args.batch * (2 if guidance != 1.0 else 1), side, args.text_tokens)

    calls = []
    for task, g_t in tasks.items():
        student, teacher = shape(args.guidance), shape(g_t)
        calls += [
            Call(f"{task}: rollout", args.steps, student, False, "student"),
            Call(f"{task}: teacher", args.train_steps, teacher, False, f"teacher_{task}"),
            Call(f"{task}: student", args.train_steps, student, True, "student"),
        ]
    return calls


def step_flops(
    cfg: dict[str, Any], calls: list[Call], rank: int, recompute: bool = False
) -> dict[str, int]:
    fwd = sum(c.count * forward_flops(cfg, c.shape, rank) for c in calls)
    bwd = sum(c.count * backward_flops(cfg, c.shape, rank, recompute) for c in calls if c.grad)
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd}


# --------------------------------------------------------------------------------------------
# the model, the run context and the two passes
# --------------------------------------------------------------------------------------------
class RandomPromptEncoder(PromptEncoder):
    """SD3-shaped random prompt embeddings, a fixed draw per prompt (no text encoders)."""

    def __init__(self, tokens: int, width: int, pooled: int, device: torch.device) -> None:
        super().__init__()
        self.tokens, self.width, self.pooled, self.device = tokens, width, pooled, device

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        hidden, pooled = [], []
        for prompt in prompts:
            g = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
            hidden.append(torch.randn(self.tokens, self.width, generator=g))
            pooled.append(torch.randn(self.pooled, generator=g))
        return PromptEmbeds(
            torch.stack(hidden).to(self.device), torch.stack(pooled).to(self.device)
        )


def build(args: argparse.Namespace, cfg: dict[str, Any], tasks: dict[str, float]) -> Any:
    """The suite's objects around a random backbone: FlowModel, RunContext, DiffusionOPD, AdamW."""
    import diffusers
    from diffusers import SD3Transformer2DModel

    diffusers.utils.logging.set_verbosity_error()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    side = args.resolution // VAE_FACTOR
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device: 2.2 B parameters in seconds
        transformer = SD3Transformer2DModel(sample_size=side, **cfg).to(dtype)
    encoder = RandomPromptEncoder(
        args.text_tokens, cfg["joint_attention_dim"], cfg["pooled_projection_dim"], device
    )
    # The states are latents; "pixel" only tells FlowModel there is no VAE to decode with, which
    # the OPD step never does (its states are (C, side, side) with C the latent channels).
    model = FlowModel(
        transformer, encoder, kind="pixel", resolution=side, channels=cfg["in_channels"]
    )
    model.add_adapter("student", rank=args.rank, alpha=args.alpha)
    model.set_trainable("student")
    teachers = {}
    for k, task in enumerate(tasks):
        teachers[task] = f"teacher_{task}"
        model.add_adapter(teachers[task], rank=args.rank, alpha=args.alpha, init="random", seed=k)
    prompts = {task: [f"{task} prompt {i}" for i in range(2 * args.batch)] for task in tasks}
    ctx = RunContext(
        model=model,
        profile={"sampling": {"num_steps": args.steps, "guidance": args.guidance, "shift": 3.0}},
        seed=0,
        tasks={
            task: TaskData(task, prompts[task], [{}] * len(prompts[task]), _no_reward, g)
            for task, g in tasks.items()
        },
        compute=ComputeCounter(),
        teachers=teachers,
        device=device,
    )
    for task in tasks:  # fill the prompt-embedding cache (the real text encoders are frozen too)
        ctx.embed(prompts[task])
    ocfg = OPDConfig(prompts_per_task=args.batch, train_steps=args.train_steps)
    ocfg.validate()
    method = DiffusionOPD(ctx, ocfg)
    method.setup()
    params = model.adapter_parameters("student")
    opt = torch.optim.AdamW(params, lr=3e-4, weight_decay=1e-4)
    return model, ctx, method, opt, params


def _no_reward(images: Any, prompts: list[str], metadata: list[dict]) -> Any:
    raise AssertionError("the OPD step uses no reward")


def bare_pass(model: FlowModel, calls: list[Call]) -> Callable[[], None]:
    """Exactly the step's transformer calls on ready tensors: the floor for the suite's code."""
    tr, dtype, device = model.transformer, model.dtype, model.device
    cfg = tr.config

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device).to(dtype)

    inputs = {}
    for sh in dict.fromkeys(c.shape for c in calls):
        inputs[sh] = {
            "hidden_states": rand(sh.batch, cfg.in_channels, sh.side, sh.side),
            "encoder_hidden_states": rand(sh.batch, sh.text, cfg.joint_attention_dim),
            "pooled_projections": rand(sh.batch, cfg.pooled_projection_dim),
            "timestep": torch.full((sh.batch,), 500.0, device=device, dtype=dtype),
        }

    def run() -> None:
        for c in calls:
            with model.use_adapter(c.adapter):
                for _ in range(c.count):
                    if c.grad:
                        out = tr(**inputs[c.shape], return_dict=False)[0]
                        out.float().square().mean().backward()
                    else:
                        with torch.no_grad():
                            tr(**inputs[c.shape], return_dict=False)

    return run


# --------------------------------------------------------------------------------------------
# timing and counting
# --------------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any], warmup: int, repeats: int, cuda: bool) -> list[float]:
    """Milliseconds of each of ``repeats`` calls after ``warmup`` (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(float(start.elapsed_time(end)))
        else:
            t0 = time.perf_counter()
            fn()
            out.append(1000.0 * (time.perf_counter() - t0))
    return out


def counted_flops(fn: Callable[[], Any], math_attention: bool) -> int:
    """FLOPs of ``fn`` as ``FlopCounterMode`` counts them (matmuls, convolutions, attention)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    if math_attention:  # the CPU's fused attention kernel has no FLOP formula: use the matmuls
        with sdpa_kernel(SDPBackend.MATH), counter:
            fn()
    else:
        with counter:
            fn()
    return int(counter.get_total_flops())


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int = 8192) -> float:
    """TFLOP/s of an n^3 matrix product on random data (median of 10 after 3 warm-ups)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = timed(lambda: a @ b, 3, 10, cuda=True)
    return 2 * n**3 / (statistics.median(ms) * 1e-3) / 1e12


def peak_tflops(name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    for key, value in BF16_PEAKS:
        if key in name:
            return value, f"datasheet dense bf16 for '{key}'"
    return None, "unknown device: pass --peak-tflops"


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=None, help="prompts per task (paper: 3 per GPU)")
    ap.add_argument("--tasks", type=int, default=3, help="tasks per step, round-robin (1-3)")
    ap.add_argument("--resolution", type=int, default=None, help="image side in pixels (512)")
    ap.add_argument("--steps", type=int, default=None, help="rollout steps (10)")
    ap.add_argument("--train-steps", type=int, default=None, help="trained steps (steps - 1)")
    ap.add_argument("--guidance", type=float, default=4.5, help="student CFG")
    ap.add_argument("--text-tokens", type=int, default=None, help="77 CLIP + T5 tokens (205)")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=64.0)
    ap.add_argument("--dtype", default=None, help="bfloat16 (float32 with --tiny)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak")
    ap.add_argument("--no-count", action="store_true", help="skip the FlopCounterMode passes")
    ap.add_argument("--tiny", action="store_true", help="a tiny model that runs on a CPU")
    ap.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = ap.parse_args(argv)
    # --tiny: float32, since a CPU's bf16 matmuls are slow
    tiny = dict(
        batch=2, resolution=64, steps=4, text_tokens=12, warmup=1, repeats=2, dtype="float32"
    )
    paper = dict(
        batch=3, resolution=512, steps=10, text_tokens=205, warmup=2, repeats=5, dtype="bfloat16"
    )
    for key, value in (tiny if args.tiny else paper).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.tiny:
        args.rank = min(args.rank, 4)
    args.train_steps = args.train_steps or max(args.steps - 1, 1)
    if not 1 <= args.tasks <= len(PAPER_TASKS):
        ap.error(f"--tasks must be 1..{len(PAPER_TASKS)}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    import diffusers
    import peft

    cfg = dict(TINY if args.tiny else SD35_MEDIUM)
    tasks = dict(list(PAPER_TASKS.items())[: args.tasks])
    side = args.resolution // VAE_FACTOR
    cuda = torch.device(args.device).type == "cuda"
    name = torch.cuda.get_device_name() if cuda else "cpu"
    model, ctx, method, opt, params = build(args, cfg, tasks)
    calls = step_calls(tasks, args, side)
    bare = bare_pass(model, calls)
    state: dict[str, Any] = {"it": 0, "logs": {}}

    def suite() -> None:  # one optimizer step's gradients, as the shared loop calls it
        opt.zero_grad(set_to_none=True)
        with model.counting(ctx.compute):
            state["logs"] = method.step(state["it"])
        state["it"] += 1

    def floor() -> None:
        opt.zero_grad(set_to_none=True)
        bare()

    def update() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    w, r = args.warmup, args.repeats
    ceiling = matmul_ceiling(model.device, model.dtype) if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    evals0 = ctx.compute.model_evals
    suite_ms = timed(suite, w, r, cuda)
    evals_per_step = (ctx.compute.model_evals - evals0) // (w + r)
    update_ms = timed(update, 1, r, cuda)
    bare_ms = timed(floor, w, r, cuda)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    losses = {k: float(v) for k, v in state["logs"].items()}

    model_flops = step_flops(cfg, calls, args.rank)
    recompute_flops = step_flops(cfg, calls, args.rank, recompute=True)
    counted: dict[str, Any] = {}
    if not args.no_count:  # one more pass of each under the counter (not timed)
        # math attention is plain matmuls; the fused kernels' backward recomputes the scores
        expected = model_flops if not cuda else recompute_flops
        counted = {
            "bare": counted_flops(floor, math_attention=not cuda),
            "suite": counted_flops(suite, math_attention=not cuda),
            "attention": "math (matmuls)" if not cuda else "native SDPA kernel",
            "expected": expected["total"],
        }
        counted["matches"] = counted["bare"] == counted["suite"] == expected["total"]
    med = {k: statistics.median(v) for k, v in (("bare", bare_ms), ("suite", suite_ms))}
    med["update"] = statistics.median(update_ms)
    peak, peak_src = peak_tflops(name, args.peak_tflops) if cuda else (None, "cpu")

    def rate(ms: float) -> float:
        return model_flops["total"] / (ms * 1e-3) / 1e12

    throughput = {
        "suite_tflops": rate(med["suite"]),
        "bare_tflops": rate(med["bare"]),
        "peak_bf16_tflops": peak,
        "peak_source": peak_src,
        "suite_fraction_of_peak": rate(med["suite"]) / peak if peak else None,
        "bare_fraction_of_peak": rate(med["bare"]) / peak if peak else None,
        "matmul_8192_tflops": ceiling,
        "suite_fraction_of_matmul": rate(med["suite"]) / ceiling if ceiling else None,
    }
    n_lora = sum(p.numel() for p in params)
    n_backbone = sum(p.numel() for n, p in model.transformer.named_parameters() if "lora_" not in n)
    return {
        "benchmark": "cuda_opd_step",
        "device": name,
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "diffusers": diffusers.__version__,
            "peft": peft.__version__,
        },
        "note": (
            "random SD3.5-Medium-shaped weights; random prompt embeddings of SD3's shapes "
            "(no text encoders, no VAE: the OPD step never decodes)"
        )
        if not args.tiny
        else "tiny random model on the CPU (the test's configuration)",
        "config": {
            "model": {
                **cfg,
                "sample_size": side,
                "dual_attention_layers": list(cfg["dual_attention_layers"]),
            },
            "backbone_params": n_backbone,
            "student_lora_params": n_lora,
            "lora": {"rank": args.rank, "alpha": args.alpha, "dtype": str(params[0].dtype)},
            "dtype": args.dtype,
            "resolution": args.resolution,
            "latent": [cfg["in_channels"], side, side],
            "image_tokens": (side // cfg["patch_size"]) ** 2,
            "text_tokens": args.text_tokens,
            "prompts_per_task": args.batch,
            "tasks": tasks,
            "student_guidance": args.guidance,
            "steps": args.steps,
            "train_steps": args.train_steps,
        },
        "calls": [
            {"what": c.what, "count": c.count, "batch": c.shape.batch, "grad": c.grad}
            for c in calls
        ],
        "model_evals_per_step": evals_per_step,
        "timing": {
            "clock": "cuda_events" if cuda else "perf_counter",
            "warmup": w,
            "repeats": r,
            "bare_ms": bare_ms,
            "suite_ms": suite_ms,
            "update_ms": update_ms,
            "bare_ms_median": med["bare"],
            "suite_ms_median": med["suite"],
            "update_ms_median": med["update"],
            "ratio_suite_over_bare": med["suite"] / med["bare"],
        },
        "flops": {
            "step_model_flops": model_flops["total"],
            "forward": model_flops["forward"],
            "backward": model_flops["backward"],
            "with_attention_recompute": recompute_flops["total"],
            "counted": counted,
            "convention": (
                "2 x MACs of linears, convolutions and attention matmuls (LoRA included); "
                "frozen backbone: input gradients only; no attention recompute"
            ),
        },
        "throughput": throughput,
        "memory": {"peak_allocated_gib": peak_mem},
        "losses": losses,
        "losses_finite": all(math.isfinite(v) for v in losses.values()),
    }


def _si(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def table(res: dict[str, Any]) -> str:
    t, f, th, c = res["timing"], res["flops"], res["throughput"], res["config"]

    def pct(x: float | None) -> str:
        return f"{100 * x:.1f}%" if x is not None else "-"

    step = (
        f"{len(c['tasks'])} tasks x {c['prompts_per_task']} prompts, {c['steps']} steps "
        f"({c['train_steps']} trained), {c['resolution']} px, {c['dtype']}"
    )
    mem = res["memory"]["peak_allocated_gib"]
    rows = [
        ("device", res["device"]),
        ("step", step),
        ("suite step (median)", f"{t['suite_ms_median']:.1f} ms"),
        ("bare transformer calls", f"{t['bare_ms_median']:.1f} ms"),
        ("ratio suite / bare", f"{t['ratio_suite_over_bare']:.3f}"),
        ("optimizer update", f"{t['update_ms_median']:.1f} ms"),
        ("model FLOPs per step", _si(f["step_model_flops"], "FLOP")),
        ("suite achieved", _si(th["suite_tflops"] * 1e12, "FLOP/s")),
        ("bare achieved", _si(th["bare_tflops"] * 1e12, "FLOP/s")),
        ("peak bf16 (dense)", f"{th['peak_bf16_tflops']} TFLOP/s ({th['peak_source']})"),
        ("suite / peak", pct(th["suite_fraction_of_peak"])),
        ("bare / peak", pct(th["bare_fraction_of_peak"])),
        (
            "8192^3 bf16 matmul",
            _si(th["matmul_8192_tflops"] and th["matmul_8192_tflops"] * 1e12, "FLOP/s"),
        ),
        ("suite / matmul", pct(th["suite_fraction_of_matmul"])),
        ("peak memory", f"{mem:.1f} GiB" if mem else "-"),
    ]
    if f["counted"]:
        k = f["counted"]
        rows.append(
            (
                "FlopCounterMode",
                f"{_si(k['suite'], 'FLOP')} ({k['attention']}; expected: {k['matches']})",
            )
        )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.tiny and torch.device(args.device).type != "cuda":
        print(
            "no CUDA device: the full-size step needs a GPU (use --tiny on a CPU)", file=sys.stderr
        )
        return 2
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        res = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(res["note"])
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
