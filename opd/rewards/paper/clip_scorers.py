"""The paper's CLIP-family scorers: ``pickscore``, ``clipscore``, ``aesthetic``, ``hpsv21``.

Definitions (the numbers Table 1 reports):

``pickscore``
    PickScore_v1 (a CLIP-H fine-tuned on Pick-a-Pic; processor of
    ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``): ``exp(logit_scale) * cos(image, text)`` -- about
    20-24 for SD3.5-M (Flow-GRPO divides by 26 for its training reward; not here).
``clipscore``
    OpenAI CLIP ViT-L/14: the cosine similarity of the image and prompt embeddings (about
    0.24-0.30 in Table 1). ``scale`` / ``clamp_zero`` give Hessel et al.'s
    ``2.5 * max(cos, 0)`` variant when wanted.
``aesthetic``
    The LAION improved aesthetic predictor: an MLP (768-1024-128-64-16-1, dropouts inactive)
    on the L2-normalised CLIP ViT-L/14 image embedding; its pickled head
    (``sac+logos+ava1-l14-linearMSE.pth``) is checked against a pinned SHA-256 and loaded
    with ``weights_only=True``.
``hpsv21``
    HPSv2.1: open_clip ViT-H-14 with the ``HPS_v2.1_compressed.pt`` weights, score =
    ``cos(image, text)``. It needs the ``hpsv2`` package (open_clip + torchvision), so by default
    it is a client of a service in the scorers image (``backend: http``); ``backend: local``
    builds it in-process where ``hpsv2`` is installed.

The CLIP models load through transformers' ``CLIPModel`` / ``CLIPProcessor`` from a folder or
hub id (``model``, ``processor``, ``revision``), lazily on the first call, on ``device`` in
``dtype``, in batches of ``batch_size``; ``trust_remote_code`` stays off unless the config
says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from opd.registry import SCORERS
from opd.rewards.paper.service import backend_scorer
from opd.rewards.paper.weights import DEFAULT_CACHE, load_torch_weights, unwrap_state_dict

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
CLIP_L14 = "openai/clip-vit-large-patch14"
AESTHETIC_HEAD = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
    "sac%2Blogos%2Bava1-l14-linearMSE.pth"
)
AESTHETIC_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
HPSV21_CHECKPOINT = "hf://xswu/HPSv2/HPS_v2.1_compressed.pt"


def _features(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor (transformers 4) or an output whose pooler_output is
    the projected embedding (transformers 5)."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(out, key, None)
        if value is not None:
            return value
    raise TypeError(f"cannot read features from {type(out).__name__}")


def _check(images: Any, prompts: Sequence[str], metadata: Sequence[dict] | None) -> None:
    n = len(images)
    if len(prompts) != n or (metadata is not None and len(metadata) != n):
        raise ValueError(f"{n} images, {len(prompts)} prompts")
    arr = np.asarray(images[0]) if n else None
    if arr is not None and (arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3):
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {arr.dtype} {arr.shape}")


class CLIPBackbone:
    """A transformers CLIP model + processor, loaded on first use; normalised embeddings."""

    def __init__(
        self,
        model: str,
        processor: str | None = None,
        *,
        revision: str | None = None,
        processor_revision: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 32,
        trust_remote_code: bool = False,
    ) -> None:
        self.model_id, self.processor_id = model, processor or model
        self.revision, self.processor_revision = revision, processor_revision
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.batch_size = int(batch_size)
        self.trust_remote_code = bool(trust_remote_code)
        self._model: Any = None
        self._processor: Any = None

    def load(self) -> tuple[Any, Any]:
        if self._model is None:
            from transformers import CLIPModel, CLIPProcessor

            kw = {"trust_remote_code": self.trust_remote_code}
            model = CLIPModel.from_pretrained(
                self.model_id, revision=self.revision, dtype=self.dtype, **kw
            )
            self._model = model.to(self.device).eval().requires_grad_(False)
            self._processor = CLIPProcessor.from_pretrained(
                self.processor_id, revision=self.processor_revision, **kw
            )
        return self._model, self._processor

    @torch.no_grad()
    def image_embeds(self, images: np.ndarray) -> torch.Tensor:
        from PIL import Image

        model, proc = self.load()
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            pil = [Image.fromarray(np.asarray(im)) for im in chunk]
            pix = proc(images=pil, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
            feats = _features(model.get_image_features(pixel_values=pix))
            out.append(nn.functional.normalize(feats.float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        model, proc = self.load()
        max_len = min(77, int(model.config.text_config.max_position_embeddings))
        out = []
        for start in range(0, len(prompts), self.batch_size):
            tok = proc(
                text=list(prompts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            feats = _features(
                model.get_text_features(
                    input_ids=tok["input_ids"].to(self.device),
                    attention_mask=tok["attention_mask"].to(self.device),
                )
            )
            out.append(nn.functional.normalize(feats.float(), dim=-1))
        return torch.cat(out)

    def logit_scale(self) -> float:
        model, _ = self.load()
        return float(model.logit_scale.detach().float().exp())


class PickScore:
    """``exp(logit_scale) * cos(image, text)`` with PickScore_v1 (see the module docstring)."""

    def __init__(self, **clip: Any) -> None:
        clip.setdefault("model", PICKSCORE_MODEL)
        clip.setdefault("processor", PICKSCORE_PROCESSOR)
        self.clip = CLIPBackbone(**clip)

    def __call__(
        self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict] | None = None
    ) -> np.ndarray:
        _check(images, prompts, metadata)
        if len(images) == 0:
            return np.zeros(0)
        img, txt = self.clip.image_embeds(images), self.clip.text_embeds(prompts)
        return (self.clip.logit_scale() * (img * txt).sum(-1)).double().cpu().numpy()


class CLIPScore:
    """``scale * cos(image, text)`` (``clamp_zero``: ``scale * max(cos, 0)``), CLIP ViT-L/14."""

    def __init__(self, *, scale: float = 1.0, clamp_zero: bool = False, **clip: Any) -> None:
        clip.setdefault("model", CLIP_L14)
        self.clip = CLIPBackbone(**clip)
        self.scale, self.clamp_zero = float(scale), bool(clamp_zero)

    def __call__(
        self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict] | None = None
    ) -> np.ndarray:
        _check(images, prompts, metadata)
        if len(images) == 0:
            return np.zeros(0)
        cos = (self.clip.image_embeds(images) * self.clip.text_embeds(prompts)).sum(-1)
        if self.clamp_zero:
            cos = cos.clamp_min(0.0)
        return (self.scale * cos).double().cpu().numpy()


class AestheticHead(nn.Module):
    """The LAION improved-aesthetic-predictor MLP (``layers.{0,2,4,6,7}`` are the linears)."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Aesthetic:
    """LAION aesthetic score: MLP head on normalised CLIP ViT-L/14 image embeddings."""

    def __init__(
        self,
        *,
        head: str = AESTHETIC_HEAD,
        sha256: str | None = AESTHETIC_SHA256,
        allow_unpinned: bool = False,
        cache_dir: str = DEFAULT_CACHE,
        **clip: Any,
    ) -> None:
        clip.setdefault("model", CLIP_L14)
        self.clip = CLIPBackbone(**clip)
        self.head_source, self.sha256 = head, sha256
        self.allow_unpinned, self.cache_dir = allow_unpinned, cache_dir
        self._head: AestheticHead | None = None

    def head(self) -> AestheticHead:
        if self._head is None:
            state = unwrap_state_dict(
                load_torch_weights(
                    self.head_source,
                    self.sha256,
                    allow_unpinned=self.allow_unpinned,
                    cache_dir=self.cache_dir,
                )
            )
            head = AestheticHead(int(state["layers.0.weight"].shape[1]))
            head.load_state_dict(state)
            self._head = head.to(self.clip.device).eval().requires_grad_(False)
        return self._head

    @torch.no_grad()
    def __call__(
        self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict] | None = None
    ) -> np.ndarray:
        _check(images, prompts, metadata)
        if len(images) == 0:
            return np.zeros(0)
        head = self.head()
        emb = self.clip.image_embeds(images)
        return head(emb.to(next(head.parameters()).dtype)).reshape(-1).double().cpu().numpy()


