"""Prompt encoding: :class:`PromptEmbeds` (the per-token hidden states and the pooled vector a
transformer call is conditioned on), the :class:`PromptEncoder` interface of `FlowModel`, and
:class:`ClipPromptEncoder` (one CLIP text model, the mini world's encoder; SD3's three encoders
are :class:`opd.models.sd3.SD3PromptEncoder`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


# --------------------------------------------------------------------------------------------
# prompt embeddings
# --------------------------------------------------------------------------------------------
@dataclass
class PromptEmbeds:
    """Per-prompt conditioning: token states ``hidden`` (B, L, D) and pooled ``pooled`` (B, P)."""

    hidden: Tensor
    pooled: Tensor

    def __post_init__(self) -> None:
        if self.hidden.shape[0] != self.pooled.shape[0]:
            raise ValueError(
                f"hidden batch {self.hidden.shape[0]} != pooled batch {self.pooled.shape[0]}"
            )

    def __len__(self) -> int:
        return int(self.hidden.shape[0])

    @property
    def batch_size(self) -> int:
        return len(self)

    def index(self, idx: Any) -> PromptEmbeds:
        """Rows ``idx`` (int, slice, index list / tensor, bool mask); an int keeps the batch dim."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        if isinstance(idx, list | tuple | np.ndarray):
            idx = torch.as_tensor(np.asarray(idx), device=self.hidden.device)
        if isinstance(idx, Tensor):
            idx = idx.to(self.hidden.device)
        return PromptEmbeds(self.hidden[idx], self.pooled[idx])

    def repeat_interleave(self, n: int) -> PromptEmbeds:
        """Each prompt ``n`` times in a row (prompt-major, as in GRPO groups)."""
        return PromptEmbeds(
            self.hidden.repeat_interleave(n, dim=0), self.pooled.repeat_interleave(n, dim=0)
        )

    def expand(self, n: int) -> PromptEmbeds:
        """A batch of one prompt broadcast to ``n`` rows (no-op when already ``n`` rows)."""
        if len(self) == n:
            return self
        if len(self) != 1:
            raise ValueError(f"cannot expand a batch of {len(self)} prompt embeddings to {n}")
        return PromptEmbeds(
            self.hidden.expand(n, *self.hidden.shape[1:]),
            self.pooled.expand(n, *self.pooled.shape[1:]),
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Moved / cast copy (a no-op returns the same tensors)."""
        return PromptEmbeds(
            self.hidden.to(device=device, dtype=dtype), self.pooled.to(device=device, dtype=dtype)
        )

    def detach(self) -> PromptEmbeds:
        return PromptEmbeds(self.hidden.detach(), self.pooled.detach())

    @classmethod
    def cat(cls, items: Sequence[PromptEmbeds]) -> PromptEmbeds:
        """Concatenate along the batch dimension."""
        if not items:
            raise ValueError("PromptEmbeds.cat of an empty list")
        return cls(
            torch.cat([e.hidden for e in items], dim=0), torch.cat([e.pooled for e in items], dim=0)
        )


# --------------------------------------------------------------------------------------------
# prompt encoders
# --------------------------------------------------------------------------------------------
class PromptEncoder(nn.Module):
    """Text -> `PromptEmbeds`; subclasses implement `encode` (run under the caller's grad mode)."""

    max_length: int = 0

    def encode(self, prompts: list[str]) -> PromptEmbeds:  # pragma: no cover - interface
        raise NotImplementedError


def warn_truncated(tokenizer: Any, prompts: Sequence[str], max_length: int, who: str) -> None:
    """``warnings.warn`` once per prompt whose token count exceeds ``max_length``."""
    ids = tokenizer(list(prompts), add_special_tokens=True, truncation=False, verbose=False)[
        "input_ids"
    ]
    for prompt, seq in zip(prompts, ids, strict=True):
        if len(seq) > max_length:
            warnings.warn(
                f"{who}: prompt {prompt!r} has {len(seq)} tokens; truncated to {max_length}",
                stacklevel=4,
            )


class ClipPromptEncoder(PromptEncoder):
    """One CLIP text tower (`CLIPTextModelWithProjection`) + a fast tokenizer (the mini world).

    ``hidden`` is the final layer's token states (padded to the tokenizer's max length),
    ``pooled`` the projected end-of-text state.
    """

    def __init__(self, text_encoder: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.max_length = int(tokenizer.model_max_length)
        self.text_encoder.requires_grad_(False)
        self.text_encoder.eval()

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        warn_truncated(self.tokenizer, prompts, self.max_length, "text encoder")
        tok = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = next(self.text_encoder.parameters()).device
        out = self.text_encoder(input_ids=tok["input_ids"].to(device))
        return PromptEmbeds(out.last_hidden_state, out.text_embeds)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        self.text_encoder.save_pretrained(Path(path) / "text_encoder")
        self.tokenizer.save_pretrained(Path(path) / "tokenizer")

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], dtype: torch.dtype = torch.float32
    ) -> ClipPromptEncoder:
        from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerFast

        te = CLIPTextModelWithProjection.from_pretrained(Path(path) / "text_encoder", dtype=dtype)
        tok = PreTrainedTokenizerFast.from_pretrained(Path(path) / "tokenizer")
        return cls(te, tok)
