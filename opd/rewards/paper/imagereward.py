"""``imagereward``: ImageReward-v1.0 (Xu et al., 2023), a BLIP-based human-preference reward.

Score: the BLIP text encoder attends to the ViT-L image features; an MLP maps the [CLS] state
to a reward, standardised with the model's own mean (0.16717...) and std (1.03333...) -- the
numbers of ImageReward's ``score``, computed in batches as Flow-GRPO does. Table 1's values
(-0.58 to 1.50) are on this scale.

ImageReward needs the ``image-reward`` package (BLIP, timm, fairscale, torchvision and an older
transformers), so it runs in the scorers image and the trainer's ``imagereward`` scorer is a
client of that service by default (``backend: http``, url ``http://127.0.0.1:18088``).
``backend: local`` builds it in-process: the pickled checkpoint (``ImageReward.pt``) is
checked against its pinned SHA-256 and read with ``torch.load(..., weights_only=True)`` --
ImageReward's own ``load`` unpickles without that guard, so it is not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from opd.registry import SCORERS
from opd.rewards.paper.service import backend_scorer
from opd.rewards.paper.weights import DEFAULT_CACHE, load_torch_weights, resolve_file

CHECKPOINT = "hf://THUDM/ImageReward/ImageReward.pt"
MED_CONFIG = "hf://THUDM/ImageReward/med_config.json"


class ImageRewardScorer:
    """ImageReward-v1.0 in-process (needs ``image-reward``); batched standardised rewards."""

    def __init__(
        self,
        *,
        checkpoint: str = CHECKPOINT,
        med_config: str = MED_CONFIG,
        sha256: str | None = None,
        allow_unpinned: bool = False,
        cache_dir: str = DEFAULT_CACHE,
        device: str = "cuda",
        batch_size: int = 16,
        max_length: int = 35,
    ) -> None:
        self.checkpoint, self.med_config, self.sha256 = checkpoint, med_config, sha256
        self.allow_unpinned, self.cache_dir = allow_unpinned, cache_dir
        self.device, self.batch_size, self.max_length = device, int(batch_size), int(max_length)
        self._model: Any = None

    def load(self) -> Any:
        if self._model is None:
            from ImageReward.ImageReward import ImageReward

            state = load_torch_weights(
                self.checkpoint,
                self.sha256,
                allow_unpinned=self.allow_unpinned,
                cache_dir=self.cache_dir,
            )
            med = resolve_file(self.med_config, self.cache_dir)
            model = ImageReward(device=self.device, med_config=str(med)).to(self.device)
            _missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected:
                raise KeyError(f"ImageReward checkpoint has unexpected keys {unexpected[:4]}")
            self._model = model.eval().requires_grad_(False)
        return self._model

    def __call__(
        self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict] | None = None
    ) -> np.ndarray:
        import torch
        from PIL import Image

        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images, {len(prompts)} prompts")
        model = self.load()
        out = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                sl = slice(start, start + self.batch_size)
                text = model.blip.tokenizer(
                    list(prompts[sl]),
                    padding="max_length",
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                pix = torch.stack(
                    [model.preprocess(Image.fromarray(np.asarray(im))) for im in images[sl]]
                ).to(self.device)
                img = model.blip.visual_encoder(pix)
                atts = torch.ones(img.shape[:-1], dtype=torch.long, device=img.device)
                hidden = model.blip.text_encoder(
                    text.input_ids,
                    attention_mask=text.attention_mask,
                    encoder_hidden_states=img,
                    encoder_attention_mask=atts,
                    return_dict=True,
                ).last_hidden_state[:, 0, :]
                reward = (model.mlp(hidden.float()) - model.mean) / model.std
                out.append(reward.reshape(-1).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)


@SCORERS.register("imagereward")
def make_imagereward(backend: str = "http", **options: Any) -> Any:
    """``imagereward``: a client of the scorers-image service by default, or in-process."""
    return backend_scorer(
        "imagereward", backend, ImageRewardScorer, options, default_url="http://127.0.0.1:18088"
    )
