"""Warm start for local workflow jobs: import the libraries once, fork one worker per command.

Every workflow job is a fresh ``opd`` process, and importing torch, transformers, peft and
diffusers' SD3 transformer takes about 8 s on the mini machine: most of a smoke run and about a
sixth of the mini one. When the workflow runs locally, Snakemake's ``onstart`` hook starts
:func:`serve` (``python -m opd.warmstart serve``), which imports them once and listens on a Unix
socket named by ``$OPD_WARM_SOCKET``. ``opd`` then hands its command line, working directory,
environment and standard streams (the job's log) to the server; the server forks a worker that runs
the command exactly as the cold process would and sends back its exit status and resource usage
(also appended to a ledger, so that the per-rule benchmark sees the worker's CPU time, memory and
seconds inside model calls, `opd.calltime`, and not only the client's). Signals to the client reach
the worker; a client that dies takes its worker with it. Whatever is off (no server, another
interpreter, an environment variable read at import time that differs from the server's) falls back
to the cold start.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import opd
from opd.commands import dispatch

SOCKET_ENV = "OPD_WARM_SOCKET"
WORKER_ENV = "OPD_WARM_WORKER"
# Read by the libraries when they are imported: a job whose values differ starts cold.
IMPORT_TIME_PREFIXES = (
    "CUDA",
    "DIFFUSERS",
    "HF_",
    "HUGGINGFACE",
    "MPL",
    "PYTHON",
    "PYTORCH",
    "TORCH",
    "TRANSFORMERS",
)
PRELOAD = (
    "torch",
    "numpy",
    "transformers",
    "peft",
    "diffusers.models.transformers.transformer_sd3",
    "pandas",
    "matplotlib.pyplot",
    "seaborn",
    "opd.cli",
    "opd.calltime",  # every worker reports its model-call seconds, zeros included
)
PID_FILE = "server.pid"  # next to the socket while the server runs
STARTUP_WAIT_S = 60.0
_HEADER = struct.Struct("!I")
_MAX_FDS = 3


def _send(sock: socket.socket, payload: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(payload).encode()
    message = _HEADER.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [message], list(fds))
        sock.sendall(message[sent:])
    else:
        sock.sendall(message)


def _recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the descriptors sent with it; ``None`` when the peer has gone."""
    data, fds, _, _ = socket.recv_fds(sock, 65536, _MAX_FDS)

    def fill(n: int) -> bool:  # read on until ``data`` holds n bytes; False at end of stream
        nonlocal data
        while len(data) < n:
            more = sock.recv(65536)
            if not more:
                return False
            data += more
        return True

    if not data or not fill(_HEADER.size):
        return None, fds
    (size,) = _HEADER.unpack_from(data)
    if not fill(_HEADER.size + size):
        return None, fds
    return json.loads(data[_HEADER.size : _HEADER.size + size]), fds


def _import_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES)}


def _interpreter() -> dict[str, str]:
    return {"python": os.path.realpath(sys.executable), "opd": os.path.realpath(opd.__file__)}


# ---------------------------------------------------------------------------------------------
# Client: the ``opd`` process a workflow job starts.


def _alive(pid: int) -> bool:
    """A running process (a zombie, a server dead but not yet reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_for_server(path: str, timeout: float = STARTUP_WAIT_S) -> bool:
    """Whether the socket is there, after waiting while the server is still importing (its pid
    file exists, the socket not yet): on a busy machine the core is better spent on the
    server's imports than on this job importing the same libraries cold."""
    pid_file = os.path.join(os.path.dirname(path), PID_FILE)
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        try:
            pid = int(Path(pid_file).read_text())
        except (OSError, ValueError):
            return False
        if not _alive(pid) or time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def run_client(argv: Sequence[str]) -> int | None:
    """Run ``opd argv`` in a forked worker of the warm server; ``None``: start cold instead."""
    path = os.environ.get(SOCKET_ENV)
    if not path or os.environ.get(WORKER_ENV) or not _wait_for_server(path):
        return None
    # the handlers go in before the worker exists: a signal that arrives during the handshake
    # is held and forwarded once the worker's pid is known, never lost to the default action
    pid = 0
    forwarded: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, forward) for signum in handled}

    def start_cold() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if forwarded:  # the job was told to stop before it started: stop as the cold one would
            signal.raise_signal(forwarded[-1])

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = {
            "argv": list(argv),
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "pgid": os.getpgrp(),
            **_interpreter(),
        }
        _send(sock, request, fds=(0, 1, 2))
        reply, _ = _recv(sock)  # PEP 475: a handled signal does not interrupt it
    except OSError:
        sock.close()
        start_cold()
        return None
    if reply is None or "pid" not in reply:
        sock.close()
        start_cold()
        return None
    pid = int(reply["pid"])
    if forwarded:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, forwarded[-1])
    try:
        status, _ = _recv(sock)
    except OSError:
        status = None
    sock.close()
    if status is None or "rc" not in status:
        signum = forwarded[-1] if forwarded else signal.SIGKILL
        print(f"opd: warm-start worker {pid} ended without an exit status", file=sys.stderr)
        return 128 + int(signum)
    return int(status["rc"])


