"""Unit tests of `opd.models`: prompt embeddings, tokenizer, CFG, adapters (switching, grads,
state, files, peft-format loading, merging), pixel decode/encode. Real classes at tiny size."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from opd.models import (
    BASE,
    DEFAULT_TARGETS,
    FlowModel,
    PromptEmbeds,
    TinyModelConfig,
    build_tiny_flow_model,
    build_tokenizer,
    load_lora_from_dir,
)
from opd.models import lora as L

WORDS = ["a", "red", "blue", "circle", "square", "left", "of", "the", "text"]
CFG = TinyModelConfig(resolution=8, num_layers=2, head_dim=16, text_width=32, max_length=12)


def tiny(seed: int = 0) -> FlowModel:
    return build_tiny_flow_model(CFG, WORDS, seed=seed)


@pytest.fixture(scope="module")
def model() -> FlowModel:
    m = tiny()
    m.add_adapter("a", rank=4, alpha=8, init="random", seed=1)
    m.add_adapter("b", rank=2, alpha=2, init="random", seed=2)
    return m


@pytest.fixture(scope="module")
def batch(model: FlowModel) -> tuple[torch.Tensor, torch.Tensor, PromptEmbeds]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(model.latent_shape(3), generator=g)
    t = torch.tensor([0.9, 0.5, 0.1])
    emb = model.encode_prompts(["a red circle", "blue square left of the circle", "a"])
    return x, t, emb


# ----------------------------------------------------------------------------- embeddings
def test_prompt_embeds_ops() -> None:
    e = PromptEmbeds(torch.arange(24.0).view(3, 4, 2), torch.arange(6.0).view(3, 2))
    assert len(e) == 3
    assert e.index(1).hidden.shape == (1, 4, 2)
    assert torch.equal(e.index([2, 0]).pooled, e.pooled[[2, 0]])
    assert torch.equal(e.index(torch.tensor([True, False, True])).pooled, e.pooled[[0, 2]])
    r = e.repeat_interleave(2)
    assert torch.equal(r.pooled[:, 0], torch.tensor([0.0, 0.0, 2.0, 2.0, 4.0, 4.0]))
    c = PromptEmbeds.cat([e, e.index(0)])
    assert len(c) == 4 and torch.equal(c.hidden[3], e.hidden[0])
    assert e.to("cpu", torch.float64).hidden.dtype == torch.float64
    assert len(e.index(0).expand(5)) == 5
    with pytest.raises(ValueError):
        e.expand(5)
    with pytest.raises(ValueError):
        PromptEmbeds(torch.zeros(2, 3, 4), torch.zeros(3, 4))


def test_tokenizer_words_punctuation_and_spelling() -> None:
    tok = build_tokenizer(WORDS, max_length=16)
    ids = tok('A red "AB" circle, zq')["input_ids"]
    toks = tok.convert_ids_to_tokens(ids)
    assert toks == ["<bos>", "a", "red", '"', "a", "##b", '"', "circle", ",", "z", "##q", "<eos>"]
    assert tok.unk_token_id not in ids
    assert tok.pad_token_id == 0 and tok.eos_token_id == 3  # CLIP's eos == 2 legacy path avoided
    padded = tok(["a"], padding="max_length", max_length=16)["input_ids"][0]
    assert padded[:3] == [2, tok.convert_tokens_to_ids("a"), 3]
    assert padded[3:] == [0] * 13


def test_encode_prompts_empty_cache_and_mixed(model: FlowModel) -> None:
    e_all = model.encode_prompts(["a red circle", "", "the text"])
    e_sep = [model.encode_prompts([p]) for p in ["a red circle", "", "the text"]]
    for i, e in enumerate(e_sep):
        torch.testing.assert_close(e_all.hidden[i], e.hidden[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(e_all.pooled[i], e.pooled[0], rtol=1e-5, atol=1e-6)
    # the empty embedding is cached and equals a fresh encoding of ""
    assert model._empty is not None
    fresh = model.prompt_encoder.encode([""])
    assert torch.equal(model.empty_embeds(1).hidden, fresh.hidden)
    u = model.encode_prompts(["", ""])
    assert u.hidden.shape[0] == 2 and u.hidden.is_contiguous()
    with pytest.raises(TypeError):
        model.encode_prompts("a red circle")  # type: ignore[arg-type]


def test_overlong_prompt_warns_with_prompt(model: FlowModel) -> None:
    long = "a red circle left of the blue square left of the red circle"
    with pytest.warns(UserWarning, match="left of the blue square"):
        e = model.encode_prompts([long, "a"])
    assert e.hidden.shape[1] == CFG.max_length
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.encode_prompts(["a red circle"])


# ----------------------------------------------------------------------------- velocity / CFG
def test_cfg_is_one_batched_forward_of_the_two_branches(model: FlowModel, batch) -> None:
    x, t, emb = batch
    s = 4.5
    with torch.no_grad():
        v_c = model.velocity(x, t, emb)
        v_u = model.velocity(x, t, model.encode_prompts([""] * 3))
        v = model.velocity(x, t, emb, guidance_scale=s)
        v1 = model.velocity(x, t, emb, guidance_scale=1.0)
    assert torch.equal(v1, v_c)  # scale 1 is the plain conditional call (same code path)
    # The batched forward may differ from the separate ones by BLAS blocking (a few float32
    # ulps of |v| ~ 1); the combination v_u + s (v_c - v_u) amplifies that by |1-s| + s = 2s-1.
    tol = 1e-6 * (2 * s - 1) * float(v_c.abs().max()) * 4
    torch.testing.assert_close(v, v_u + s * (v_c - v_u), rtol=0, atol=tol)
    # explicit uncond embeddings and a float t
    with torch.no_grad():
        vf = model.velocity(x, 0.5, emb, guidance_scale=2.0, uncond=model.empty_embeds(3))
        vt = model.velocity(x, torch.full((3,), 0.5), emb, guidance_scale=2.0)
    assert torch.equal(vf, vt)


def test_velocity_fn_and_timestep_convention(model: FlowModel, batch) -> None:
    x, t, emb = batch
    fn = model.velocity_fn(emb, guidance_scale=3.0, adapter="a")
    with torch.no_grad():
        assert torch.equal(fn(x, t), model.velocity(x, t, emb, guidance_scale=3.0, adapter="a"))
        # the transformer sees timestep = 1000 t
        direct = model.transformer(
            hidden_states=x,
            encoder_hidden_states=emb.hidden,
            pooled_projections=emb.pooled,
            timestep=t * 1000,
            return_dict=False,
        )[0]
    with torch.no_grad():
        assert torch.equal(direct, model.velocity(x, t, emb))
    with pytest.raises(ValueError):
        model.velocity(x, torch.zeros(2), emb)


# ----------------------------------------------------------------------------- adapters
def test_adapter_switching_is_exact_and_stateless(model: FlowModel, batch) -> None:
    x, t, emb = batch
    with torch.no_grad():
        v0 = model.velocity(x, t, emb)
        va = model.velocity(x, t, emb, adapter="a")
        vb = model.velocity(x, t, emb, adapter="b")
        assert not torch.allclose(va, v0) and not torch.allclose(vb, v0)
        assert not torch.allclose(va, vb)
        # switching back and forth gives bitwise identical outputs
        assert torch.equal(model.velocity(x, t, emb, adapter="a"), va)
        assert torch.equal(model.velocity(x, t, emb), v0)
        assert torch.equal(model.velocity(x, t, emb, adapter=BASE), v0)
        with model.use_adapter("b"):
            assert model.active_adapter == "b"
            assert torch.equal(model.velocity(x, t, emb), vb)
            assert torch.equal(model.velocity(x, t, emb, adapter="a"), va)
            assert torch.equal(model.velocity(x, t, emb, adapter=BASE), v0)
            assert torch.equal(model.velocity(x, t, emb), vb)
            with model.adapter(None):
                assert torch.equal(model.velocity(x, t, emb), v0)
            assert torch.equal(model.velocity(x, t, emb), vb)
        assert model.active_adapter is None
        assert torch.equal(model.velocity(x, t, emb), v0)
    # peft's public view agrees with our switching
    layers = [m for _, m in L.tuner_layers(model.transformer)]
    assert all(m.disable_adapters for m in layers)
    with model.use_adapter("a"):
        assert all(not m.disable_adapters and m.active_adapters == ["a"] for m in layers)
    with pytest.raises(KeyError):
        model.velocity(x, t, emb, adapter="nope")


def test_adapter_targets_and_params(model: FlowModel) -> None:
    assert model.adapter_names() == ["a", "b"]
    paths = [p for p, _ in L.adapter_layers(model.transformer, "a")]
    # 2 blocks x 8 targets, less the last block's to_add_out (context_pre_only)
    assert len(paths) == 2 * len(DEFAULT_TARGETS) - 1
    assert {p.split("attn.")[-1] for p in paths} == {t.split("attn.")[-1] for t in DEFAULT_TARGETS}
    assert len(model.adapter_parameters("a")) == 2 * len(paths)
    cfg = model.adapter_config("a")
    assert cfg.r == 4 and cfg.lora_alpha == 8
    with pytest.raises(ValueError):
        model.add_adapter("a")
    with pytest.raises(ValueError):
        model.add_adapter(BASE)


def test_gradients_reach_only_the_trainable_adapter(batch) -> None:
    m = tiny()
    m.add_adapter("a", rank=4, alpha=8, init="random", seed=1)
    m.add_adapter("b", rank=4, alpha=8, init="random", seed=2)
    x, t, emb = batch
    m.set_trainable("a")
    ids = {id(p) for p in m.adapter_parameters("a")}
    assert {id(p) for p in m.trainable_parameters()} == ids
    # a teacher forward in between must not change which weights are trainable
    with torch.no_grad():
        m.velocity(x, t, emb, adapter="b", guidance_scale=2.0)
    assert {id(p) for p in m.trainable_parameters()} == ids
    loss = m.velocity(x, t, emb, adapter="a", guidance_scale=2.0).square().mean()
    loss.backward()
    for name, p in m.named_parameters():
        assert (p.grad is not None) == (id(p) in ids), name
    # Every LoRA weight gets a gradient except the last block's add_q_proj: that block is
    # context_pre_only (its text-stream output is dropped), so text queries reach nothing.
    last = f"transformer_blocks.{CFG.num_layers - 1}.attn.add_q_proj"
    for path, layer in L.adapter_layers(m.transformer, "a"):
        for p in (layer.lora_A["a"].weight, layer.lora_B["a"].weight):
            assert (float(p.grad.abs().sum()) > 0) == (path != last), path
    # the base model / other adapter build no graph at all
    assert not m.velocity(x, t, emb, adapter="b").requires_grad
    assert not m.velocity(x, t, emb).requires_grad
    m.set_trainable(BASE)
    assert all("lora_" not in n for n, p in m.transformer.named_parameters() if p.requires_grad)
    assert len(m.trainable_parameters()) == len(list(m.transformer.parameters())) - 2 * len(
        ids
    )  # 2 adapters
    m.set_trainable(BASE, text_encoder=True)
    assert all(p.requires_grad for p in m.prompt_encoder.parameters())
    m.set_trainable(None)
    assert m.trainable_parameters() == []


def test_state_dict_roundtrip_copy_and_files(model: FlowModel, batch, tmp_path) -> None:
    x, t, emb = batch
    sd = model.adapter_state_dict("a")
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in sd)
    m2 = tiny()
    m2.add_adapter("a", rank=4, alpha=8)  # B = 0: equals the base model before loading
    m2.load_adapter_state_dict("a", sd)
    with torch.no_grad():
        assert torch.equal(
            m2.velocity(x, t, emb, adapter="a"), model.velocity(x, t, emb, adapter="a")
        )
    with pytest.raises(KeyError):
        m2.load_adapter_state_dict("a", {"nope.lora_A.weight": torch.zeros(1)})
    model.save_adapter("a", tmp_path / "a")
    assert (tmp_path / "a" / "adapter_config.json").is_file()
    m3 = tiny()
    m3.load_adapter("teacher", tmp_path / "a")
    assert m3.adapter_config("teacher").r == 4
    with torch.no_grad():
        assert torch.equal(
            m3.velocity(x, t, emb, adapter="teacher"), model.velocity(x, t, emb, adapter="a")
        )
    m3.copy_adapter("teacher", "ema")
    with torch.no_grad():
        assert torch.equal(
            m3.velocity(x, t, emb, adapter="ema"), model.velocity(x, t, emb, adapter="a")
        )
    m3.delete_adapter("ema")
    assert m3.adapter_names() == ["teacher"]


def test_load_peft_saved_lora(batch, tmp_path) -> None:
    """A LoRA made and saved by peft itself (as Flow-GRPO ships them) loads as a named adapter."""
    from peft import LoraConfig, get_peft_model

    x, t, emb = batch
    ref = tiny()
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=list(DEFAULT_TARGETS), init_lora_weights="gaussian"
    )
    peft_model = get_peft_model(ref.transformer, cfg)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(n)))
    peft_model.save_pretrained(tmp_path / "lora")
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    with torch.no_grad():
        expected = peft_model.get_base_model()(
            hidden_states=x,
            encoder_hidden_states=emb.hidden,
            pooled_projections=emb.pooled,
            timestep=t * 1000,
            return_dict=False,
        )[0]
    m = tiny()
    load_lora_from_dir(m, "grpo_teacher", tmp_path / "lora")
    with torch.no_grad():
        got = m.velocity(x, t, emb, adapter="grpo_teacher")
        base = m.velocity(x, t, emb)
    assert torch.equal(got, expected)
    assert not torch.allclose(got, base)


def test_merge_adapters_is_exact_weighted_sum(model: FlowModel, batch) -> None:
    x, t, emb = batch
    w = (0.7, -0.4)
    model.merge_adapters(["a", "b"], list(w), "merged")
    try:
        assert model.adapter_config("merged").r == 4 + 2
        da, db, dm = (model.lora_deltas(n) for n in ("a", "b", "merged"))
        assert set(dm) == set(da) | set(db)
        # Rounding bound: the merged B holds w_i s_i B_i rounded once to float32 (relative
        # error <= 2^-24 per entry, A is copied exactly), so |dW_merged - sum_i w_i dW_i| <=
        # 2^-24 sum_i |w_i s_i| |B_i| @ |A_i| elementwise (float64 products are exact enough).
        bound = {path: torch.zeros_like(d) for path, d in dm.items()}
        for name, wi in zip(("a", "b"), w, strict=True):
            for path, layer in L.adapter_layers(model.transformer, name):
                a = layer.lora_A[name].weight.detach().double().abs()
                b = layer.lora_B[name].weight.detach().double().abs()
                bound[path] += abs(wi * layer.scaling[name]) * (b @ a)
        for path, delta in dm.items():
            want = w[0] * da[path] + w[1] * db[path]
            assert delta.dtype == torch.float64
            err = (delta - want).abs()
            assert bool((err <= 2.0**-24 * bound[path] * 1.01 + 1e-18).all()), path
            assert float(err.max()) < 1e-6 * float(want.abs().max())
        with torch.no_grad():
            vm = model.velocity(x, t, emb, adapter="merged")
        assert torch.isfinite(vm).all()
    finally:
        model.delete_adapter("merged")


def test_random_init_is_seeded_and_default_init_is_base(batch) -> None:
    x, t, emb = batch
    m = tiny()
    m.add_adapter("z", rank=4, alpha=8)
    m.add_adapter("r1", rank=4, alpha=8, init="random", seed=5)
    m.add_adapter("r2", rank=4, alpha=8, init="random", seed=5)
    m.add_adapter("k", rank=4, alpha=8, init="kaiming", seed=6)
    with torch.no_grad():
        v0 = m.velocity(x, t, emb)
        assert torch.equal(m.velocity(x, t, emb, adapter="z"), v0)
        assert torch.equal(m.velocity(x, t, emb, adapter="k"), v0)
        assert torch.equal(m.velocity(x, t, emb, adapter="r1"), m.velocity(x, t, emb, adapter="r2"))
    with pytest.raises(ValueError):
        m.add_adapter("bad", init="pissa-ish")


# ----------------------------------------------------------------------------- images
def test_pixel_decode_encode_roundtrip(model: FlowModel) -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    x = model.encode_images(imgs)
    assert x.shape == model.latent_shape(2) and x.dtype == torch.float32
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    out = model.decode(x)
    assert out.dtype == np.uint8 and out.shape == (2, 8, 8, 3)
    assert np.array_equal(out, imgs)
    # clamping and rounding
    y = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert model.decode(y)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]
    assert model.state_shape == (3, 8, 8)


def test_exact_ff_gelu_is_the_erf_form_and_survives_save_load(batch, tmp_path) -> None:
    """``ff_gelu="exact"`` swaps the feed-forward GELU for the erf form (checked against a
    float64 computation of both forms) and a saved model loads with it; the default stays SD3's."""
    from dataclasses import replace

    from diffusers.models.attention import FeedForward

    x, t, _ = batch
    tanh_model = tiny()
    exact = build_tiny_flow_model(replace(CFG, ff_gelu="exact"), WORDS, seed=0)
    ff = next(m for m in exact.transformer.modules() if isinstance(m, FeedForward))
    lin_in, lin_out = ff.net[0].proj, ff.net[2]
    h = torch.randn(64, lin_in.in_features, generator=torch.Generator().manual_seed(3))
    u = torch.nn.functional.linear(h.double(), lin_in.weight.double(), lin_in.bias.double())
    erf = 0.5 * u * (1 + torch.erf(u / 2**0.5))
    tanh = 0.5 * u * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (u + 0.044715 * u**3)))
    for model, act in ((exact, erf), (tanh_model, tanh)):
        f = next(m for m in model.transformer.modules() if isinstance(m, FeedForward))
        want = torch.nn.functional.linear(act, lin_out.weight.double(), lin_out.bias.double())
        with torch.no_grad():
            got = f(h).double()
        # float32 rounding of a 4 * width sum: far below the forms' difference (about 1e-4)
        assert (got - want).abs().max() < 1e-5 < (erf - tanh).abs().max()
    exact.save_pretrained(tmp_path / "m")
    loaded = FlowModel.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        v_loaded = loaded.velocity(x, t, loaded.encode_prompts(["a red circle"] * 3))
        v_exact = exact.velocity(x, t, exact.encode_prompts(["a red circle"] * 3))
        v_tanh = tanh_model.velocity(x, t, tanh_model.encode_prompts(["a red circle"] * 3))
    assert torch.equal(v_loaded, v_exact) and not torch.equal(v_exact, v_tanh)
    with pytest.raises(ValueError, match="ff_gelu"):
        TinyModelConfig(ff_gelu="fast")


