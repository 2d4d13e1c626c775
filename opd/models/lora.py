"""Named LoRA adapters on one diffusers transformer: configs, switching, state, files and merging.

The suite keeps every policy (student, teachers, EMA and "old" copies) as a named peft LoRA adapter
on one frozen backbone. peft's own switching (`set_adapter`, `enable_adapters`) also rewrites
`requires_grad` (it makes the activated adapter trainable and freezes the others), so this module
switches adapters layer by layer and then re-applies the trainable set chosen by the caller
(:func:`activate`). State dicts use peft's key names without the adapter name
(``{module}.lora_A.weight``); files use peft's folder layout (``adapter_config.json`` +
``adapter_model.safetensors`` with the ``base_model.model.`` prefix), which is also how the public
Flow-GRPO LoRAs ship, so one reader serves both. :func:`merge_factors` builds an exact
task-arithmetic merge of several adapters by concatenating their factors (rank = sum of ranks).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from peft import LoraConfig

    from opd.models.base import FlowModel

#: The attention projections of every SD3 joint block (image stream ``to_q/k/v``, ``to_out.0``)
#: and its added text-stream projections (``add_q/k/v_proj``, ``to_add_out``), spelled as
#: Flow-GRPO spells them. The ``attn.`` prefix matches the joint attention only: SD3.5's extra
#: image-only ``attn2`` (dual-attention layers) stays un-adapted, as in Flow-GRPO's LoRAs.
DEFAULT_TARGETS: tuple[str, ...] = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)

#: Adapter names that are reserved: ``"base"`` selects the backbone with every adapter disabled.
BASE = "base"

#: File names of the peft folder layout.
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_KEY_PREFIXES = ("base_model.model.", "transformer.", "model.")
_INIT_ALIASES = {"gaussian": "gaussian", "kaiming": True, "default": True, "zeros": True}


def make_lora_config(
    rank: int = 32,
    alpha: float = 64.0,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
    init: str = "gaussian",
    dropout: float = 0.0,
) -> LoraConfig:
    """A peft ``LoraConfig`` for the SD3 transformer.

    ``init``: ``"gaussian"`` (peft: A ~ N(0, 1/r), B = 0), ``"kaiming"`` / ``"zeros"`` /
    ``"default"`` (peft's default: A Kaiming-uniform, B = 0); both start exactly at the base
    model. ``"random"`` is handled by :meth:`FlowModel.add_adapter` (B drawn too, so the adapter
    differs from the base from the start: for tests and random teachers).
    """
    from peft import LoraConfig

    if init == "random":
        init = "gaussian"
    if init not in _INIT_ALIASES:
        raise ValueError(f"unknown LoRA init {init!r}; known: {sorted(_INIT_ALIASES)} or 'random'")
    return LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha),
        target_modules=list(target_modules),
        init_lora_weights=_INIT_ALIASES[init],
        lora_dropout=float(dropout),
    )


def tuner_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """All peft tuner layers (LoRA-wrapped linears) inside ``module``, with their paths."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]


def adapter_layers(module: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    """The LoRA layers that carry adapter ``name`` (an adapter may target a subset)."""
    return [(n, m) for n, m in tuner_layers(module) if name in getattr(m, "lora_A", {})]


def _check_plain_lora(path: str, layer: nn.Module, name: str) -> None:
    mag = getattr(layer, "lora_magnitude_vector", None)
    if mag is not None and name in mag:
        raise NotImplementedError(f"adapter {name!r} at {path} uses DoRA; only plain LoRA works")


def adapter_parameters(module: nn.Module, name: str) -> list[nn.Parameter]:
    """Adapter ``name``'s LoRA parameters (A then B per layer, layers in module order)."""
    params: list[nn.Parameter] = []
    for _, layer in adapter_layers(module, name):
        params.extend(layer.lora_A[name].parameters())
        params.extend(layer.lora_B[name].parameters())
    return params


def activate(layers: Iterable[nn.Module], name: str | None, trainable: str | None) -> None:
    """Make adapter ``name`` the only active one (``None``: all disabled) on ``layers``.

    Switching never changes ``requires_grad``: exactly the LoRA weights of adapter ``trainable``
    require grad before and after (none when it is ``None`` or :data:`BASE`). peft's public
    ``set_adapter`` / ``enable_adapters`` make the activated adapter trainable and freeze the
    others (and cost ~75 us per layer), so the fast path sets the two switch attributes peft's
    forward reads (``_active_adapter``, ``_disable_adapters``); layers without them (another peft
    version) go through the public API and get their grad flags re-applied.
    """
    for layer in layers:
        state = layer.__dict__
        if "_active_adapter" in state and "_disable_adapters" in state:
            # plain attributes: write them directly (nn.Module.__setattr__ is slow)
            if name is not None:
                state["_active_adapter"] = [name]
            state["_disable_adapters"] = name is None
            continue
        if name is None:  # pragma: no cover - other peft versions
            layer.enable_adapters(False)
        else:  # pragma: no cover - other peft versions
            layer.set_adapter(name)
            if layer.disable_adapters:
                layer.enable_adapters(True)
        set_requires_grad([layer], trainable)  # pragma: no cover


def set_requires_grad(layers: Iterable[nn.Module], trainable: str | None) -> None:
    """Exactly adapter ``trainable``'s LoRA weights on ``layers`` require grad (others frozen)."""
    for layer in layers:
        for attr in layer.adapter_layer_names:
            for key, sub in getattr(layer, attr).items():
                sub.requires_grad_(key == trainable)


def adapter_state_dict(module: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name`` as ``{module}.lora_A.weight`` / ``.lora_B.weight`` -> detached clones."""
    out: dict[str, torch.Tensor] = {}
    for path, layer in adapter_layers(module, name):
        _check_plain_lora(path, layer, name)
        out[f"{path}.lora_A.weight"] = layer.lora_A[name].weight.detach().clone()
        out[f"{path}.lora_B.weight"] = layer.lora_B[name].weight.detach().clone()
    return out


def strip_key(key: str, name: str | None = None) -> str:
    """Normalise a LoRA key from peft / diffusers files to ``{module}.lora_X.weight``."""
    for prefix in _KEY_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    if name is not None:
        key = key.replace(f".lora_A.{name}.", ".lora_A.").replace(f".lora_B.{name}.", ".lora_B.")
    return key


def load_adapter_state_dict(
    module: nn.Module, name: str, state: dict[str, torch.Tensor], *, strict: bool = True
) -> None:
    """Copy ``state`` (keys as from :func:`adapter_state_dict`, or peft file keys) into ``name``."""
    state = {strip_key(k, name): v for k, v in state.items()}
    expected = adapter_state_dict_keys(module, name)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if strict and (missing or unexpected):
        raise KeyError(
            f"adapter {name!r}: state dict mismatch; missing {missing[:4]} ({len(missing)}), "
            f"unexpected {unexpected[:4]} ({len(unexpected)})"
        )
    with torch.no_grad():
        for key, param in expected.items():
            if key in state:
                value = state[key]
                if value.shape != param.shape:
                    raise ValueError(f"{key}: shape {tuple(value.shape)} != {tuple(param.shape)}")
                param.copy_(value.to(device=param.device, dtype=param.dtype))


def adapter_state_dict_keys(module: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """``{module}.lora_X.weight`` -> the live parameter, for adapter ``name``."""
    out: dict[str, nn.Parameter] = {}
    for path, layer in adapter_layers(module, name):
        out[f"{path}.lora_A.weight"] = layer.lora_A[name].weight
        out[f"{path}.lora_B.weight"] = layer.lora_B[name].weight
    return out


def lora_deltas(
    module: nn.Module, name: str, dtype: torch.dtype = torch.float64
) -> dict[str, torch.Tensor]:
    """Effective weight change ``scaling * B @ A`` of adapter ``name`` per module path."""
    out: dict[str, torch.Tensor] = {}
    for path, layer in adapter_layers(module, name):
        _check_plain_lora(path, layer, name)
        a = layer.lora_A[name].weight.detach().to(dtype)
        b = layer.lora_B[name].weight.detach().to(dtype)
        out[path] = float(layer.scaling[name]) * (b @ a)
    return out


def merge_factors(
    module: nn.Module, names: Sequence[str], weights: Sequence[float]
) -> tuple[int, list[str], dict[str, torch.Tensor]]:
    """Factors of the exact merge ``sum_i w_i * scaling_i * B_i @ A_i`` of adapters ``names``.

    The merged adapter stacks the factors: ``A = [A_1; A_2; ...]`` and ``B = [w_1 s_1 B_1, w_2
    s_2 B_2, ...]`` with scaling 1 (alpha = rank), so ``B @ A`` is exactly the weighted sum of
    the low-rank deltas (a sum of rank-r deltas is generally of rank sum(r), so no rank-r merge
    can be exact). Modules an adapter does not target contribute zero blocks; every module is
    padded with zero rows/columns to one common rank. Returns (rank, target module paths, state
    dict in :func:`adapter_state_dict` keys).
    """
    if len(names) != len(weights) or not names:
        raise ValueError("merge needs one weight per adapter and at least one adapter")
    blocks: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    layers = dict(tuner_layers(module))
    for name, w in zip(names, weights, strict=True):
        found = adapter_layers(module, name)
        if not found:
            raise KeyError(f"no adapter named {name!r}")
        for path, layer in found:
            _check_plain_lora(path, layer, name)
            a = layer.lora_A[name].weight.detach()
            b = layer.lora_B[name].weight.detach()
            scale = float(w) * float(layer.scaling[name])
            blocks.setdefault(path, []).append((a, (b.double() * scale).to(b.dtype)))
    rank = max(sum(a.shape[0] for a, _ in parts) for parts in blocks.values())
    state: dict[str, torch.Tensor] = {}
    for path, parts in blocks.items():
        a_cat = torch.cat([a for a, _ in parts], dim=0)
        b_cat = torch.cat([b for _, b in parts], dim=1)
        pad = rank - a_cat.shape[0]
        if pad:
            a_cat = torch.cat([a_cat, a_cat.new_zeros(pad, a_cat.shape[1])], dim=0)
            b_cat = torch.cat([b_cat, b_cat.new_zeros(b_cat.shape[0], pad)], dim=1)
        state[f"{path}.lora_A.weight"] = a_cat.contiguous()
        state[f"{path}.lora_B.weight"] = b_cat.contiguous()
        if path not in layers:  # pragma: no cover - paths come from the same module
            raise KeyError(path)
    return rank, sorted(blocks), state


def config_to_dict(config: LoraConfig) -> dict[str, Any]:
    """A JSON-ready dict of a ``LoraConfig`` (sets become sorted lists)."""
    d = config.to_dict()
    for k, v in list(d.items()):
        if isinstance(v, set):
            d[k] = sorted(v)
        elif hasattr(v, "value"):  # enums
            d[k] = v.value
    return d


def config_from_dict(d: dict[str, Any]) -> LoraConfig:
    """A ``LoraConfig`` from a peft ``adapter_config.json`` dict (unknown keys dropped)."""
    from peft import LoraConfig

    known = {f.name for f in dataclasses.fields(LoraConfig)}
    drop = {"base_model_name_or_path", "revision", "peft_type", "task_type", "auto_mapping"}
    kwargs = {k: v for k, v in d.items() if k in known and k not in drop}
    kwargs["inference_mode"] = False
    if d.get("peft_type", "LORA") not in ("LORA", None):
        raise ValueError(f"not a LoRA adapter: peft_type {d.get('peft_type')!r}")
    return LoraConfig(**kwargs)


def write_adapter_dir(
    path: str | os.PathLike[str],
    config: LoraConfig,
    state: dict[str, torch.Tensor],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a peft-layout folder (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    d = config_to_dict(config)
    d["peft_type"] = "LORA"
    d["inference_mode"] = True
    if extra:
        d["opd"] = extra
    (out / CONFIG_NAME).write_text(json.dumps(d, indent=2, sort_keys=True, default=str))
    tensors = {f"base_model.model.{k}": v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    return out


def read_adapter_dir(path: str | os.PathLike[str]) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """Read a peft-layout LoRA folder: its config and its weights with normalised keys.

    Accepts ``adapter_model.safetensors`` (peft) or ``pytorch_lora_weights.safetensors``
    (diffusers); keys lose their ``base_model.model.`` / ``transformer.`` prefix.
    """
    from safetensors.torch import load_file

    folder = Path(path)
    cfg_file = folder / CONFIG_NAME
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{folder} holds no {CONFIG_NAME} (not a peft LoRA folder)")
    config = config_from_dict(json.loads(cfg_file.read_text()))
    for fname in (WEIGHTS_NAME, "pytorch_lora_weights.safetensors"):
        if (folder / fname).is_file():
            raw = load_file(str(folder / fname))
            break
    else:
        if (folder / "adapter_model.bin").is_file():
            raw = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
        else:
            raise FileNotFoundError(f"{folder} holds no {WEIGHTS_NAME}")
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        k = strip_key(key)
        # peft files never carry the adapter name; diffusers-saved ones may ("lora_A.default").
        k = k.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
        state[k] = value
    return config, state


def load_lora_from_dir(model: FlowModel, name: str, path: str | os.PathLike[str]) -> None:
    """Load a peft-format LoRA folder (e.g. a public Flow-GRPO LoRA) as adapter ``name``.

    The rank, alpha and targets come from the folder's ``adapter_config.json``; every weight in
    the file must land on a module of the model (strict), so a LoRA made for another
    architecture fails loudly instead of silently loading nothing.
    """
    config, state = read_adapter_dir(path)
    model.add_adapter(name, config=config)
    model.load_adapter_state_dict(name, state)
