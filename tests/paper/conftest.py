"""Fixtures of the paper-profile tests: tiny CLIP models and local HTTP servers (127.0.0.1,
ephemeral ports), all built in the test session; nothing is downloaded."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

CLIP_WORDS = ("a", "photo", "of", "red", "blue", "cat", "dog", "sign", "says", "hello", "world")


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny ``CLIPModel`` with a locally built BPE tokenizer and image processor."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    from opd.models.tiny import write_clip_bpe_files

    out = tmp_path_factory.mktemp("clip")
    write_clip_bpe_files(out / "bpe", CLIP_WORDS)
    tok = CLIPTokenizer.from_pretrained(out / "bpe", model_max_length=16)
    proc = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tok,
    )
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=8,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(config)
    model.save_pretrained(out / "model")
    proc.save_pretrained(out / "model")
    return out / "model"


Handler = Callable[[BaseHTTPRequestHandler], None]


@pytest.fixture
def http_server() -> Iterator[Callable[..., str]]:
    """Start an HTTP server on 127.0.0.1 (ephemeral port) whose GET/POST call ``handler``;
    returns its base URL. Servers stop at the end of the test."""
    servers: list[ThreadingHTTPServer] = []

    def start(post: Handler, get: Handler | None = None) -> str:
        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                post(self)

            def do_GET(self) -> None:
                (get or post)(self)

        server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def reply(handler: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str) -> None:
    """Send a complete HTTP response from a test handler."""
    handler.send_response(code)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
