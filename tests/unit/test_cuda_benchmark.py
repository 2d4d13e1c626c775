"""The CUDA OPD-step benchmark (benchmarks/cuda_opd_step.py): its CPU mode runs and writes what
docs/PERFORMANCE.md's table reads, and its analytic FLOP count equals FlopCounterMode's, on
the tiny model and on the full SD3.5-Medium shape (meta tensors: shapes only, no arithmetic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.benchmark_run import load_script, run_benchmark

pytest.importorskip("diffusers")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "cuda_opd_step.py"


def _bench():
    return load_script(SCRIPT)


@pytest.mark.slow
def test_tiny_cpu_run_writes_the_json(tmp_path: Path) -> None:
    stdout, data = run_benchmark(
        SCRIPT, ["--tiny"], tmp_path / "tiny.json", timeout=300, CUDA_VISIBLE_DEVICES=""
    )
    assert "ratio suite / bare" in stdout
    for key in ("device", "versions", "note", "config", "calls", "timing", "flops", "throughput"):
        assert key in data, key
    timing, flops = data["timing"], data["flops"]
    assert timing["clock"] == "perf_counter"
    assert len(timing["suite_ms"]) == len(timing["bare_ms"]) == timing["repeats"]
    assert timing["suite_ms_median"] > 0 and timing["bare_ms_median"] > 0
    assert timing["ratio_suite_over_bare"] == pytest.approx(
        timing["suite_ms_median"] / timing["bare_ms_median"]
    )
    total = flops["step_model_flops"]
    assert total > 0 and total == flops["forward"] + flops["backward"]
    # the independent count: FlopCounterMode over the suite's step and over the bare calls
    assert flops["counted"]["suite"] == flops["counted"]["bare"] == total
    assert flops["counted"]["matches"] is True
    assert data["throughput"]["suite_tflops"] > 0
    assert data["losses_finite"] is True
    # the call list agrees with the suite's own model-evaluation counter
    evals = sum(c["count"] * c["batch"] * (3 if c["grad"] else 1) for c in data["calls"])
    assert data["model_evals_per_step"] == evals


@pytest.mark.slow
def test_analytic_flops_match_flop_counter_at_full_size() -> None:
    import torch
    from diffusers import SD3Transformer2DModel
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from opd.models.base import FlowModel
    from opd.models.prompts import PromptEncoder

    bench = _bench()
    cfg = bench.SD35_MEDIUM
    with torch.device("meta"):
        transformer = SD3Transformer2DModel(sample_size=64, **cfg)
    model = FlowModel(transformer, PromptEncoder(), kind="pixel", resolution=64, channels=16)
    model.add_adapter("student", rank=32, alpha=64.0)
    model.set_trainable("student")
    shape = bench.Shape(batch=6, side=64, text=205)  # 3 prompts with CFG, 512 px
    args = (
        torch.empty(6, 16, 64, 64, device="meta"),
        torch.empty(6, 205, 4096, device="meta"),
        torch.empty(6, 2048, device="meta"),
        torch.empty(6, device="meta"),
    )

    def count(grad: bool) -> int:
        counter = FlopCounterMode(display=False)
        with model.use_adapter("student"), sdpa_kernel(SDPBackend.MATH), counter:
            if grad:
                transformer(*args, return_dict=False)[0].float().square().mean().backward()
            else:
                with torch.no_grad():
                    transformer(*args, return_dict=False)
        return counter.get_total_flops()

    fwd = bench.forward_flops(cfg, shape, 32)
    assert count(False) == fwd
    assert count(True) == fwd + bench.backward_flops(cfg, shape, 32)
    assert 13e12 < fwd < 14e12  # ~2.2 TFLOP per 512 px sample and forward