class HPSv21:
    """HPSv2.1 in-process (needs the ``hpsv2`` package: open_clip + torchvision)."""

    def __init__(
        self,
        *,
        checkpoint: str = HPSV21_CHECKPOINT,
        sha256: str | None = None,
        allow_unpinned: bool = False,
        cache_dir: str = DEFAULT_CACHE,
        arch: str = "ViT-H-14",
        device: str = "cuda",
        batch_size: int = 16,
    ) -> None:
        self.checkpoint, self.sha256 = checkpoint, sha256
        self.allow_unpinned, self.cache_dir = allow_unpinned, cache_dir
        self.arch, self.device, self.batch_size = arch, torch.device(device), int(batch_size)
        self._loaded: tuple[Any, Any, Any] | None = None

    def load(self) -> tuple[Any, Any, Any]:
        if self._loaded is None:
            from hpsv2.src.open_clip import create_model_and_transforms, get_tokenizer

            model, _, preprocess = create_model_and_transforms(
                self.arch,
                None,  # no open_clip download: every weight comes from the HPS checkpoint
                precision="amp",
                device=self.device,
                jit=False,
                force_quick_gelu=False,
                force_custom_text=False,
                force_patch_dropout=False,
                force_image_size=None,
                pretrained_image=False,
                image_mean=None,
                image_std=None,
                light_augmentation=True,
                aug_cfg={},
                output_dict=True,
                with_score_predictor=False,
                with_region_predictor=False,
            )
            state = unwrap_state_dict(
                load_torch_weights(
                    self.checkpoint,
                    self.sha256,
                    allow_unpinned=self.allow_unpinned,
                    cache_dir=self.cache_dir,
                )
            )
            model.load_state_dict(state)
            model.eval().requires_grad_(False)
            self._loaded = (model, preprocess, get_tokenizer(self.arch))
        return self._loaded

    @torch.no_grad()
    def __call__(
        self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict] | None = None
    ) -> np.ndarray:
        from PIL import Image

        _check(images, prompts, metadata)
        model, preprocess, tokenizer = self.load()
        out = []
        for start in range(0, len(images), self.batch_size):
            sl = slice(start, start + self.batch_size)
            pix = torch.stack([preprocess(Image.fromarray(np.asarray(im))) for im in images[sl]])
            text = tokenizer(list(prompts[sl])).to(self.device)
            with torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                res = model(pix.to(self.device), text)
            img, txt = res["image_features"].float(), res["text_features"].float()
            out.append((img * txt).sum(-1))
        return torch.cat(out).double().cpu().numpy() if out else np.zeros(0)