# ---------------------------------------------------------------------------------------------
# Server and its workers.


def _usage(started: float) -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall_s": round(time.perf_counter() - started, 3),
        "cpu_s": round(own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime, 3),
        "max_rss_mb": round(max(own.ru_maxrss, kids.ru_maxrss) / 1024, 1),
    }


def _log_path() -> str:
    try:
        return os.readlink("/proc/self/fd/2")
    except OSError:
        return ""


def _worker(conn: socket.socket, request: dict[str, Any], fds: list[int], ledger: str) -> None:
    """In the forked child: become the job's ``opd`` process, run the command, report, exit."""
    started = time.perf_counter()
    rc = 1
    try:
        # the job's process group (Snakemake's, which the server shares): a signal to the
        # group reaches the worker as it reaches a cold job
        with contextlib.suppress(OSError):
            os.setpgid(0, int(request.get("pgid", 0)))
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the job's stdin, owned by the job
        sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ[WORKER_ENV] = "1"
        _reseed()
        _send(conn, {"pid": os.getpid()})
        _watch_client(conn)
        rc = _run_command(request["argv"])
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            usage = _usage(started)
            if ledger:
                record = {"log": _log_path(), "argv": request["argv"], "rc": rc, **usage}
                timing = sys.modules.get("opd.calltime")
                if timing is not None:  # seconds inside model calls, per section
                    record["sections"] = timing.snapshot()
                with open(ledger, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
            _send(conn, {"rc": rc, "usage": usage})
        finally:
            os._exit(rc)


def _reseed() -> None:
    """Fresh processes draw these seeds from the OS; forked ones would share the server's."""
    random.seed()
    tempfile.tempdir = None
    try:
        import numpy as np

        np.random.seed(int.from_bytes(os.urandom(4), "little"))
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass


def _watch_client(conn: socket.socket) -> None:
    """End the worker (as a terminated process would end) when its client goes away."""

    def watch() -> None:
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="opd-warm-client").start()


def _run_command(argv: list[str]) -> int:
    sys.argv = ["opd", *argv]
    try:
        return int(dispatch(argv) or 0)
    except SystemExit as exit_:
        code = exit_.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except BaseException:  # a crashing command reports as a cold one would
        import traceback

        traceback.print_exc()
        return 1


