"""Integration tests of the model interface with real diffusers / transformers / peft classes:
the mini model saved and reloaded (bitwise), CFG rollouts through `opd.sampling.rollout` with two
named adapters (with and without gradients), and a tiny random SD3(.5) pipeline folder loaded the
way the paper profile loads SD3.5-Medium."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from opd.models import (
    BASE,
    FlowModel,
    TinyModelConfig,
    build_tiny_flow_model,
    build_tiny_sd3_pipeline_dir,
)
from opd.models import lora as L
from opd.sampling import make_sampler, rollout, time_grid

WORDS = ["a", "red", "blue", "green", "circle", "square", "triangle", "left", "of", "above"]
PROMPTS = ["a red circle", "a blue square left of a green triangle", 'the text "ab"', "a"]


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> tuple[FlowModel, FlowModel]:
    """The default mini model (16x16, 3 layers, 2 x 32 heads) and its save / reload."""
    m = build_tiny_flow_model(TinyModelConfig(), WORDS, seed=3)
    path = tmp_path_factory.mktemp("mini")
    m.save_pretrained(path)
    assert json.loads((path / "opd_model.json").read_text())["kind"] == "pixel"
    return m, FlowModel.from_pretrained(path)


def test_mini_model_size_and_reload_is_bitwise(mini) -> None:
    m, r = mini
    n = sum(p.numel() for p in m.transformer.parameters())
    assert 0.4e6 < n < 0.5e6  # docs/mini_world.md's prototype: 0.47M
    e1, e2 = m.encode_prompts(PROMPTS), r.encode_prompts(PROMPTS)
    assert torch.equal(e1.hidden, e2.hidden) and torch.equal(e1.pooled, e2.pooled)
    x = torch.randn(m.latent_shape(4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for s in (1.0, 4.5):
            assert torch.equal(
                m.velocity(x, 0.7, e1, guidance_scale=s), r.velocity(x, 0.7, e2, guidance_scale=s)
            )
    assert r.resolution == 16 and r.latent_shape(2) == (2, 3, 16, 16)


def _rollout(model: FlowModel, adapter: str | None, *, grad: bool = False, sampler: str = "ode"):
    embeds = model.encode_prompts(PROMPTS)
    fn = model.velocity_fn(embeds, guidance_scale=4.5, adapter=adapter)
    s = make_sampler(sampler) if sampler == "ode" else make_sampler(sampler, noise_level=0.7)
    return rollout(fn, model.state_shape, time_grid(4), s, seed=11, sample_ids=range(4), grad=grad)


def test_cfg_rollouts_with_two_adapters(mini, tmp_path) -> None:
    m, _ = mini
    m.add_adapter("teacher", rank=8, alpha=16, init="random", seed=1)
    m.add_adapter("student", rank=8, alpha=16, init="random", seed=2)
    try:
        base = _rollout(m, None)
        ta = _rollout(m, "teacher")
        st = _rollout(m, "student")
        assert ta.states.shape == (5, 4, 3, 16, 16)
        assert not torch.allclose(ta.states[-1], st.states[-1])
        assert not torch.allclose(ta.states[-1], base.states[-1])
        # switching back reproduces every state bit for bit
        assert torch.equal(_rollout(m, "teacher").states, ta.states)
        assert torch.equal(_rollout(m, BASE).states, base.states)
        sde = _rollout(m, "student", sampler="flow_sde")
        assert sde.log_probs is not None and torch.isfinite(sde.log_probs).all()
        imgs = m.decode(st.states[-1])
        assert imgs.shape == (4, 16, 16, 3) and imgs.dtype == np.uint8

        # with gradients: only the trainable adapter's LoRA weights receive them
        m.set_trainable("student")
        traj = _rollout(m, "student", grad=True)
        assert traj.states.requires_grad
        traj.states[-1].square().mean().backward()
        student = {id(p) for p in m.adapter_parameters("student")}
        for name, p in m.named_parameters():
            assert (p.grad is not None) == (id(p) in student), name
        m.zero_grad(set_to_none=True)
        # a teacher rollout with grad enabled builds no graph (its weights are frozen)
        assert not _rollout(m, "teacher", grad=True).states.requires_grad

        # save with adapters, reload: the adapters come back and match bit for bit
        m.set_trainable(None)
        m.save_pretrained(tmp_path / "with_adapters")
        r = FlowModel.from_pretrained(tmp_path / "with_adapters")
        assert r.adapter_names() == ["student", "teacher"]  # sorted folder order
        assert torch.equal(_rollout(r, "teacher").states, ta.states)
        assert torch.equal(_rollout(r, None).states, base.states)
    finally:
        m.set_trainable(None)
        for name in ("teacher", "student"):
            m.delete_adapter(name)


# ----------------------------------------------------------------------------- SD3 pipeline
@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    return build_tiny_sd3_pipeline_dir(tmp_path_factory.mktemp("sd3") / "pipe", resolution=16)


def test_tiny_sd3_pipeline_as_flow_model(sd3_dir, tmp_path) -> None:
    index = json.loads((sd3_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    assert index["text_encoder_3"] == ["transformers", "T5EncoderModel"]
    m = FlowModel.from_pretrained(sd3_dir)
    assert m.kind == "latent" and m.vae is not None
    assert m.latent_shape(2) == (2, 4, 8, 8)

    emb = m.encode_prompts(["a red circle", ""])
    # CLIP-L (16) + CLIP-G (24) states padded to T5's width (48), then T5's 16 tokens appended
    assert emb.hidden.shape == (2, 16 + 16, 48) and emb.pooled.shape == (2, 16 + 24)
    assert torch.equal(emb.hidden[1], m.empty_embeds(1).hidden[0])
    with pytest.warns(UserWarning, match="truncated"):
        m.encode_prompts(["a photo of " * 8])

    x = torch.randn(m.latent_shape(2), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = m.velocity(x, 0.5, emb.index([0, 0]), guidance_scale=4.5)
    assert v.shape == x.shape and torch.isfinite(v).all()
    imgs = m.decode(x)
    assert imgs.shape == (2, 16, 16, 3) and imgs.dtype == np.uint8
    z = m.encode_images(imgs)
    assert z.shape == x.shape and z.dtype == torch.float32

    # adapters: SD3.5's dual-attention attn2 is not targeted (Flow-GRPO's targets)
    m.add_adapter("ocr", rank=4, alpha=8, init="random", seed=0)
    paths = [p for p, _ in L.adapter_layers(m.transformer, "ocr")]
    assert paths and not any(".attn2." in p for p in paths)
    with torch.no_grad():
        va = m.velocity(x, 0.5, emb, adapter="ocr")
        v0 = m.velocity(x, 0.5, emb)
    assert not torch.allclose(va, v0)

    # save in the pipeline layout (+ adapters) and reload bit for bit
    m.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model_index.json").is_file()
    r = FlowModel.from_pretrained(tmp_path / "saved")
    assert r.adapter_names() == ["ocr"] and r.resolution == 16
    with torch.no_grad():
        assert torch.equal(
            r.velocity(x, 0.5, r.encode_prompts(["a red circle", ""]), adapter="ocr"), va
        )
        assert torch.equal(r.velocity(x, 0.5, emb), v0)
    assert np.array_equal(r.decode(x), imgs)


def test_tiny_sd3_without_t5(sd3_dir) -> None:
    m = FlowModel.from_pretrained(sd3_dir, drop_t5=True)
    emb = m.encode_prompts(["a red circle"])
    assert emb.hidden.shape == (1, 32, 48)
    assert torch.count_nonzero(emb.hidden[:, 16:]) == 0  # SD3 feeds zeros for missing T5