def _backend(name: str, backend: str, local: Any, options: dict[str, Any], url: str | None = None):
    return backend_scorer(name, backend, local, options, default_url=url)


@SCORERS.register("pickscore")
def make_pickscore(backend: str = "local", **options: Any) -> Any:
    """``pickscore`` (PickScore_v1); options: model, processor, revision, device, dtype, ..."""
    return _backend("pickscore", backend, PickScore, options)


@SCORERS.register("clipscore")
def make_clipscore(backend: str = "local", **options: Any) -> Any:
    """``clipscore`` (CLIP ViT-L/14 cosine); options: model, scale, clamp_zero, device, ..."""
    return _backend("clipscore", backend, CLIPScore, options)


@SCORERS.register("aesthetic")
def make_aesthetic(backend: str = "local", **options: Any) -> Any:
    """``aesthetic`` (LAION MLP on CLIP ViT-L/14); options: model, head, sha256, device, ..."""
    return _backend("aesthetic", backend, Aesthetic, options)


@SCORERS.register("hpsv21")
def make_hpsv21(backend: str = "http", **options: Any) -> Any:
    """``hpsv21``: a client of the scorers-image service by default (``url``, default
    ``http://127.0.0.1:18087``), or in-process with ``backend: local`` (options / ``local``:
    checkpoint, sha256, device, batch_size)."""
    return _backend("hpsv21", backend, HPSv21, options, "http://127.0.0.1:18087")
