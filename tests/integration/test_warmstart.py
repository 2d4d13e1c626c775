"""Warm start (opd.warmstart): a job forked from the server behaves as the cold ``opd`` process.

One server for the module (it imports torch & co. once, about 8 s). Each test runs the real
``opd`` console script as a subprocess, as a workflow job does, and tells a warm run from a cold
one by the server's usage ledger (one line per job a worker ran; a cold job writes none) or by
the worker process the server forks: every test of a warm job fails when the job runs cold.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from opd import calltime
from opd.warmstart import SOCKET_ENV, start_server

OPD = shutil.which("opd") or str(Path(sys.executable).with_name("opd"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warm")
    ledger = tmp / "ledger.jsonl"
    old = os.environ.get(SOCKET_ENV)
    srv = start_server(tmp / "server.log", ledger=ledger)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(srv.path):
            assert srv.proc.poll() is None, (tmp / "server.log").read_text()
            assert time.monotonic() < deadline, "warm server did not come up"
            time.sleep(0.2)
        yield srv, ledger, tmp / "server.log"
    finally:
        srv.stop()
        if old is not None:
            os.environ[SOCKET_ENV] = old
    assert srv.proc.returncode == 0
    assert not os.path.exists(srv.path)


def run_opd(args, cwd, env, timeout=120):
    proc = subprocess.run(
        [OPD, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode, proc.stdout, proc.stderr


def ledger_entries(ledger: Path) -> list[dict]:
    if not ledger.exists():
        return []
    return [json.loads(line) for line in ledger.read_text().splitlines()]


def cold_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != SOCKET_ENV}


@pytest.mark.slow
def test_warm_job_prints_and_exits_as_the_cold_one(server, tmp_path):
    srv, ledger, _ = server
    warm_env = {**cold_env(), SOCKET_ENV: srv.path}
    for args in (["ls"], ["no-such-command"], ["train", "--run", "x"]):
        before = len(ledger_entries(ledger))
        warm = run_opd(args, tmp_path, warm_env)
        cold = run_opd(args, tmp_path, cold_env())
        assert warm == cold, args
        entries = ledger_entries(ledger)
        assert len(entries) == before + 1 and entries[-1]["argv"] == args  # it ran warm
        assert entries[-1]["rc"] == warm[0]
    assert run_opd(["no-such-command"], tmp_path, warm_env)[0] == 2


@pytest.mark.slow
def test_warm_job_computes_the_same_bytes_in_its_own_directory_and_logs_usage(server, tmp_path):
    """The smoke world (seeded numpy and torch work) written through the server and cold."""
    srv, ledger, _ = server
    for name, env in (("warm", {**cold_env(), SOCKET_ENV: srv.path}), ("cold", cold_env())):
        (tmp_path / name).mkdir()
        log = tmp_path / name / "job.log"
        with log.open("w") as fh:  # a job's log, as Snakemake's shell redirection gives it
            proc = subprocess.run(
                [OPD, "world", "--profile", "smoke", "--out", "out"],
                cwd=tmp_path / name,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=300,
            )
        assert proc.returncode == 0, log.read_text()
    warm_files = sorted(p.relative_to(tmp_path / "warm") for p in (tmp_path / "warm").rglob("*"))
    cold_files = sorted(p.relative_to(tmp_path / "cold") for p in (tmp_path / "cold").rglob("*"))
    assert warm_files == cold_files and len(warm_files) > 2
    for rel in warm_files:
        a, b = tmp_path / "warm" / rel, tmp_path / "cold" / rel
        if a.is_file() and rel.name != "job.log":
            assert a.read_bytes() == b.read_bytes(), rel
    entry = ledger_entries(ledger)[-1]
    assert entry["log"] == str(tmp_path / "warm" / "job.log") and entry["rc"] == 0
    assert entry["cpu_s"] > 0 and entry["max_rss_mb"] > 0 and entry["wall_s"] > 0
    assert set(entry["sections"]["seconds"]) == set(calltime.SECTIONS)  # model-call seconds


def _worker_of(srv, timeout=60.0) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = psutil.Process(srv.proc.pid).children()
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise AssertionError("no worker was forked")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signalled_or_killed_client_takes_its_worker_with_it(server, tmp_path, sig):
    srv, _, _ = server
    env = {**cold_env(), SOCKET_ENV: srv.path}
    client = subprocess.Popen(
        [OPD, "pretrain", "--profile", "mini", "--out", "out"],  # minutes of work
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        worker = _worker_of(srv)  # none: the job ran cold
    except AssertionError:
        client.kill()  # not minutes of cold pretraining left behind
        client.wait()
        raise
    assert worker.is_running()
    client.send_signal(sig)
    rc = client.wait(timeout=30)
    assert rc == (128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGKILL)
    gone, alive = psutil.wait_procs([worker], timeout=30)
    assert gone and not alive, "the worker outlived its client"


@pytest.mark.slow
def test_import_time_environment_that_differs_starts_cold(server, tmp_path):
    srv, ledger, log = server
    before = len(ledger_entries(ledger))
    env = {**cold_env(), SOCKET_ENV: srv.path, "HF_HUB_OFFLINE": "maybe-not-the-servers"}
    rc, out, _ = run_opd(["ls"], tmp_path, env)
    assert rc == 0 and "compose" in out
    assert len(ledger_entries(ledger)) == before  # not served
    assert "import-time environment differs: ['HF_HUB_OFFLINE']" in log.read_text()


def test_no_server_means_cold(tmp_path):
    env = {**cold_env(), SOCKET_ENV: str(tmp_path / "absent.sock")}
    rc, out, _ = run_opd(["ls"], tmp_path, env)
    assert rc == 0 and "opd" in out


@pytest.mark.slow
def test_a_job_started_while_the_server_imports_waits_for_it(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    old = os.environ.get(SOCKET_ENV)
    srv = start_server(tmp_path / "server.log", ledger=ledger)
    try:
        env = {**cold_env(), SOCKET_ENV: srv.path}
        assert not os.path.exists(srv.path)  # still importing
        rc, out, _ = run_opd(["ls"], tmp_path, env)
        assert rc == 0 and "compose" in out
        assert [e["argv"] for e in ledger_entries(ledger)] == [["ls"]]
    finally:
        srv.stop()
        if old is not None:
            os.environ[SOCKET_ENV] = old
    rc, out, _ = run_opd(["ls"], tmp_path, env)  # server gone: cold, at once
    assert rc == 0 and "compose" in out and len(ledger_entries(ledger)) == 1


def test_a_dead_unreaped_server_is_not_waited_for(tmp_path):
    from opd.warmstart import PID_FILE, _alive, _wait_for_server

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not _alive(child.pid) and _alive(os.getpid())
    (tmp_path / PID_FILE).write_text(str(child.pid))
    started = time.monotonic()
    assert not _wait_for_server(str(tmp_path / "sock"), timeout=30)
    assert time.monotonic() - started < 5
    child.wait()


@pytest.mark.slow
def test_a_garbage_or_silent_connection_does_not_stop_the_server(server, tmp_path):
    import socket

    srv, ledger, log = server
    garbage = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    garbage.connect(srv.path)
    garbage.sendall(b"\x00\x00\x00\x05{oops")
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(srv.path)  # connects, sends nothing, hangs up later
    garbage.close()
    before = len(ledger_entries(ledger))
    env = {**cold_env(), SOCKET_ENV: srv.path}
    rc, out, _ = run_opd(["ls"], tmp_path, env)
    silent.close()
    assert rc == 0 and "compose" in out
    assert srv.proc.poll() is None and "malformed request" in log.read_text()
    assert len(ledger_entries(ledger)) == before + 1  # served warm after the bad ones
