"""The scorer protocol against real local servers (127.0.0.1, ephemeral ports): a served
scorer, a server that is down, one that answers garbage or errors, and JSON-lines subprocesses.
Failures end in a clear ``ServiceError`` after bounded retries, never in zeros."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from opd.rewards.paper import service as S
from tests.paper.conftest import read_body, reply


def mean_scorer(images, prompts, metadata):
    """A simple scorer: mean pixel / 255 plus the prompt length and metadata weight."""
    rows = zip(images, prompts, metadata, strict=True)
    return np.array([im.mean() / 255 + len(p) + m.get("w", 0) for im, p, m in rows])


def detail_scorer(images, prompts, metadata):
    return mean_scorer(images, prompts, metadata), [{"n": i} for i in range(len(images))]


def batch(n: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 8, 6, 3), dtype=np.uint8)
    prompts = [f"prompt {'x' * i}" for i in range(n)]
    metadata = [{"w": float(i)} for i in range(n)]
    return images, prompts, metadata


@pytest.fixture
def served():
    servers = []

    def start(scorer, name="test"):
        server = S.make_server(scorer, port=0, name=name)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"  # loopback by default
        return f"http://{host}:{port}"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_images_roundtrip_losslessly() -> None:
    images, prompts, metadata = batch(3)
    got, p, m = S.decode_request(S.encode_request(images, prompts, metadata))
    assert got.dtype == np.uint8 and np.array_equal(got, images)
    assert p == prompts and m == metadata


def test_http_scores_match_the_local_scorer_in_batches(served) -> None:
    url = served(mean_scorer)
    images, prompts, metadata = batch(5)
    scorer = S.RemoteScorer(S.HTTPClient(url, retries=0), batch_size=2)
    np.testing.assert_allclose(
        scorer(images, prompts, metadata), mean_scorer(images, prompts, metadata)
    )
    assert scorer.last_details is None
    assert S.HTTPClient(url).health() == {"ok": True, "scorer": "test", "protocol": 1}
    assert len(scorer(images[:0], [], [])) == 0


def test_details_pass_through(served) -> None:
    url = served(detail_scorer)
    images, prompts, metadata = batch(3)
    scorer = S.RemoteScorer(S.HTTPClient(url), batch_size=2)
    scorer(images, prompts, metadata)
    assert scorer.last_details == [{"n": 0}, {"n": 1}, {"n": 0}]


def test_registered_scorers_build_remote_clients() -> None:
    from opd.rewards import get_scorer

    for name, port in (("hpsv21", 18087), ("imagereward", 18088), ("geneval", 18085)):
        scorer = get_scorer(name, local={"device": "cuda"})
        assert isinstance(scorer, S.RemoteScorer)
        assert scorer.client.url == f"http://127.0.0.1:{port}"
    sub = get_scorer("hpsv21", backend="subprocess", command=["python", "-m", "x"])
    assert isinstance(sub.client, S.SubprocessClient)
    with pytest.raises(ValueError, match="unknown backend"):
        get_scorer("hpsv21", backend="carrier-pigeon")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_down_fails_clearly_after_bounded_retries() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    scorer = S.RemoteScorer(S.HTTPClient(url, retries=2, backoff=0.01, timeout=2))
    images, prompts, metadata = batch(2)
    t0 = time.monotonic()
    with pytest.raises(S.ServiceError, match=r"failed after 3 attempt\(s\)") as err:
        scorer(images, prompts, metadata)
    assert url in str(err.value) and "Connection refused" in str(err.value)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (b"<html>oops</html>", 200, "not JSON"),
        (b'{"scores": [1.0]}', 200, "expected 2 scores, got 1"),
        (b'{"scores": [1.0, "NaN"]}', 200, "non-finite"),
        (b'{"scores": [1.0, "x"]}', 200, "not numbers"),
        (b'{"error": "model exploded"}', 200, "model exploded"),
        (b'{"error": "overloaded"}', 503, "HTTP 503"),
    ],
)
def test_garbage_answers_are_retried_then_fail(http_server, body, code, message) -> None:
    calls = []

    def post(h):
        read_body(h)
        calls.append(1)
        reply(h, code, body, "application/json")

    url = http_server(post)
    scorer = S.RemoteScorer(S.HTTPClient(url, retries=2, backoff=0.01))
    images, prompts, metadata = batch(2)
    with pytest.raises(S.ServiceError, match=message):
        scorer(images, prompts, metadata)
    assert len(calls) == 3  # the first try and 2 retries


def test_client_errors_are_not_retried(http_server) -> None:
    calls = []

    def post(h):
        read_body(h)
        calls.append(1)
        reply(h, 400, b'{"error": "bad request: no images"}', "application/json")

    scorer = S.RemoteScorer(S.HTTPClient(http_server(post), retries=3, backoff=0.01))
    with pytest.raises(S.ServiceError, match="HTTP 400"):
        scorer(*batch(1))
    assert len(calls) == 1


def test_a_flaky_server_recovers_within_the_retries(http_server) -> None:
    calls = []

    def post(h):
        payload = read_body(h)
        calls.append(1)
        if len(calls) < 3:
            reply(h, 500, b"internal error", "text/plain")
            return
        import json

        images, prompts, metadata = S.decode_request(json.loads(payload))
        out = {"scores": mean_scorer(images, prompts, metadata).tolist()}
        reply(h, 200, json.dumps(out).encode(), "application/json")

    scorer = S.RemoteScorer(S.HTTPClient(http_server(post), retries=3, backoff=0.01))
    images, prompts, metadata = batch(2)
    np.testing.assert_allclose(
        scorer(images, prompts, metadata), mean_scorer(images, prompts, metadata)
    )
    assert len(calls) == 3


def test_a_crashing_scorer_gives_a_server_error(served) -> None:
    def broken(images, prompts, metadata):
        raise RuntimeError("CUDA out of memory")

    scorer = S.RemoteScorer(S.HTTPClient(served(broken), retries=1, backoff=0.01))
    with pytest.raises(S.ServiceError, match="CUDA out of memory"):
        scorer(*batch(1))


STDIO_SERVER = """
import sys
import numpy as np
sys.path.insert(0, {root!r})
from opd.rewards.paper import service
from tests.paper.test_service import mean_scorer
service.serve_stdio(mean_scorer)
"""


def test_subprocess_json_lines(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parents[2])
    client = S.SubprocessClient([sys.executable, "-c", STDIO_SERVER.format(root=root)], timeout=60)
    scorer = S.RemoteScorer(client, batch_size=2)
    try:
        images, prompts, metadata = batch(5)
        got = scorer(images, prompts, metadata)
        np.testing.assert_allclose(got, mean_scorer(images, prompts, metadata))
        np.testing.assert_allclose(scorer(images[:1], prompts[:1], metadata[:1]), got[:1])
    finally:
        scorer.close()


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("import sys\nfor line in sys.stdin:\n    print('garbage', flush=True)", "not JSON"),
        ("import sys\nsys.stdin.readline()\nsys.exit(3)", "exited with code 3"),
    ],
)
def test_subprocess_failures_are_retried_then_fail(code: str, message: str) -> None:
    client = S.SubprocessClient([sys.executable, "-c", code], retries=1, backoff=0.01, timeout=30)
    with pytest.raises(S.ServiceError, match=message):
        S.RemoteScorer(client)(*batch(1))
    client.close()


def test_checksum_command(tmp_path: Path, capsys) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    assert S.main(["checksum", str(f)]) == 0
    import hashlib

    assert capsys.readouterr().out.strip() == hashlib.sha256(b"weights").hexdigest()
