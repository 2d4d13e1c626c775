"""The warm-start client's handshake: a signal that arrives before the worker's pid is known.

A stand-in server (a plain Unix socket in the test) holds its reply while the test signals the
real client process; the "worker" is a real ``sleep`` process whose pid the server then sends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from opd.warmstart import SOCKET_ENV, WORKER_ENV, _recv, _send

CLIENT = "import sys; from opd.warmstart import run_client; rc = run_client(['ls']); sys.exit(rc)"


def _client(path: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != WORKER_ENV}
    return subprocess.Popen([sys.executable, "-c", CLIENT], env={**env, SOCKET_ENV: path})


@pytest.mark.parametrize("server_answers", [True, False])
def test_a_signal_during_the_handshake_is_not_lost(tmp_path, server_answers):
    path = str(tmp_path / "warm.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(60)
    client = _client(path)
    worker = subprocess.Popen(["sleep", "60"])
    try:
        conn, _ = listener.accept()
        request, fds = _recv(conn)
        for fd in fds:
            os.close(fd)
        assert request is not None and request["argv"] == ["ls"]
        client.send_signal(signal.SIGTERM)  # the client waits for the worker's pid
        time.sleep(0.5)
        assert client.poll() is None, "the signal took the client down mid-handshake"
        if server_answers:
            _send(conn, {"pid": worker.pid})
            # the held signal reaches the worker; its client reports it as a signalled job
            assert worker.wait(timeout=10) == -signal.SIGTERM
            conn.close()
            assert client.wait(timeout=10) == 128 + signal.SIGTERM
        else:  # no worker: the client would start cold, but it was told to stop, so it stops
            conn.close()
            assert client.wait(timeout=10) == -signal.SIGTERM
            assert worker.poll() is None
    finally:
        for proc in (client, worker):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        listener.close()
