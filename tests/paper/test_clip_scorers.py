"""CLIP-family scorers on a tiny random ``CLIPModel`` built and saved locally: PickScore,
CLIPScore and the LAION aesthetic head (pinned checksum, ``weights_only`` loading)."""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from opd.rewards import get_scorer
from opd.rewards.paper.clip_scorers import AestheticHead
from opd.rewards.paper.weights import ChecksumError, load_torch_weights

PROMPTS = ["a photo of a red cat", "a blue dog", "a sign says hello world"]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(3, 40, 48, 3), dtype=np.uint8)


def reference(clip_dir: Path, images: np.ndarray, prompts: list[str]):
    """logits_per_image's diagonal and normalised image embeddings, from the model's forward."""
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_dir).eval()
    proc = CLIPProcessor.from_pretrained(clip_dir)
    inputs = proc(
        text=prompts,
        images=[Image.fromarray(im) for im in images],
        padding=True,
        truncation=True,
        max_length=16,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model(**inputs)
    emb = torch.nn.functional.normalize(out.image_embeds, dim=-1)
    return (
        out.logits_per_image.diagonal().double().numpy(),
        emb,
        float(model.logit_scale.detach().exp()),
    )


def test_pickscore_and_clipscore(tiny_clip_dir: Path, images: np.ndarray) -> None:
    logits, _, scale = reference(tiny_clip_dir, images, PROMPTS)
    pick = get_scorer("pickscore", model=str(tiny_clip_dir), processor=str(tiny_clip_dir))
    assert pick.clip._model is None  # lazy: nothing loads before the first call
    np.testing.assert_allclose(pick(images, PROMPTS, [{}] * 3), logits, rtol=1e-5, atol=1e-6)
    clip = get_scorer("clipscore", model=str(tiny_clip_dir), batch_size=2)
    cos = clip(images, PROMPTS, [{}] * 3)
    np.testing.assert_allclose(cos, logits / scale, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(cos) <= 1)
    hessel = get_scorer("clipscore", model=str(tiny_clip_dir), scale=2.5, clamp_zero=True)
    np.testing.assert_allclose(hessel(images, PROMPTS), 2.5 * np.maximum(cos, 0), atol=1e-6)
    assert not pick.clip.trust_remote_code


def _save_head(path: Path, dim: int, seed: int = 0) -> str:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = AestheticHead(dim)
    torch.save(head.state_dict(), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_aesthetic_head_on_normalised_embeddings(tiny_clip_dir, images, tmp_path) -> None:
    head_file = tmp_path / "head.pth"
    digest = _save_head(head_file, 8)
    scorer = get_scorer(
        "aesthetic", model=str(tiny_clip_dir), head=str(head_file), sha256=digest,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    got = scorer(images, PROMPTS, [{}] * 3)
    _, emb, _ = reference(tiny_clip_dir, images, PROMPTS)
    head = AestheticHead(8).eval()
    head.load_state_dict(torch.load(head_file, weights_only=True))
    with torch.no_grad():
        expected = head(emb).reshape(-1).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_third_party_pickles_are_pinned_and_loaded_weights_only(tmp_path: Path) -> None:
    head_file = tmp_path / "head.pth"
    digest = _save_head(head_file, 8)
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumError, match="does not match the pinned"):
        load_torch_weights(head_file, "0" * 64, cache_dir=cache)
    with pytest.raises(ChecksumError, match="no SHA-256 pinned"):
        load_torch_weights(head_file, None, cache_dir=cache)
    with pytest.warns(UserWarning, match="recorded"):  # trust on first use, recorded
        state = load_torch_weights(head_file, None, allow_unpinned=True, cache_dir=cache)
    assert "layers.0.weight" in state
    assert (cache / "checksums.lock.json").is_file()
    _save_head(head_file, 8, seed=1)  # the file changes under the same name
    with pytest.raises(ChecksumError, match="recorded on first use"):
        load_torch_weights(head_file, None, allow_unpinned=True, cache_dir=cache)
    assert load_torch_weights(
        head_file, hashlib.sha256(head_file.read_bytes()).hexdigest(), cache_dir=cache
    )
    # a pickle that would build an arbitrary object is refused even with a matching pin
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": warnings.WarningMessage}, evil)
    pin = hashlib.sha256(evil.read_bytes()).hexdigest()
    with pytest.raises(pickle.UnpicklingError):
        load_torch_weights(evil, pin, cache_dir=cache)
    del digest


def test_service_only_scorers_are_lazy_and_clear_when_missing() -> None:
    local = get_scorer("hpsv21", backend="local", device="cpu")
    with pytest.raises(ModuleNotFoundError, match="hpsv2"):
        local(np.zeros((1, 8, 8, 3), np.uint8), ["a"], [{}])
    ir = get_scorer("imagereward", backend="local", device="cpu", sha256="0" * 64)
    with pytest.raises(ModuleNotFoundError, match="ImageReward"):
        ir(np.zeros((1, 8, 8, 3), np.uint8), ["a"], [{}])
