"""One protocol for scorers that live in another environment: JSON over HTTP or JSON lines.

Several of the paper's scorers cannot share the trainer's Python environment (GenEval needs
mmdet 2.x / mmcv-full 1.x; HPSv2.1 and ImageReward need torchvision and their own packages), so
they run as a separate process -- a local HTTP service in their own image, or a subprocess --
and the trainer talks to them through this module. The protocol (version 1) is the scorer
interface itself, serialised:

request (one JSON object)
    ``{"protocol": 1, "images": [<PNG as base64>, ...], "prompts": [str, ...],
    "metadata": [dict, ...]}`` -- images are uint8 RGB arrays (N, H, W, 3) encoded losslessly.
response
    ``{"scores": [float, ...], "details": [any, ...]}`` (``details`` optional, one per image,
    e.g. GenEval's detections), or ``{"error": "message"}``.

HTTP
    ``POST /score`` with the request as the body, ``GET /health`` -> ``{"ok": true, "scorer":
    name, "protocol": 1}``. Servers bind ``127.0.0.1`` unless told otherwise.
JSON lines (subprocess)
    one request per line on the child's stdin, one response per line on its stdout (logs go to
    stderr).

Clients retry a failed call (connection refused, timeout, HTTP 5xx, a response that is not
JSON or whose scores are missing, of the wrong length or not finite) a bounded number of times
with exponential backoff, then raise :class:`ServiceError` naming the service and the last
failure. A scorer never turns a failure into zeros.

Scorer factories take ``backend``: ``"local"`` builds the model in this process, ``"http"``
(with ``url``) or ``"subprocess"`` (with ``command``) returns a :class:`RemoteScorer`
(:func:`remote_scorer`). ``python -m opd.rewards.paper.service serve --scorer NAME`` starts the
server side of any registered scorer (its local backend) over HTTP or stdio; ``... check
--scorer NAME --config FILE`` checks that a configured scorer is ready (:func:`check_scorer`:
the service's health probe, or an in-process scorer scoring one image).

This module uses only the standard library, numpy and Pillow (and stays Python 3.10
compatible), so a scorer image whose stack cannot install the ``opd`` package can copy it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

PROTOCOL = 1
DEFAULT_HOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A remote scorer failed after its retries (the message names the service and why)."""


class ResponseError(ValueError):
    """A response that does not follow the protocol (retried like a transport failure)."""


# --------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------
def encode_image(image: np.ndarray) -> str:
    """uint8 (H, W, 3) -> base64 of its PNG (lossless)."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"images must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(data: str) -> np.ndarray:
    """base64 PNG (or any Pillow format) -> uint8 (H, W, 3)."""
    from PIL import Image

    raw = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data)
    with Image.open(io.BytesIO(raw)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def encode_request(
    images: np.ndarray | Sequence[np.ndarray], prompts: Sequence[str], metadata: Sequence[dict]
) -> dict[str, Any]:
    """The protocol's request object for one batch."""
    n = len(images)
    if len(prompts) != n or len(metadata) != n:
        raise ValueError(f"{n} images, {len(prompts)} prompts, {len(metadata)} metadata entries")
    return {
        "protocol": PROTOCOL,
        "images": [encode_image(im) for im in images],
        "prompts": [str(p) for p in prompts],
        "metadata": [dict(m or {}) for m in metadata],
    }


def decode_request(payload: dict[str, Any]) -> tuple[np.ndarray, list[str], list[dict]]:
    """Images (N, H, W, 3), prompts and metadata of a request (raises ``ValueError``)."""
    if not isinstance(payload, dict):
        raise ValueError("request must be a JSON object")
    version = payload.get("protocol", PROTOCOL)
    if version != PROTOCOL:
        raise ValueError(f"protocol {version!r} not supported (this server speaks {PROTOCOL})")
    images = [decode_image(s) for s in payload.get("images", [])]
    prompts = [str(p) for p in payload.get("prompts", [])]
    metadata = [dict(m or {}) for m in payload.get("metadata", [{}] * len(images))]
    if not (len(images) == len(prompts) == len(metadata)):
        raise ValueError(
            f"{len(images)} images, {len(prompts)} prompts, {len(metadata)} metadata entries"
        )
    if len({im.shape for im in images}) > 1:
        raise ValueError("all images of one request must have the same size")
    stacked = np.stack(images) if images else np.zeros((0, 1, 1, 3), dtype=np.uint8)
    return stacked, prompts, metadata