def test_profile_ff_gelu_overrides_the_saved_form_on_load(tmp_path) -> None:
    from diffusers.models.activations import GELU

    from opd.training.context import load_base_model

    tiny().save_pretrained(tmp_path / "base")  # saved in SD3's tanh form
    forms = {}
    for setting in (None, "exact", "tanh"):
        profile = {"paths": {"base": str(tmp_path / "base")}, "model": {"kind": "tiny"}}
        if setting:
            profile["model"]["ff_gelu"] = setting
        model = load_base_model(profile)
        forms[setting] = {m.approximate for m in model.transformer.modules() if isinstance(m, GELU)}
    assert forms == {None: {"tanh"}, "exact": {"none"}, "tanh": {"tanh"}}


def test_lora_targets_resolve_and_recreate_from_a_checkpoint_record(batch) -> None:
    """A method's ``lora_targets`` beat the profile's ``model.lora.targets``, which beat the
    attention default; the manifest record re-creates the same adapter (feed-forward and output
    projection included), so its weights load and it computes the same velocity."""
    from opd.evaluation import adapter_kwargs
    from opd.training.base import MethodConfig, lora_settings

    ff = ["attn.to_q", "ff.net.0.proj", "ff.net.2", "proj_out"]
    profile = {"model": {"lora": {"rank": 4, "alpha": 8}}}
    assert lora_settings(MethodConfig(), profile)["target_modules"] == tuple(DEFAULT_TARGETS)
    profile["model"]["lora"]["targets"] = ["attn.to_q"]
    assert lora_settings(MethodConfig(), profile)["target_modules"] == ("attn.to_q",)
    settings = lora_settings(MethodConfig(lora_targets=ff, lora_rank=3), profile)
    assert settings == {"rank": 3, "alpha": 8.0, "target_modules": tuple(ff)}

    src = tiny()
    src.add_adapter("student", **settings, init="random", seed=3)
    paths = {p for p, _ in L.adapter_layers(src.transformer, "student")}
    assert "proj_out" in paths and any(p.endswith("ff.net.2") for p in paths)
    dst = tiny()
    dst.add_adapter("student", **adapter_kwargs(src.adapter_info("student")))
    dst.load_adapter_state_dict("student", src.adapter_state_dict("student"))  # strict keys
    x, t, emb = batch
    with torch.no_grad():
        want = src.velocity(x, t, emb, adapter="student")
        got = dst.velocity(x, t, emb, adapter="student")
        base = dst.velocity(x, t, emb)
    assert torch.equal(got, want) and not torch.equal(got, base)