def preload(modules: Sequence[str] = PRELOAD) -> list[str]:
    """Import what the commands import (and every ``opd`` module); returns the modules that
    could not be imported (optional dependencies of the paper profile)."""
    import pkgutil

    names = list(modules)
    names += [m.name for m in pkgutil.walk_packages(opd.__path__, "opd.") if m.name != __name__]
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _refusal(request: dict[str, Any], server_env: dict[str, str]) -> str | None:
    for key, value in _interpreter().items():
        if request.get(key) != value:
            return f"{key} differs: {request.get(key)} (server {value})"
    job_env = _import_env(request.get("env", {}))
    if job_env != server_env:
        keys = sorted(set(job_env.items()) ^ set(server_env.items()))
        return f"import-time environment differs: {sorted({k for k, _ in keys})}"
    return None


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(path: str, parent: int | None = None, ledger: str = "", idle_s: float = 0.0) -> int:
    """Import the libraries, then fork a worker per request on the Unix socket ``path``.

    Ends on SIGTERM, when ``parent`` (the Snakemake process) is gone, or after ``idle_s``
    seconds without a request (0: never).
    """
    before = dict(os.environ)
    missing = preload()
    if missing:
        print(f"opd warm-start: could not preload {missing}", file=sys.stderr)
    server_env = _import_env(before)
    # what the imports themselves set (torch: TORCHINDUCTOR_CACHE_DIR): a cold job has it too
    set_by_imports = {k: v for k, v in os.environ.items() if before.get(k) != v}
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stop.append(signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: Snakemake stops, then so do we
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    listener.settimeout(0.5)
    print(f"opd warm-start: serving on {path} (pid {os.getpid()})", file=sys.stderr, flush=True)
    last = time.monotonic()
    served = 0
    try:
        while not stop:
            _reap()
            if parent is not None and os.getppid() != parent:
                break
            if idle_s and time.monotonic() - last > idle_s:
                break
            try:
                conn, _ = listener.accept()
            except (TimeoutError, InterruptedError):
                continue
            last = time.monotonic()
            conn.settimeout(10.0)  # a client that connects and stalls must not stall the rest
            try:
                request, fds = _recv(conn)
            except (OSError, ValueError):  # timed out, or not our protocol
                request, fds = None, []
            conn.settimeout(None)
            refusal = "malformed request" if request is None else _refusal(request, server_env)
            if refusal is not None:
                print(f"opd warm-start: cold start ({refusal})", file=sys.stderr, flush=True)
                with contextlib.suppress(OSError):
                    _send(conn, {"cold": refusal})
            elif os.fork() == 0:
                listener.close()
                request["env"] = {**request["env"], **set_by_imports}
                _worker(conn, request, fds, ledger)
            else:
                served += 1
            for fd in fds:
                os.close(fd)
            conn.close()
    finally:
        listener.close()
        if os.path.exists(path):
            os.unlink(path)
        _reap()
    print(f"opd warm-start: stopped after {served} commands", file=sys.stderr, flush=True)
    return 0


class WarmServer:
    """A running :func:`serve` process, started by :func:`start_server` (Snakemake's onstart)."""

    def __init__(self, proc: subprocess.Popen, socket_dir: str) -> None:
        self.proc = proc
        self.socket_dir = socket_dir
        self.path = os.path.join(socket_dir, "sock")

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the server (running workers finish on their own) and forget its socket."""
        if os.environ.get(SOCKET_ENV) == self.path:
            del os.environ[SOCKET_ENV]
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        return self.proc.returncode


def start_server(log: Path, ledger: Path | None = None) -> WarmServer:
    """Start a warm server for this process's future children (``$OPD_WARM_SOCKET`` is set
    here, so that every job the caller starts from now on uses it); it stops by itself when
    the caller ends without calling :meth:`WarmServer.stop`."""
    socket_dir = tempfile.mkdtemp(prefix="opd-warm-")
    # -P: no working directory on sys.path, so the server imports the `opd` that the jobs'
    # console script imports (the installed one), not a checkout that happens to be the cwd
    path = os.path.join(socket_dir, "sock")
    cmd = [sys.executable, "-P", "-m", "opd.warmstart", "serve", "--socket", path]
    cmd += ["--parent", str(os.getpid())]
    if ledger is not None:
        cmd += ["--ledger", str(ledger)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:  # in the caller's process group, as its jobs are
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
    Path(socket_dir, PID_FILE).write_text(str(proc.pid))
    os.environ[SOCKET_ENV] = path
    return WarmServer(proc, socket_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m opd.warmstart", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="import the libraries and serve forked workers")
    p.add_argument("--socket", required=True, help="Unix socket path (at most ~100 characters)")
    p.add_argument("--parent", type=int, default=None, help="stop when this process is gone")
    p.add_argument("--ledger", type=Path, default=None, help="append each job's usage here")
    p.add_argument("--idle", type=float, default=0.0, help="stop after this many idle seconds")
    args = parser.parse_args(argv)
    ledger = ""
    if args.ledger is not None:
        args.ledger.parent.mkdir(parents=True, exist_ok=True)
        ledger = str(args.ledger.resolve())
    return serve(args.socket, parent=args.parent, ledger=ledger, idle_s=args.idle)


if __name__ == "__main__":
    sys.exit(main())