def check_response(response: Any, n: int) -> tuple[np.ndarray, list[Any] | None]:
    """Scores (float64, finite) and details of a response for ``n`` images."""
    if not isinstance(response, dict):
        raise ResponseError(f"response is not a JSON object: {str(response)[:200]!r}")
    if "error" in response:
        raise ResponseError(f"service error: {response['error']}")
    scores = response.get("scores")
    if not isinstance(scores, list) or len(scores) != n:
        got = len(scores) if isinstance(scores, list) else type(scores).__name__
        raise ResponseError(f"expected {n} scores, got {got}")
    try:
        values = np.asarray([float(s) for s in scores], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ResponseError(f"scores are not numbers: {err}") from None
    if not np.all(np.isfinite(values)):
        raise ResponseError("service returned non-finite scores")
    details = response.get("details")
    if details is not None and (not isinstance(details, list) or len(details) != n):
        raise ResponseError("details must be a list with one entry per image")
    return values, details


# --------------------------------------------------------------------------------------------
# clients
# --------------------------------------------------------------------------------------------
class Retrying:
    """Bounded retries with exponential backoff: ``retries`` extra attempts after the first."""

    def __init__(self, retries: int = 3, backoff: float = 1.0, max_backoff: float = 30.0) -> None:
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must be >= 0")
        self.retries, self.backoff, self.max_backoff = int(retries), float(backoff), max_backoff

    def delays(self) -> list[float]:
        return [min(self.backoff * 2**k, self.max_backoff) for k in range(self.retries)]

    def run(self, what: str, attempt: Callable[[], Any], on_failure: Callable[[], None]) -> Any:
        errors: list[str] = []
        for delay in [0.0, *self.delays()]:
            if delay:
                time.sleep(delay)
            try:
                return attempt()
            except (OSError, ResponseError, TimeoutError, ValueError) as err:
                errors.append(f"{type(err).__name__}: {err}")
                on_failure()
        raise ServiceError(
            f"{what} failed after {len(errors)} attempt(s); last error: {errors[-1]}"
        )


class HTTPClient:
    """Client of a scorer service speaking the protocol over HTTP (``POST {url}/score``)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 300.0,
        retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self.retry = Retrying(retries, backoff, max_backoff)

    def _post(self, body: bytes) -> Any:
        req = urllib.request.Request(
            f"{self.url}/score",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            text = err.read()[:500].decode("utf-8", "replace")
            if 400 <= err.code < 500:  # the request is wrong: retrying cannot help
                raise ServiceError(f"{self.url}: HTTP {err.code}: {text}") from None
            raise ResponseError(f"HTTP {err.code}: {text}") from None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            raise ResponseError(f"not JSON: {raw[:200]!r}") from None

    def call(self, payload: dict[str, Any], n: int) -> tuple[np.ndarray, list[Any] | None]:
        body = json.dumps(payload).encode("utf-8")
        return self.retry.run(
            f"scorer service {self.url}", lambda: check_response(self._post(body), n), _noop
        )

    def health(self) -> dict[str, Any]:
        """``GET /health`` (one attempt; raises ``OSError`` when the service is down)."""
        with urllib.request.urlopen(f"{self.url}/health", timeout=self.timeout) as resp:
            return json.loads(resp.read())

    def close(self) -> None:
        pass


class SubprocessClient:
    """Client of a scorer running as a child process that speaks JSON lines on stdin/stdout.

    The child is started on first use and restarted after a failure (a crash, a timeout or
    a garbled line); ``command`` is an argv list (e.g. ``["conda", "run", "-n", "hpsv2",
    "python", "-m", "opd.rewards.paper.service", "serve", "--stdio", "--scorer", "hpsv21"]``).
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        timeout: float = 600.0,
        retries: int = 2,
        backoff: float = 1.0,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        if isinstance(command, str) or not command:
            raise ValueError("command must be a non-empty argv list")
        self.command = [str(c) for c in command]
        self.timeout = float(timeout)
        self.retry = Retrying(retries, backoff)
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self._proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen[str]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._lines = queue.Queue()
        proc = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the child's logs go to ours
            text=True,
            bufsize=1,
            env=self.env,
            cwd=self.cwd,
        )
        lines = self._lines

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        self._proc = proc
        return proc

    def _exchange(self, line: str) -> Any:
        proc = self._start()
        assert proc.stdin is not None
        try:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, ValueError) as err:
            raise ResponseError(f"child process is gone ({err})") from None
        try:
            out = self._lines.get(timeout=self.timeout)
        except queue.Empty:
            raise TimeoutError(f"no answer within {self.timeout:.0f} s") from None
        if out is None:
            raise ResponseError(f"child process exited with code {proc.wait()}")
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            raise ResponseError(f"not JSON: {out[:200]!r}") from None

    def call(self, payload: dict[str, Any], n: int) -> tuple[np.ndarray, list[Any] | None]:
        line = json.dumps(payload)
        with self._lock:
            return self.retry.run(
                f"scorer subprocess {self.command[0]!r}",
                lambda: check_response(self._exchange(line), n),
                self.close,
            )

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.close()
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()

    def __del__(self) -> None:  # pragma: no cover - interpreter shutdown
        with contextlib.suppress(Exception):
            self.close()


