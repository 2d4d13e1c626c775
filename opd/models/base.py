"""The model interface of the suite: `FlowModel`, a rectified-flow text-to-image model.

A `FlowModel` wraps a diffusers `SD3Transformer2DModel` (the velocity network), a prompt encoder
(a `PromptEncoder`: one CLIP text model in the mini world, SD3's three encoders in the paper
profile) and, for latent models, SD3's VAE. It gives the rest of the suite prompt embeddings
(`encode_prompts`), velocities with batched classifier-free guidance (`velocity`, `velocity_fn`
for `opd.sampling.rollout`), image decoding / encoding, and named LoRA adapters on the one
backbone (students, teachers, EMA copies). Adapter selection: every call takes ``adapter``;
``adapter=None`` means "the current adapter", which is the base model (all adapters disabled)
unless a ``with model.use_adapter(name):`` block says otherwise, and ``adapter="base"`` always
means the base model. Which LoRA weights require grad is set only by `set_trainable`, never by
switching. Saved folders come in two layouts, dispatched by `FlowModel.from_pretrained`: the
suite's own mini layout (``opd_model.json``) and the diffusers SD3 pipeline layout
(``model_index.json``), each optionally with an ``adapters/`` folder of peft-format LoRAs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from opd import calltime
from opd.models import lora as L
from opd.models.lora import BASE, DEFAULT_TARGETS
from opd.models.prompts import ClipPromptEncoder, PromptEmbeds, PromptEncoder

MINI_CONFIG_NAME = "opd_model.json"
ADAPTERS_DIR = "adapters"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------
def _as_time(t: float | Tensor, batch: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float32, device=device)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must be a float or a ({batch},) tensor, got shape {tuple(t.shape)}")
    return t


def images_to_unit(images: np.ndarray | Tensor, device: torch.device | str = "cpu") -> Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {tuple(x.shape)}")
    return (x.to(device=device, dtype=torch.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def unit_to_images(x: Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, 3): clamp, scale, round."""
    x = x.detach().float().clamp(-1.0, 1.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    u8 = ((x + 1.0) * 127.5).round().to(torch.uint8)
    return u8.permute(0, 2, 3, 1).cpu().numpy()


class FlowModel(nn.Module):
    """A rectified-flow text-to-image model: SD3 transformer + prompt encoder (+ VAE).

    Args:
        transformer: a diffusers ``SD3Transformer2DModel``.
        prompt_encoder: a `PromptEncoder`.
        kind: ``"pixel"`` (states are images in [-1, 1]) or ``"latent"`` (states are SD3 VAE
            latents, already scaled and shifted).
        resolution: image side in pixels.
        vae: an ``AutoencoderKL`` (latent models only).
        channels: image channels of a pixel model (3, or 1 for greyscale).
    """

    def __init__(
        self,
        transformer: nn.Module,
        prompt_encoder: PromptEncoder,
        *,
        kind: str = "pixel",
        resolution: int,
        vae: nn.Module | None = None,
        channels: int = 3,
        meta: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("pixel", "latent"):
            raise ValueError(f"kind must be 'pixel' or 'latent', got {kind!r}")
        if kind == "latent" and vae is None:
            raise ValueError("a latent model needs a VAE")
        self.transformer = transformer
        self.prompt_encoder = prompt_encoder
        self.vae = vae
        self.kind = kind
        self.resolution = int(resolution)
        self.channels = int(channels)
        self.meta: dict[str, Any] = dict(meta or {})
        self._active: str | None = None  # logical adapter for adapter=None calls (None = base)
        self._trainable: str | None = None  # adapter name, BASE (full weights) or None
        self._empty: PromptEmbeds | None = None
        self._tuner_cache: list[nn.Module] | None = None
        self.counter: Any = None  # a ComputeCounter inside `counting`: every call counted
        self.transformer.requires_grad_(False)
        if self.vae is not None:
            self.vae.requires_grad_(False)
            self.vae.eval()
        if kind == "pixel" and transformer.config.in_channels != channels:
            raise ValueError(
                f"pixel model: transformer has {transformer.config.in_channels} input channels, "
                f"images {channels}"
            )

    # ---------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def state_shape(self) -> tuple[int, int, int]:
        """Per-sample state shape (C, H, W), as `opd.sampling.rollout` takes it."""
        return self.latent_shape(1)[1:]

    def latent_shape(self, n: int) -> tuple[int, int, int, int]:
        """Shape of a batch of ``n`` states (N, C, H, W)."""
        side = self.resolution // self.vae_scale_factor
        return (int(n), int(self.transformer.config.in_channels), side, side)

    # ---------------------------------------------------------------- prompts
    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> PromptEmbeds:
        return self.prompt_encoder.encode(prompts)

    def encode_prompts(self, prompts: Sequence[str], *, grad: bool = False) -> PromptEmbeds:
        """Embed ``prompts``; ``""`` is the unconditional prompt (its embedding is cached).

        Overlong prompts are truncated to the tokenizer's max length with a warning naming
        them. ``grad=True`` runs the encoder with autograd (for training a text encoder; the
        cache is cleared since the encoder is changing).
        """
        if isinstance(prompts, str):
            raise TypeError("encode_prompts takes a list of prompts, not a string")
        prompts = [str(p) for p in prompts]
        if grad:
            self._empty = None
            return self.prompt_encoder.encode(prompts)
        if not prompts:
            raise ValueError("encode_prompts needs at least one prompt")
        empty = [i for i, p in enumerate(prompts) if p == ""]
        if not empty:
            return self._encode(prompts)
        e = self.empty_embeds(1)
        if len(empty) == len(prompts):
            n = len(prompts)
            return PromptEmbeds(
                e.hidden.expand(n, *e.hidden.shape[1:]).clone(),
                e.pooled.expand(n, *e.pooled.shape[1:]).clone(),
            )
        full = [i for i, p in enumerate(prompts) if p != ""]
        enc = self._encode([prompts[i] for i in full])
        hidden = enc.hidden.new_empty((len(prompts), *enc.hidden.shape[1:]))
        pooled = enc.pooled.new_empty((len(prompts), *enc.pooled.shape[1:]))
        hidden[full] = enc.hidden
        pooled[full] = enc.pooled
        hidden[empty] = e.hidden.to(hidden)
        pooled[empty] = e.pooled.to(pooled)
        return PromptEmbeds(hidden, pooled)

    def empty_embeds(self, n: int) -> PromptEmbeds:
        """The unconditional embedding (``""``) broadcast to ``n`` rows (a view; do not write)."""
        if self._empty is None or self._empty.hidden.device != self.device:
            self._empty = self._encode([""])
        return self._empty.expand(n)

    def clear_prompt_cache(self) -> None:
        """Forget the cached unconditional embedding (after changing the text encoder)."""
        self._empty = None

    # ---------------------------------------------------------------- velocity
    def _forward(self, x: Tensor, t: Tensor, embeds: PromptEmbeds) -> Tensor:
        dtype = self.dtype
        with calltime.timed("forward_grad" if torch.is_grad_enabled() else "forward"):
            out = self.transformer(
                hidden_states=x.to(dtype),
                encoder_hidden_states=embeds.hidden.to(device=x.device, dtype=dtype),
                pooled_projections=embeds.pooled.to(device=x.device, dtype=dtype),
                timestep=(t * 1000.0).to(dtype),
                return_dict=False,
            )[0]
        if self.counter is not None:  # a CFG call's rows are both halves of its batch
            self.counter.forward(x.shape[0], grad=out.requires_grad)
        return out.to(x.dtype)

    @contextlib.contextmanager
    def counting(self, counter: Any) -> Iterator[None]:
        """Count every transformer call inside the block on ``counter`` (a
        :class:`~opd.training.compute.ComputeCounter`): one model evaluation per row of the
        batch (a CFG call's unconditional and conditional halves both count) and two more per
        row whose output carries a gradient (its backward). The training loop counts each
        optimizer step this way, so a method's compute is counted where the model runs."""
        previous, self.counter = self.counter, counter
        try:
            yield
        finally:
            self.counter = previous

    def velocity(
        self,
        x: Tensor,
        t: float | Tensor,
        embeds: PromptEmbeds,
        *,
        guidance_scale: float = 1.0,
        adapter: str | None = None,
        uncond: PromptEmbeds | None = None,
    ) -> Tensor:
        """Predicted velocity ``v ~ eps - x0`` at states ``x`` (B, C, H, W) and times ``t``.

        ``t`` in [0, 1] (float or (B,)); the transformer sees ``timestep = 1000 t`` (diffusers'
        SD3 convention, sigma * 1000). With ``guidance_scale != 1`` this is classifier-free
        guidance ``v_u + s (v_c - v_u)``, conditional and unconditional rows in one batched
        forward; ``uncond`` defaults to the ``""`` embedding. ``adapter``: ``None`` = the current
        adapter (the base model outside a `use_adapter` block), ``"base"`` = all adapters off,
        a name = that adapter alone. Runs under the caller's grad mode; returns ``x.dtype``.
        """
        batch = x.shape[0]
        tt = _as_time(t, batch, x.device)
        with self._switched(adapter):
            if guidance_scale == 1.0:
                return self._forward(x, tt, embeds.expand(batch))
            pair = self._guidance_pair(embeds, uncond, batch)
            return self._guided(x, tt, pair, guidance_scale)

    def _guidance_pair(
        self, embeds: PromptEmbeds, uncond: PromptEmbeds | None, batch: int
    ) -> PromptEmbeds:
        """The CFG batch's conditioning: ``batch`` unconditional rows, then the prompts'."""
        un = (uncond if uncond is not None else self.empty_embeds(batch)).expand(batch)
        return PromptEmbeds.cat([un, embeds.expand(batch)])

    def _guided(self, x: Tensor, tt: Tensor, pair: PromptEmbeds, scale: float) -> Tensor:
        """CFG ``v_u + s (v_c - v_u)`` from one forward of the doubled batch."""
        v_u, v_c = self._forward(torch.cat([x, x]), torch.cat([tt, tt]), pair).chunk(2)
        return v_u + scale * (v_c - v_u)

    def velocity_fn(
        self,
        embeds: PromptEmbeds,
        *,
        guidance_scale: float = 1.0,
        adapter: str | None = None,
        uncond: PromptEmbeds | None = None,
    ) -> Callable[[Tensor, float | Tensor], Tensor]:
        """Closure ``(x, t) -> v`` for `opd.sampling.rollout` and the trainers' per-step calls
        (arguments as in `velocity`, same values bit for bit). The CFG batch's conditioning
        (unconditional and prompt rows concatenated) is built once per batch size and reused
        by every call, so use a closure while the prompt encoder does not change."""
        pairs: dict[int, PromptEmbeds] = {}

        def fn(x: Tensor, t: float | Tensor) -> Tensor:
            if guidance_scale == 1.0:
                return self.velocity(x, t, embeds, adapter=adapter)
            batch = x.shape[0]
            pair = pairs.get(batch)
            if pair is None:
                pair = pairs[batch] = self._guidance_pair(embeds, uncond, batch)
            tt = _as_time(t, batch, x.device)
            with self._switched(adapter):
                return self._guided(x, tt, pair, guidance_scale)

        return fn

    # ---------------------------------------------------------------- images
    @torch.no_grad()
    def decode(self, x: Tensor, *, batch_size: int = 32) -> np.ndarray:
        """States -> uint8 images (N, H, W, 3). Pixel: [-1, 1] -> [0, 255]; latent: SD3's VAE."""
        if self.kind == "pixel":
            return unit_to_images(x)
        assert self.vae is not None
        cfg = self.vae.config
        out = []
        for chunk in x.split(batch_size):
            z = chunk.to(self.vae.device, self.vae.dtype) / cfg.scaling_factor + (
                cfg.shift_factor or 0.0
            )
            out.append(unit_to_images(self.vae.decode(z, return_dict=False)[0]))
        return np.concatenate(out, axis=0)

    @torch.no_grad()
    def encode_images(
        self,
        images: np.ndarray | Tensor,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
        batch_size: int = 32,
    ) -> Tensor:
        """uint8 images (N, H, W, C) -> float32 states; the inverse of `decode`.

        Latent models use the VAE posterior mode (``sample=True`` draws from it instead) and SD3's
        ``(z - shift_factor) * scaling_factor``.
        """
        x = images_to_unit(images, device=self.device)
        if self.kind == "pixel":
            if self.channels == 1 and x.shape[1] == 3:
                x = x.mean(dim=1, keepdim=True)
            return x
        assert self.vae is not None
        cfg = self.vae.config
        out = []
        for chunk in x.split(batch_size):
            dist = self.vae.encode(chunk.to(self.vae.dtype), return_dict=False)[0]
            z = dist.sample(generator) if sample else dist.mode()
            out.append(((z - (cfg.shift_factor or 0.0)) * cfg.scaling_factor).float())
        return torch.cat(out, dim=0)

    # ---------------------------------------------------------------- adapters
    def _layers(self) -> list[nn.Module]:
        if self._tuner_cache is None:
            self._tuner_cache = [m for _, m in L.tuner_layers(self.transformer)]
        return self._tuner_cache

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> FlowModel:
        # nn.Module.to / cuda / half route through _apply; moving invalidates the cached "" embeds.
        self._empty = None
        return super()._apply(fn, *args, **kwargs)

    def adapter_names(self) -> list[str]:
        """Names of the attached adapters, in the order they were added."""
        return list(getattr(self.transformer, "peft_config", {}) or {})

    def has_adapter(self, name: str) -> bool:
        return name in self.adapter_names()

    def adapter_config(self, name: str) -> Any:
        """The adapter's peft ``LoraConfig``."""
        self._check_adapter(name)
        return self.transformer.peft_config[name]

    def _check_adapter(self, name: str) -> None:
        if name not in self.adapter_names():
            raise KeyError(f"no adapter named {name!r}; attached: {self.adapter_names()}")

    def _resolve(self, adapter: str | None) -> str | None:
        if adapter is None:
            return self._active
        if adapter == BASE:
            return None
        self._check_adapter(adapter)
        return adapter

    def _sync(self, name: str | None) -> None:
        L.activate(self._layers(), name, self._trainable)

    @contextlib.contextmanager
    def _switched(self, adapter: str | None) -> Iterator[None]:
        target = self._resolve(adapter)
        if target == self._active:
            yield
            return
        self._sync(target)
        try:
            yield
        finally:
            self._sync(self._active)

    @contextlib.contextmanager
    def use_adapter(self, name: str | None) -> Iterator[FlowModel]:
        """Within the block, ``adapter=None`` calls (and direct transformer calls) use ``name``.

        ``None`` or ``"base"`` selects the base model; the previous choice is restored on exit.
        """
        previous = self._active
        self._active = self._resolve(BASE if name is None else name)
        self._sync(self._active)
        try:
            yield self
        finally:
            self._active = previous
            self._sync(previous)

    #: Alias named as in docs/ARCHITECTURE.md.
    adapter = use_adapter

    @property
    def active_adapter(self) -> str | None:
        """The adapter ``adapter=None`` calls use now (``None`` = base model)."""
        return self._active

    def add_adapter(
        self,
        name: str,
        rank: int = 32,
        alpha: float = 64.0,
        target_modules: Sequence[str] = DEFAULT_TARGETS,
        init: str = "gaussian",
        *,
        dropout: float = 0.0,
        seed: int | None = None,
        random_std: float = 0.02,
        config: Any = None,
    ) -> None:
        """Attach LoRA adapter ``name`` (default: the paper's r 32 / alpha 64 on attention).

        ``init``: ``"gaussian"`` / ``"kaiming"`` (= ``"zeros"``, B = 0) start at the base model;
        ``"random"`` also draws B ~ N(0, random_std) so the adapter differs from the base at
        once. ``seed`` makes the initialisation reproducible without touching the global RNG. A
        ready peft ``config`` overrides rank/alpha/targets/init. The new adapter is neither
        active nor trainable until chosen (`use_adapter`, ``adapter=``, `set_trainable`).
        """
        import copy

        if name == BASE or not name:
            raise ValueError(f"adapter name {name!r} is reserved")
        if self.has_adapter(name):
            raise ValueError(f"adapter {name!r} already exists")
        cfg = copy.deepcopy(config) if config is not None else None
        if cfg is None:
            cfg = L.make_lora_config(rank, alpha, target_modules, init, dropout)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self._tuner_cache = None
            with warnings.catch_warnings():  # peft warns on every adapter after the first
                warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                self.transformer.add_adapter(cfg, adapter_name=name)
            if config is None and init == "random":
                with torch.no_grad():
                    for p in L.adapter_parameters(self.transformer, name)[1::2]:
                        p.normal_(0.0, random_std)
        if not L.adapter_layers(self.transformer, name):
            self.transformer.delete_adapters(name)
            self._tuner_cache = None
            raise ValueError(f"adapter {name!r}: no module matched {list(cfg.target_modules)}")
        # diffusers' add_adapter activates the new adapter and peft freezes the base weights.
        self.set_trainable(self._trainable)
        self._sync(self._active)

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` (it must not be the current or trainable one)."""
        self._check_adapter(name)
        if name in (self._active, self._trainable):
            raise ValueError(f"adapter {name!r} is active or trainable; switch away first")
        with warnings.catch_warnings():  # peft re-activates some other adapter and says so
            warnings.filterwarnings("ignore", message=".*which is now deleted.*")
            self.transformer.delete_adapters(name)
        self._tuner_cache = None
        # peft's re-activation also rewrote requires_grad: restore our choice and our switch
        L.set_requires_grad(self._layers(), self._trainable)
        self._sync(self._active)

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        """Adapter ``name``'s LoRA parameters (A, B per adapted module)."""
        self._check_adapter(name)
        return L.adapter_parameters(self.transformer, name)

    def adapter_named_parameters(self, name: str) -> list[tuple[str, nn.Parameter]]:
        """``({module}.lora_X.weight, live parameter)`` pairs of adapter ``name``.

        Keys do not contain the adapter name, so two adapters of the same shape (a student and
        its EMA or old-policy copy) share keys.
        """
        self._check_adapter(name)
        return list(L.adapter_state_dict_keys(self.transformer, name).items())

    def adapter_info(self, name: str) -> dict[str, Any]:
        """Rank and alpha of adapter ``name`` (what is needed to re-create it)."""
        cfg = self.adapter_config(name)
        return {
            "rank": int(cfg.r),
            "alpha": float(cfg.lora_alpha),
            "targets": sorted(cfg.target_modules),
        }

    def set_trainable(self, name: str | None, *, text_encoder: bool = False) -> None:
        """Choose what requires grad: adapter ``name``'s LoRA weights only; ``"base"``: all
        backbone weights (full fine-tuning, adapters frozen), plus the text encoder when
        ``text_encoder`` (pretraining; encode with ``encode_prompts(..., grad=True)``);
        ``None``: nothing. Switching adapters never changes this choice."""
        if name not in (None, BASE):
            self._check_adapter(name)
        if text_encoder and name != BASE:
            raise ValueError("text_encoder=True needs set_trainable('base')")
        self._trainable = name
        for pname, p in self.transformer.named_parameters():
            p.requires_grad_(name == BASE and "lora_" not in pname)
        L.set_requires_grad(self._layers(), name)
        self.prompt_encoder.requires_grad_(text_encoder)
        if text_encoder:
            self._empty = None

    @property
    def trainable(self) -> str | None:
        return self._trainable

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters (transformer, text encoder) that currently require grad."""
        return [p for p in self.parameters() if p.requires_grad]

    def adapter_state_dict(self, name: str) -> dict[str, Tensor]:
        """Detached copies of adapter ``name``'s weights (``{module}.lora_A.weight`` keys)."""
        self._check_adapter(name)
        return L.adapter_state_dict(self.transformer, name)

    def load_adapter_state_dict(self, name: str, state: dict[str, Tensor]) -> None:
        """Copy weights into existing adapter ``name`` (strict key and shape check)."""
        self._check_adapter(name)
        L.load_adapter_state_dict(self.transformer, name, state)

    def copy_adapter(self, src: str, dst: str) -> None:
        """New adapter ``dst`` with ``src``'s config and weights (EMA / old-policy copies)."""
        self.add_adapter(dst, config=self.adapter_config(src))
        self.load_adapter_state_dict(dst, self.adapter_state_dict(src))

    def lora_deltas(self, name: str, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
        """Effective weight changes ``scaling * B @ A`` of adapter ``name`` per module."""
        self._check_adapter(name)
        return L.lora_deltas(self.transformer, name, dtype)

    def save_adapter(self, name: str, path: str | os.PathLike[str]) -> Path:
        """Write adapter ``name`` as a peft-format folder (config json + safetensors)."""
        self._check_adapter(name)
        cfg = self.adapter_config(name)
        extra = {"name": name, "rank": int(cfg.r), "alpha": float(cfg.lora_alpha)}
        return L.write_adapter_dir(path, cfg, self.adapter_state_dict(name), extra)

    def load_adapter(self, name: str, path: str | os.PathLike[str]) -> None:
        """Attach the peft-format folder ``path`` as adapter ``name`` (see `save_adapter`)."""
        L.load_lora_from_dir(self, name, path)

    def merge_adapters(self, names: Sequence[str], weights: Sequence[float], new_name: str) -> None:
        """Task-arithmetic merge: new adapter with ``delta W = sum_i w_i delta W_i`` exactly.

        Implemented by concatenating the LoRA factors (``A`` stacked, ``B`` scaled by
        ``w_i * scaling_i`` and stacked), so the merged rank is the sum of the ranks and its
        scaling is 1; see `opd.models.lora.merge_factors`.
        """
        for n in names:
            self._check_adapter(n)
        rank, targets, state = L.merge_factors(self.transformer, names, weights)
        self.add_adapter(new_name, rank=rank, alpha=float(rank), target_modules=targets)
        self.load_adapter_state_dict(new_name, state)

    # ---------------------------------------------------------------- files
    def save_pretrained(self, path: str | os.PathLike[str], *, adapters: bool = True) -> Path:
        """Save the model (backbone without LoRA weights) and, if ``adapters``, every adapter
        under ``adapters/<name>/``. Pixel models use the mini layout (``opd_model.json``),
        latent SD3 models the diffusers pipeline layout."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        if self.kind == "pixel":
            if not isinstance(self.prompt_encoder, ClipPromptEncoder):
                raise TypeError("the mini layout needs a ClipPromptEncoder")
            save_transformer(self.transformer, out / "transformer")
            self.prompt_encoder.save_pretrained(out)
            meta = {
                "format_version": FORMAT_VERSION,
                "kind": "pixel",
                "resolution": self.resolution,
                "channels": self.channels,
                "meta": self.meta,
            }
            (out / MINI_CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
        else:
            _latent_format().save(self, out)
        adir = out / ADAPTERS_DIR
        if adir.exists():
            shutil.rmtree(adir)
        if adapters:
            for name in self.adapter_names():
                self.save_adapter(name, adir / name)
        return out

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        *,
        adapters: bool = True,
        **kwargs: Any,
    ) -> FlowModel:
        """Load a saved model: the mini layout (``opd_model.json``), a diffusers SD3 pipeline
        folder (``model_index.json``) or, for a non-existing path, a hub id of an SD3 pipeline
        (e.g. ``stabilityai/stable-diffusion-3.5-medium``; needs network access). Saved
        ``adapters/*`` are attached too when ``adapters``. Extra ``kwargs`` go to the SD3
        loader (`opd.models.sd3.load_sd3`, registered in :data:`LATENT_FORMATS`)."""
        p = Path(path)
        if (p / MINI_CONFIG_NAME).is_file():
            meta = json.loads((p / MINI_CONFIG_NAME).read_text())
            if meta.get("kind") != "pixel":
                raise ValueError(f"{p}: unsupported mini model kind {meta.get('kind')!r}")
            from diffusers import SD3Transformer2DModel

            with warnings.catch_warnings():  # diffusers >= 0.42 renames torch_dtype to dtype
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                tr = SD3Transformer2DModel.from_pretrained(p / "transformer", torch_dtype=dtype)
            enc = ClipPromptEncoder.from_pretrained(p, dtype=dtype)
            tiny = (meta.get("meta") or {}).get("tiny_config") or {}
            set_ff_gelu(tr, tiny.get("ff_gelu", "tanh"))
            model = cls(
                tr,
                enc,
                kind="pixel",
                resolution=meta["resolution"],
                channels=meta.get("channels", 3),
                meta=meta.get("meta", {}),
            )
        elif (p / "model_index.json").is_file() or (not p.exists() and _is_hub_id(str(path))):
            model = _latent_format().load(str(path), dtype=dtype, **kwargs)
        else:
            raise FileNotFoundError(
                f"{p} is neither a mini model folder ({MINI_CONFIG_NAME}), a diffusers pipeline "
                "folder (model_index.json) nor a hub id (owner/name)"
            )
        model.to(device)
        realign_(model)
        adir = p / ADAPTERS_DIR
        if adapters and adir.is_dir():
            for sub in sorted(adir.iterdir()):
                if (sub / L.CONFIG_NAME).is_file():
                    model.load_adapter(sub.name, sub)
        return model


@dataclass(frozen=True)
class LatentFormat:
    """How latent (SD3) models are loaded and saved: :mod:`opd.models.sd3` registers its loader
    here when the package is imported, so that this module, which it builds on, never imports
    it."""

    load: Callable[..., FlowModel]
    save: Callable[[FlowModel, Path], Path]


LATENT_FORMATS: dict[str, LatentFormat] = {}


def _latent_format() -> LatentFormat:
    if "sd3" not in LATENT_FORMATS:  # registered by opd.models.sd3, which opd.models imports
        raise RuntimeError("no SD3 loader registered: import opd.models (not only its base)")
    return LATENT_FORMATS["sd3"]


#: ``TinyModelConfig.ff_gelu`` -> the ``approximate`` argument of diffusers' GELU module.
FF_GELU: dict[str, str] = {"tanh": "tanh", "exact": "none"}


def set_ff_gelu(transformer: nn.Module, mode: str) -> int:
    """Make every feed-forward GELU of an SD3 transformer the ``mode`` form ("tanh", as SD3,
    or "exact"); returns how many modules were set. diffusers builds them as tanh GELUs and
    saves no activation in the config, so a mini model saved with "exact" gets it again here on
    load (from ``tiny_config.ff_gelu`` in its metadata)."""
    from diffusers.models.activations import GELU

    if mode not in FF_GELU:
        raise ValueError(f"ff_gelu must be one of {sorted(FF_GELU)}, got {mode!r}")
    n = 0
    for module in transformer.modules():
        if isinstance(module, GELU):
            module.approximate = FF_GELU[mode]
            n += 1
    return n


def _is_hub_id(name: str) -> bool:
    """``owner/name`` without a leading ``/`` or ``.``: a mistyped local path is no hub id."""
    import re

    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) is not None


def realign_(module: nn.Module, alignment: int = 64) -> int:
    """Copy every parameter / buffer whose storage is not ``alignment``-byte aligned into a fresh
    tensor; returns how many moved.

    Loaders (transformers, diffusers via safetensors) hand back CPU tensors that are views into
    one file buffer at arbitrary offsets, and MKL's kernels pick different code paths (and round
    differently) for unaligned operands: without this, a reloaded model differs from the saved
    one in the last bits. Fresh allocations are 64-byte aligned, like the original model's.
    """
    moved = 0
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.device.type == "cpu" and t.numel() and t.data_ptr() % alignment:
                t.data = t.data.clone()
                moved += 1
    return moved


def base_state_dict(transformer: nn.Module) -> dict[str, Tensor]:
    """The backbone's own weights, without LoRA tensors and with peft's ``base_layer`` unwrapped."""
    out: dict[str, Tensor] = {}
    for key, value in transformer.state_dict().items():
        if "lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value.detach().cpu().contiguous()
    return out


def save_transformer(transformer: nn.Module, path: str | os.PathLike[str]) -> None:
    """diffusers ``save_pretrained`` layout for the backbone alone (LoRA weights excluded)."""
    out = Path(path)
    if not L.tuner_layers(transformer):
        transformer.save_pretrained(out, safe_serialization=True)
        return
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    transformer.save_config(out)
    save_file(
        base_state_dict(transformer),
        str(out / "diffusion_pytorch_model.safetensors"),
        metadata={"format": "pt"},
    )
