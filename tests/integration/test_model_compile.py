"""``model.compile``: every training job after pretraining can run the base's transformer
through torch.compile (evaluations stay eager); the compiled calls must compute what the eager
ones do, up to float32 rounding (judged against the same call in float64)."""

from __future__ import annotations

import copy

import pytest
import torch

from opd.training.base import STUDENT


def test_model_compile_loads_a_compiled_base_as_accurate_as_the_eager_one(smoke_stage1) -> None:
    """``model.compile``: a training job's base runs through torch.compile, an evaluation's
    stays eager; against the same CFG call in float64, the compiled velocity is as close as the
    eager float32 one (within 4x: both are float32 roundings, summed in another order), with the
    student adapter switched on."""
    from opd.models.compile import compiler_works
    from opd.training.context import load_base_model

    if not compiler_works():
        pytest.skip("torch.compile cannot build kernels on this machine")
    cfg = copy.deepcopy(smoke_stage1)
    eager = load_base_model(cfg, train=True)
    cfg["model"]["compile"] = True
    compiled = load_base_model(cfg, train=True)
    evaluation = load_base_model(cfg)
    assert getattr(compiled.transformer, "_compiled_call_impl", None) is not None
    for model in (eager, evaluation):
        assert getattr(model.transformer, "_compiled_call_impl", None) is None
    for model in (eager, compiled):
        model.add_adapter(STUDENT, rank=4, alpha=8, init="gaussian", seed=3)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(eager.latent_shape(6), generator=gen)
    t = torch.rand(6, generator=gen)
    embeds = eager.encode_prompts(["a red circle"] * 6)

    def velocity(model) -> torch.Tensor:
        with torch.no_grad():
            return model.velocity(x, t, embeds, guidance_scale=4.5, adapter=STUDENT)

    v_eager, v_compiled = velocity(eager), velocity(compiled)
    with eager.use_adapter(STUDENT):  # the float64 copy keeps the student active
        eager.transformer = copy.deepcopy(eager.transformer).double()
        v_exact = velocity(eager)
    scale = v_exact.std()
    err_eager = float((v_eager - v_exact).abs().max() / scale)
    err_compiled = float((v_compiled - v_exact).abs().max() / scale)
    assert 0 < err_eager < 1e-4 and err_compiled <= 4 * err_eager
