"""``unifiedreward`` against a local HTTP server speaking the OpenAI chat-completions API:
request format (base64 PNG data URL, Flow-GRPO's question), score parsing, bounded retries
with backoff, and a clear failure (never zeros)."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from opd.rewards import get_scorer
from opd.rewards.paper.service import ServiceError
from opd.rewards.paper.unifiedreward import ParseError, parse_score
from tests.paper.conftest import read_body, reply


def chat(content: str) -> bytes:
    return json.dumps(
        {"id": "x", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}}
        ]}
    ).encode()  # fmt: skip


def test_parse_score() -> None:
    assert parse_score("The image is sharp.\nFinal Score: 4") == 4.0
    assert parse_score("Final Score: 3.5 (good)") == 3.5
    for bad in ("Final Score: 7", "score 4", ""):
        with pytest.raises(ParseError):
            parse_score(bad)


def images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, 32, 48, 3), dtype=np.uint8)


def test_scores_from_an_openai_compatible_server(http_server) -> None:
    seen = []

    def post(h):
        body = json.loads(read_body(h))
        seen.append((h.path, h.headers.get("Authorization"), body))
        content = body["messages"][0]["content"]
        url = content[0]["image_url"]["url"]
        assert url.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
        assert img.size == (512, 512)  # resized as Flow-GRPO does
        text = content[1]["text"]
        score = 4.5 if "[a good cat]" in text else 2
        reply(h, 200, chat(f"Alignment ok.\nFinal Score: {score}"), "application/json")

    url = http_server(post)
    scorer = get_scorer("unifiedreward", base_url=f"{url}/v1", concurrency=2, retries=0)
    got = scorer(images(3), ["a good cat", "a bad dog", "a good cat"], [{}] * 3)
    np.testing.assert_array_equal(got, [4.5, 2.0, 4.5])
    path, auth, body = seen[0]
    assert path == "/v1/chat/completions" and auth == "Bearer EMPTY"
    assert body["model"] == "UnifiedReward-7b-v1.5" and body["temperature"] == 0
    assert (
        "assign a score from 1 to 5 after 'Final Score:'"
        in body["messages"][0]["content"][1]["text"]
    )


def test_transient_failures_are_retried(http_server) -> None:
    calls = []

    def post(h):
        read_body(h)
        calls.append(1)
        if len(calls) == 1:
            reply(h, 503, b"busy", "text/plain")
        elif len(calls) == 2:
            reply(h, 200, chat("I think it is fine."), "application/json")  # no score
        else:
            reply(h, 200, chat("Final Score: 3"), "application/json")

    url = http_server(post)
    scorer = get_scorer("unifiedreward", base_url=f"{url}/v1", retries=3, backoff=0.01)
    assert scorer(images(1), ["a cat"], [{}]).tolist() == [3.0]
    assert len(calls) == 3


def test_garbage_fails_clearly_after_the_retries(http_server) -> None:
    calls = []

    def post(h):
        read_body(h)
        calls.append(1)
        reply(h, 200, b"<html>gateway</html>", "text/html")

    url = http_server(post)
    scorer = get_scorer("unifiedreward", base_url=f"{url}/v1", retries=2, backoff=0.01)
    with pytest.raises(ServiceError, match=r"failed for prompt 'a cat' after 3 attempt\(s\)"):
        scorer(images(1), ["a cat"], [{}])
    assert len(calls) == 3


def test_server_down_fails_clearly() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scorer = get_scorer(
        "unifiedreward", base_url=f"http://127.0.0.1:{port}/v1", retries=1, backoff=0.01
    )
    with pytest.raises(ServiceError, match="Connection refused"):
        scorer(images(2), ["a", "b"], [{}, {}])