def _noop() -> None:
    return None


class RemoteScorer:
    """A scorer callable backed by a service client, batched ``batch_size`` images per call.

    ``aggregate`` (optional) is forwarded as the scorer's own aggregate. ``last_details`` holds
    the per-image details of the last call (e.g. GenEval's detections), or ``None``.
    """

    def __init__(
        self,
        client: HTTPClient | SubprocessClient,
        *,
        name: str = "remote",
        batch_size: int = 16,
        aggregate: Callable[[np.ndarray, list[dict]], float] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.client = client
        self.name = name
        self.batch_size = int(batch_size)
        self.last_details: list[Any] | None = None
        if aggregate is not None:
            self.aggregate = aggregate

    def __call__(
        self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[dict] | None = None
    ) -> np.ndarray:
        n = len(images)
        metadata = list(metadata) if metadata is not None else [{} for _ in range(n)]
        if len(prompts) != n or len(metadata) != n:
            raise ValueError(f"{n} images, {len(prompts)} prompts, {len(metadata)} metadata")
        scores: list[np.ndarray] = []
        details: list[Any] = []
        have_details = True
        for start in range(0, n, self.batch_size):
            sl = slice(start, start + self.batch_size)
            payload = encode_request(images[sl], list(prompts[sl]), metadata[sl])
            values, det = self.client.call(payload, len(payload["images"]))
            scores.append(values)
            if det is None:
                have_details = False
            else:
                details.extend(det)
        self.last_details = details if have_details and n else None
        return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float64)

    def close(self) -> None:
        self.client.close()


def remote_scorer(
    name: str,
    backend: str,
    *,
    url: str | None = None,
    command: Sequence[str] | None = None,
    batch_size: int = 16,
    timeout: float | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    aggregate: Callable[[np.ndarray, list[dict]], float] | None = None,
) -> RemoteScorer:
    """A :class:`RemoteScorer` for ``backend`` ``"http"`` (``url``) or ``"subprocess"``
    (``command``)."""
    if backend == "http":
        if not url:
            raise ValueError(f"scorer {name!r}: backend 'http' needs a url")
        client: HTTPClient | SubprocessClient = HTTPClient(
            url, timeout=timeout or 300.0, retries=retries, backoff=backoff
        )
    elif backend == "subprocess":
        if not command:
            raise ValueError(f"scorer {name!r}: backend 'subprocess' needs a command")
        client = SubprocessClient(
            command, timeout=timeout or 600.0, retries=retries, backoff=backoff
        )
    else:
        raise ValueError(f"scorer {name!r}: unknown backend {backend!r} (local, http, subprocess)")
    return RemoteScorer(client, name=name, batch_size=batch_size, aggregate=aggregate)


def backend_scorer(
    name: str,
    backend: str,
    local_factory: Callable[..., Any],
    options: dict[str, Any],
    *,
    default_url: str | None = None,
    aggregate: Callable[[np.ndarray, list[dict]], float] | None = None,
) -> Any:
    """Scorer ``name`` on ``backend``: ``local_factory(**options)`` for ``"local"``, else a
    :class:`RemoteScorer`.

    ``options["local"]`` (a dict) holds the settings of the model itself (weights, checksums,
    device): merged into the options of a local backend, ignored by a remote client (the
    service that runs the model is started with them, see ``docker/README.md``).
    """
    options = dict(options)
    local = dict(options.pop("local", None) or {})
    if backend == "local":
        return local_factory(**{**local, **options})
    if backend == "http" and default_url:
        options.setdefault("url", default_url)
    return remote_scorer(name, backend, aggregate=aggregate, **options)


