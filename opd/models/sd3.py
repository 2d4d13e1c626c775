"""Stable Diffusion 3(.5) as a `FlowModel`: loading, prompt encoding and saving via diffusers.

The paper profile uses ``stabilityai/stable-diffusion-3.5-medium`` (a diffusers pipeline folder
or hub id). `load_sd3` loads it with ``StableDiffusion3Pipeline.from_pretrained`` (the real
component classes: SD3 transformer, ``AutoencoderKL``, two CLIP-with-projection towers, T5),
keeps the pipeline only for its ``encode_prompt`` (CLIP-L + CLIP-G penultimate states,
zero-padded to T5's width and concatenated with T5's states along the sequence; pooled = both
CLIP projections), and hands the transformer and the VAE to a latent `FlowModel`. `save_sd3`
writes the same pipeline layout back (the transformer without its LoRA weights). Tests use the
tiny random pipeline of `opd.models.tiny.build_tiny_sd3_pipeline_dir`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from opd.models.base import LATENT_FORMATS, FlowModel, LatentFormat, save_transformer
from opd.models.prompts import PromptEmbeds, PromptEncoder, warn_truncated

SD35_MEDIUM = "stabilityai/stable-diffusion-3.5-medium"
SD3_CONFIG_NAME = "opd_sd3.json"
_TEXT_PARTS = ("text_encoder", "text_encoder_2", "text_encoder_3")
_TOKENIZERS = ("tokenizer", "tokenizer_2", "tokenizer_3")


class SD3PromptEncoder(PromptEncoder):
    """SD3's three text encoders through the pipeline's own ``encode_prompt``.

    ``max_sequence_length`` is T5's token budget (diffusers' default 256; Flow-GRPO uses 128);
    the CLIP towers use their tokenizer's ``model_max_length`` (77 for SD3). Overlong prompts
    (for CLIP or for T5) raise a ``warnings.warn`` naming the prompt.
    """

    def __init__(self, pipe: Any, max_sequence_length: int = 256) -> None:
        super().__init__()
        self.pipe = pipe
        self.max_length = int(pipe.tokenizer_max_length)
        self.max_sequence_length = int(max_sequence_length)
        for name in _TEXT_PARTS:
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False)
                module.eval()
                self.add_module(name, module)

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        pipe = self.pipe
        warn_truncated(pipe.tokenizer, prompts, self.max_length, "CLIP")
        if getattr(pipe, "text_encoder_3", None) is not None:
            warn_truncated(pipe.tokenizer_3, prompts, self.max_sequence_length, "T5")
        device = next(self.parameters()).device
        hidden, _, pooled, _ = pipe.encode_prompt(
            prompt=list(prompts),
            prompt_2=None,
            prompt_3=None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return PromptEmbeds(hidden, pooled)


def load_sd3(
    path: str = SD35_MEDIUM,
    *,
    dtype: torch.dtype = torch.float32,
    resolution: int | None = None,
    max_sequence_length: int = 256,
    drop_t5: bool = False,
    vae_dtype: torch.dtype | None = None,
    **pipeline_kwargs: Any,
) -> FlowModel:
    """An SD3(.5) pipeline folder or hub id as a latent `FlowModel`.

    ``resolution`` defaults to what a saved ``opd_sd3.json`` says, else the transformer's
    ``sample_size * vae_scale_factor`` (1024 for SD3.5-M; the paper trains at 512).
    ``drop_t5`` loads no T5 (SD3 then feeds zeros for its tokens, saving ~9 GB in fp16).
    ``vae_dtype`` overrides the VAE's dtype (e.g. float32 decoding of an fp16 model).
    """
    from diffusers import StableDiffusion3Pipeline

    kwargs = dict(pipeline_kwargs)
    if drop_t5:
        kwargs.update(text_encoder_3=None, tokenizer_3=None)
    with warnings.catch_warnings():  # diffusers >= 0.42 renames torch_dtype to dtype
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        pipe = StableDiffusion3Pipeline.from_pretrained(path, torch_dtype=dtype, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    if vae_dtype is not None:
        pipe.vae.to(vae_dtype)
    meta: dict[str, Any] = {"source": str(path)}
    saved = Path(path) / SD3_CONFIG_NAME
    if saved.is_file():
        info = json.loads(saved.read_text())
        meta.update(info.get("meta", {}))
        if resolution is None:
            resolution = info.get("resolution")
        max_sequence_length = int(info.get("max_sequence_length", max_sequence_length))
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    if resolution is None:
        resolution = int(pipe.transformer.config.sample_size) * scale
    encoder = SD3PromptEncoder(pipe, max_sequence_length=max_sequence_length)
    return FlowModel(
        pipe.transformer,
        encoder,
        kind="latent",
        resolution=int(resolution),
        vae=pipe.vae,
        channels=3,
        meta=meta,
    )


def save_sd3(model: FlowModel, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` (an `SD3PromptEncoder` model) in the diffusers SD3 pipeline layout.

    Every component goes through its own ``save_pretrained``; the transformer is written
    without LoRA weights (adapters are saved separately by `FlowModel.save_pretrained`).
    """
    enc = model.prompt_encoder
    if not isinstance(enc, SD3PromptEncoder):
        raise TypeError("save_sd3 needs a model loaded by load_sd3")
    pipe = enc.pipe
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_transformer(model.transformer, out / "transformer")
    assert model.vae is not None
    model.vae.save_pretrained(out / "vae")
    pipe.scheduler.save_pretrained(out / "scheduler")
    for name in (*_TEXT_PARTS, *_TOKENIZERS):
        part = getattr(pipe, name, None)
        if part is not None:
            part.save_pretrained(out / name)
    pipe.save_config(out)  # model_index.json: component classes
    index = json.loads((out / "model_index.json").read_text())
    for name in (*_TEXT_PARTS, *_TOKENIZERS):
        if getattr(pipe, name, None) is None:
            index[name] = [None, None]
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    info = {
        "resolution": model.resolution,
        "max_sequence_length": enc.max_sequence_length,
        "meta": model.meta,
    }
    (out / SD3_CONFIG_NAME).write_text(json.dumps(info, indent=2, sort_keys=True))
    return out


LATENT_FORMATS["sd3"] = LatentFormat(load=load_sd3, save=save_sd3)
