"""``unifiedreward``: UnifiedReward (a Qwen2.5-VL judge) through an OpenAI-compatible endpoint.

The judge model (``CodeGoat24/UnifiedReward-7b-v1.5``, pinned in ``scorer_options``) is served
by sglang or vLLM (``python -m sglang.launch_server --model-path ... --port 17140`` or ``vllm
serve ...``), bound to 127.0.0.1. For each image the client sends one chat-completions request
(temperature 0) holding the image as a base64 PNG data URL and Flow-GRPO's point-wise question
(caption alignment and overall quality, "assign a score from 1 to 5 after 'Final Score:'"),
and parses the number after ``Final Score:`` (1-5; Table 1 reports this raw scale).

Requests run concurrently (``concurrency``). A request that fails (connection error, timeout,
HTTP 5xx/429, a reply without a parsable score) is retried ``retries`` times with exponential
backoff; after that the call raises :class:`~opd.rewards.paper.service.ServiceError` naming the
endpoint and the last failure. A score is never replaced by 0.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from opd.registry import SCORERS
from opd.rewards.paper.service import ServiceError

QUESTION = (
    "<image>\nYou are given a text caption and a generated image based on that caption. Your "
    "task is to evaluate this image based on two key criteria:\n1. Alignment with the Caption: "
    "Assess how well this image aligns with the provided caption. Consider the accuracy of "
    "depicted objects, their relationships, and attributes as described in the caption.\n2. "
    "Overall Image Quality: Examine the visual quality of this image, including clarity, detail "
    "preservation, color accuracy, and overall aesthetic appeal.\nBased on the above criteria, "
    "assign a score from 1 to 5 after 'Final Score:'.\nYour task is provided as follows:\n"
    "Text Caption: [{prompt}]"
)
SCORE_PATTERN = re.compile(r"Final Score:\s*([1-5](?:\.\d+)?)")


class ParseError(ValueError):
    """A judge reply without a score."""


def parse_score(text: str) -> float:
    """The 1-5 score after ``Final Score:`` in a judge reply (``ParseError`` if absent)."""
    match = SCORE_PATTERN.search(text or "")
    if match is None:
        raise ParseError(f"no 'Final Score: <1-5>' in reply {str(text)[:200]!r}")
    return float(match.group(1))


def image_data_url(image: np.ndarray, size: int | None = None) -> str:
    """A ``data:image/png;base64,...`` URL of a uint8 (H, W, 3) image (resized if ``size``)."""
    from PIL import Image

    pil = Image.fromarray(np.asarray(image, dtype=np.uint8))
    if size and pil.size != (size, size):
        pil = pil.resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class UnifiedRewardClient:
    """Scores images with a UnifiedReward judge behind an OpenAI-compatible chat endpoint."""

    def __init__(
        self,
        *,
        base_url: str = "http://127.0.0.1:17140/v1",
        model: str = "UnifiedReward-7b-v1.5",
        api_key_env: str = "OPENAI_API_KEY",
        question: str = QUESTION,
        resize: int | None = 512,
        temperature: float = 0.0,
        max_tokens: int = 512,
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        concurrency: int = 16,
        model_id: str | None = None,
        revision: str | None = None,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.question, self.resize = model, question, resize
        self.api_key = os.environ.get(api_key_env, "EMPTY")
        self.temperature, self.max_tokens = float(temperature), int(max_tokens)
        self.timeout, self.retries = float(timeout), int(retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.concurrency = max(1, int(concurrency))
        self.model_id, self.revision = model_id, revision  # what the server must load (docs)

    def request_body(self, image: np.ndarray, prompt: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": image_data_url(image, self.resize)},
                        },
                        {"type": "text", "text": self.question.format(prompt=prompt)},
                    ],
                }
            ],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def _post(self, body: bytes) -> str:
        req = urllib.request.Request(
            self.url,
            data=body,
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self.api_key}",
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            text = err.read()[:300].decode("utf-8", "replace")
            if 400 <= err.code < 500 and err.code not in (408, 429):
                raise ServiceError(f"{self.url}: HTTP {err.code}: {text}") from None
            raise ConnectionError(f"HTTP {err.code}: {text}") from None
        try:
            reply = json.loads(raw)
            return str(reply["choices"][0]["message"]["content"])
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            raise ParseError(f"not a chat-completions reply: {raw[:200]!r}") from None

    def score_one(self, image: np.ndarray, prompt: str) -> float:
        body = json.dumps(self.request_body(image, prompt)).encode("utf-8")
        errors: list[str] = []
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))
            try:
                return parse_score(self._post(body))
            except (OSError, ValueError, TimeoutError) as err:
                errors.append(f"{type(err).__name__}: {err}")
        raise ServiceError(
            f"UnifiedReward at {self.url} failed for prompt {prompt!r} after "
            f"{len(errors)} attempt(s); last error: {errors[-1]}"
        )

    def __call__(
        self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict] | None = None
    ) -> np.ndarray:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images, {len(prompts)} prompts")
        if len(images) == 0:
            return np.zeros(0)
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(images))) as pool:
            scores = list(pool.map(self.score_one, list(images), list(prompts)))
        return np.asarray(scores, dtype=np.float64)


@SCORERS.register("unifiedreward")
def make_unifiedreward(backend: str = "openai", **options: Any) -> UnifiedRewardClient:
    """``unifiedreward``: the OpenAI-compatible client (the only backend)."""
    if backend not in ("openai", "http"):
        raise ValueError(f"unifiedreward: backend must be 'openai', got {backend!r}")
    options.pop("local", None)
    return UnifiedRewardClient(**options)