# --------------------------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------------------------
Scorer = Callable[[np.ndarray, list[str], list[dict]], Any]


def score_payload(scorer: Scorer, payload: Any) -> dict[str, Any]:
    """Run ``scorer`` on a decoded request; the response object (``error`` on failure)."""
    try:
        images, prompts, metadata = decode_request(payload)
    except (ValueError, TypeError, OSError) as err:
        return {"error": f"bad request: {err}"}
    if len(images) == 0:
        return {"scores": [], "details": []}
    out = scorer(images, prompts, metadata)
    details = None
    if isinstance(out, tuple):
        out, details = out
    elif getattr(scorer, "last_details", None) is not None:
        details = scorer.last_details  # type: ignore[attr-defined]
    values = [float(v) for v in np.asarray(out, dtype=np.float64).reshape(-1)]
    if len(values) != len(images) or not all(math.isfinite(v) for v in values):
        return {"error": f"scorer returned {len(values)} values (finite?) for {len(images)} images"}
    response: dict[str, Any] = {"scores": values}
    if details is not None:
        response["details"] = _jsonable(list(details))
    return response


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def make_server(
    scorer: Scorer, *, host: str = DEFAULT_HOST, port: int = 0, name: str = "scorer"
) -> ThreadingHTTPServer:
    """An HTTP server for ``scorer`` (not started: call ``serve_forever``, e.g. in a thread).

    ``port=0`` picks a free port (``server.server_address[1]``). Calls into the scorer are
    serialised (models on one device are not thread-safe).
    """
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"[{name}] {self.address_string()} {format % args}\n")

        def _send(self, code: int, obj: dict[str, Any]) -> None:
            body = json.dumps(obj).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/health":
                self._send(200, {"ok": True, "scorer": name, "protocol": PROTOCOL})
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/score":
                self._send(404, {"error": f"no route {self.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            try:
                payload = json.loads(self.rfile.read(length))
            except json.JSONDecodeError as err:
                self._send(400, {"error": f"bad request: not JSON ({err})"})
                return
            try:
                with lock:
                    response = score_payload(scorer, payload)
            except Exception as err:  # the scorer crashed: a server error, retried by clients
                self._send(500, {"error": f"{type(err).__name__}: {err}"})
                return
            self._send(400 if "error" in response else 200, response)

    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    return server


def serve_stdio(scorer: Scorer, stdin: Any = None, stdout: Any = None) -> None:
    """Answer JSON-lines requests from ``stdin`` until it closes."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    for line in stdin:
        if not line.strip():
            continue
        try:
            response = score_payload(scorer, json.loads(line))
        except Exception as err:
            response = {"error": f"{type(err).__name__}: {err}"}
        stdout.write(json.dumps(response) + "\n")
        stdout.flush()


# --------------------------------------------------------------------------------------------
# command line: serve a registered scorer's local backend
# --------------------------------------------------------------------------------------------
def _parse_options(items: Sequence[str]) -> dict[str, Any]:
    from opd.config import load_yaml  # deferred: standalone copy lacks opd

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--option expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        out[key] = load_yaml(raw)
    return out


def build_local_scorer(name: str, options: dict[str, Any]) -> Scorer:
    """The local backend of registered scorer ``name`` (what a service runs)."""
    from opd.rewards import get_scorer  # deferred: standalone copy lacks opd

    return get_scorer(name, **{**options, "backend": "local"})


CHECK_PROMPT = 'a sign that says "OPD"'


def _get_json(url: str, timeout: float, headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def check_scorer(
    name: str, options: dict[str, Any], *, retries: int = 3, backoff: float = 2.0
) -> dict[str, Any]:
    """Whether scorer ``name``, built by its factory with ``options`` (its ``scorer_options``),
    is ready; a report (JSON-able) or :class:`ServiceError` naming the scorer and the failure.

    A service must answer its probe (bounded retries): ``GET /health`` over HTTP (``ok``, this
    protocol, this scorer), an empty request for a subprocess, ``GET /models`` listing the
    served model for an OpenAI-compatible judge. An in-process scorer scores one blank image,
    which downloads its weights and checks their pinned digests.
    """
    from opd.rewards import get_scorer  # deferred: standalone copy lacks opd

    scorer = get_scorer(name, **options)
    retry = Retrying(retries, backoff)
    if isinstance(scorer, RemoteScorer) and isinstance(scorer.client, HTTPClient):
        url = scorer.client.url
        timeout = min(scorer.client.timeout, 30.0)
        health = retry.run(
            f"scorer service {name!r} at {url}/health",
            lambda: _get_json(f"{url}/health", timeout),
            _noop,
        )
        if not (
            isinstance(health, dict)
            and health.get("ok") is True
            and health.get("protocol") == PROTOCOL
            and health.get("scorer", name) == name
        ):
            raise ServiceError(f"scorer service {name!r} at {url}: unexpected health {health!r}")
        return {"scorer": name, "backend": "http", "url": url, "health": health}
    if isinstance(scorer, RemoteScorer) and isinstance(scorer.client, SubprocessClient):
        try:
            scorer.client.call(encode_request([], [], []), 0)
        finally:
            scorer.client.close()
        return {"scorer": name, "backend": "subprocess", "command": scorer.client.command}
    chat = str(getattr(scorer, "url", ""))
    if chat.endswith("/chat/completions"):  # an OpenAI-compatible judge (unifiedreward)
        base = chat.removesuffix("/chat/completions")
        key = getattr(scorer, "api_key", "EMPTY")
        reply = retry.run(
            f"scorer service {name!r} at {base}/models",
            lambda: _get_json(f"{base}/models", 30.0, {"Authorization": f"Bearer {key}"}),
            _noop,
        )
        served = [m.get("id") for m in (reply or {}).get("data", []) if isinstance(m, dict)]
        model = getattr(scorer, "model", None)
        if model is not None and model not in served:
            raise ServiceError(
                f"scorer service {name!r} at {base} serves {served}, not the model {model!r}"
            )
        return {"scorer": name, "backend": "openai", "url": base, "models": served}
    image = np.full((1, 256, 256, 3), 127, dtype=np.uint8)
    out = scorer(image, [CHECK_PROMPT], [{}])
    if isinstance(out, tuple):
        out = out[0]
    values = np.asarray(out, dtype=np.float64).reshape(-1)
    if values.shape != (1,) or not np.all(np.isfinite(values)):
        raise ServiceError(f"scorer {name!r} scored one image as {values!r}")
    return {"scorer": name, "backend": "local", "score": float(values[0])}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m opd.rewards.paper.service", description="serve a scorer (protocol v1)"
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve a registered scorer's local backend")
    s.add_argument("--scorer", required=True, help="registered scorer name, e.g. hpsv21")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--host", default=DEFAULT_HOST, help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--stdio", action="store_true", help="speak JSON lines on stdin/stdout")
    c = sub.add_parser("checksum", help="print the SHA-256 of a file (to pin weights)")
    c.add_argument("file")
    k = sub.add_parser("check", help="check that a scorer is ready (service probe or one image)")
    k.add_argument("--scorer", required=True, help="registered scorer name, e.g. geneval")
    k.add_argument("--config", default=None, help="config whose scorer_options.<scorer> to use")
    k.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    k.add_argument("--retries", type=int, default=3)
    k.add_argument("--backoff", type=float, default=2.0)
    args = p.parse_args(argv)
    if args.cmd == "check":
        from opd.config import load_yaml  # deferred: standalone copy lacks opd

        # the importable module's classes (under `python -m` this one is __main__, whose
        # classes are not those the scorer factories build)
        from opd.rewards.paper import service

        options: dict[str, Any] = {}
        if args.config:
            with open(args.config, encoding="utf-8") as fh:
                cfg = load_yaml(fh.read()) or {}
            options = dict((cfg.get("scorer_options") or {}).get(args.scorer) or {})
        options.update(_parse_options(args.option))
        try:
            report = service.check_scorer(
                args.scorer, options, retries=args.retries, backoff=args.backoff
            )
        except service.ServiceError as err:
            raise SystemExit(f"[{args.scorer}] not ready: {err} (docker/README.md)") from None
        print(json.dumps(report), flush=True)
        return 0
    if args.cmd == "checksum":
        from opd.rewards.paper.weights import sha256_file  # deferred: standalone copy lacks opd

        print(sha256_file(args.file))
        return 0
    scorer = build_local_scorer(args.scorer, _parse_options(args.option))
    if args.stdio:
        serve_stdio(scorer)
        return 0
    server = make_server(scorer, host=args.host, port=args.port, name=args.scorer)
    host, port = server.server_address[:2]
    print(f"[{args.scorer}] serving protocol v{PROTOCOL} on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
