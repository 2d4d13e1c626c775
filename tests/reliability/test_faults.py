"""Fault injection: runs that survive interruption, corruption, numerical faults and bad input,
and lose nothing.

Each test injects one or more faults and checks the outcome docs/reliability.md promises: the same
weights and metrics after a resume, or a clear error that names the culprit (file, key, step, task,
scorer, service) raised before compute where possible,
with the last good checkpoint left intact. Every fault is counted through the ``fault`` fixture
(``tests/reliability/conftest.py``), and the terminal summary prints ``faults: N tried, M
survived``.

Speed: everything but the workflow test runs in-process on the smoke profile's session fixtures
(a teacher run of two optimizer steps takes a few seconds). The workflow test runs Snakemake on
part of the smoke workflow (training ``teacher_composition`` and ``teacher_text`` as two
parallel jobs, then evaluating ``teacher_text``) in a temporary working directory that holds
the smoke stage-1 artifacts of the session fixture, kills the workflow's whole process group
twice (mid-checkpoint-write, mid-evaluation), unlocks and reruns as docs/reliability.md says, and
compares with an uninterrupted in-process reference under the same resolved config. The full
smoke workflow takes about 7 minutes on two cores, far too long to run twice here; every job
of it runs the same ``opd train`` / ``opd evaluate`` code paths exercised here.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import http.server
import io
import math
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from opd.config import ConfigError, load_config, load_resolved
from opd.training import checkpoint as ckpt
from opd.training.loop import NonFiniteError, resolve_method, train_run, verify_run_log

REPO = Path(__file__).resolve().parents[2]
RUN = "teacher_text"  # grpo_guard, 2 steps, a checkpoint after each


# ---------------------------------------------------------------------------------------------
# helpers


def _digests(root: Path) -> dict[str, str]:
    """relative path -> SHA-256 of every file under ``root`` (``run.json``, the informational
    record of the last start, aside)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "run.json"
    }


def _steps(run_dir: Path) -> list[int]:
    return [int(p.name.split("_")[1]) for p in ckpt.list_checkpoints(run_dir / "checkpoints")]


def _rows(path: Path, drop: Callable[[dict[str, str]], bool] = lambda r: False) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [r for r in csv.DictReader(fh) if not drop(r)]


def _assert_last_good_checkpoint_intact(run_dir: Path, before: dict[str, str], step: int) -> None:
    """Nothing of the run folder changed, the latest checkpoint is ``step`` and verifies."""
    assert _digests(run_dir) == before, "the failed run changed its run folder"
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    assert latest is not None and ckpt.verify_checkpoint(latest)["step"] == step
    assert not (run_dir / "DONE").exists()
    verify_run_log(run_dir)  # the training log still matches the last checkpoint's record


@pytest.fixture(scope="module")
def cfg(smoke_stage1: dict) -> dict:
    return smoke_stage1


@pytest.fixture(scope="module")
def partial_run(cfg: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``teacher_text`` stopped after step 1 of 2 (checkpoints 0 and 1, one step logged)."""
    out = tmp_path_factory.mktemp("partial") / RUN
    train_run(cfg, RUN, 0, out, progress=False, max_steps=1)
    assert _steps(out) == [0, 1]
    return out


@pytest.fixture(scope="module")
def finished_run(cfg: dict, partial_run: Path, tmp_path_factory: pytest.TempPathFactory):
    """The same run resumed to the end and evaluated: (run folder, eval CSV)."""
    from opd.evaluation import evaluate_run

    root = tmp_path_factory.mktemp("finished")
    out = root / RUN
    shutil.copytree(partial_run, out)
    train_run(cfg, RUN, 0, out, progress=False)
    csv_path = evaluate_run(cfg, out, RUN, 0, root / "eval.csv", progress=False)
    return out, csv_path


@pytest.fixture
def run_copy(partial_run: Path, tmp_path: Path) -> Path:
    out = tmp_path / RUN
    shutil.copytree(partial_run, out)
    return out


@pytest.fixture
def patch_scorer(monkeypatch: pytest.MonkeyPatch):
    """``patch_scorer(name, wrap)``: the registered scorer ``name`` built as before, then
    wrapped by ``wrap(scorer) -> callable`` (the factory keeps its signature)."""
    import functools

    from opd.registry import SCORERS

    SCORERS.names()  # load the built-in scorers first

    def patch(name: str, wrap: Callable[[Any], Any]) -> None:
        original = SCORERS.get(name)

        @functools.wraps(original)
        def factory(*args: Any, **kwargs: Any) -> Any:
            return wrap(original(*args, **kwargs))

        monkeypatch.setitem(SCORERS._items, name, factory)

    return patch


# ---------------------------------------------------------------------------------------------
# interruption: the whole workflow killed, then rerun


WORKFLOW_RUNS = ["composition", "text"]  # trained by the workflow (two jobs at a time)
WORKFLOW_EVALS = ["text"]  # and evaluated (one evaluation keeps the test within minutes)
TARGETS = [f"results/smoke/teachers/{t}/DONE" for t in WORKFLOW_RUNS] + [
    f"results/smoke/evals/teacher_{t}/seed0.csv" for t in WORKFLOW_EVALS
]


def _stage1_into(work: Path, cfg: dict) -> None:
    """The smoke stage-1 outputs (world, learned scorers, base model) where the workflow looks
    for them, with mtimes in dependency order (the workflow then has nothing to rebuild)."""
    from opd.cli import main

    res = work / "results" / "smoke"
    paths = cfg["paths"]
    resolved = Path(paths["results"]) / "config.yaml"
    assert main(["world", "--config", str(resolved), "--out", str(res / "world")]) == 0
    shutil.copytree(paths["scorers"], res / "scorers")
    shutil.copytree(paths["base"], res / "base")
    now = time.time()
    os.utime(res / "world" / "world.json", (now - 60, now - 60))
    for done in (res / "scorers" / "summary.json", res / "base" / "DONE"):
        os.utime(done, (now - 30, now - 30))


def _snakemake(work: Path, *args: str, fault: str | None = None, timeout: float = 400):
    """Snakemake on the repository's Snakefile in ``work``, in its own session (process group).

    With ``fault``, every job sees ``OPD_FAULT=<fault>`` and ``OPD_FAULT_SCOPE=group``: the
    job that reaches the point SIGKILLs the whole group -- Snakemake and every running job.
    Returns (return code, output).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPD_FAULT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if fault:
        env.update(OPD_FAULT=fault, OPD_FAULT_SCOPE="group")
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(REPO / "config" / "config.yaml"),
        "--cores",
        "2",
        *args,
        "--config",  # last: it takes every argument after it
        "profile=smoke",
    ]
    log = work.parent / f"snakemake-{time.monotonic_ns()}.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this test started
            proc.wait()
            raise
    return code, log.read_text()


def _reference(cfg: dict, work: Path, root: Path) -> Path:
    """The uninterrupted reference: the same resolved config, trained and evaluated in-process
    on the same stage-1 artifacts."""
    from opd.evaluation import evaluate_run

    res = work / "results" / "smoke"
    ref_cfg = load_resolved(
        res / "config.yaml",
        set_items=[
            f"paths.{key}={res / key if key != 'results' else root}"
            for key in ("results", "world", "scorers", "base")
        ]
        + ["progress=false"],
    )
    for task in WORKFLOW_RUNS:
        run_dir = root / "teachers" / task
        train_run(ref_cfg, f"teacher_{task}", 0, run_dir, progress=False)
        if task not in WORKFLOW_EVALS:
            continue
        evaluate_run(
            ref_cfg,
            run_dir,
            f"teacher_{task}",
            0,
            root / "evals" / f"teacher_{task}" / "seed0.csv",
            root / "samples" / f"teacher_{task}" / "seed0.npz",
            progress=False,
        )
    return root


def _assert_same_results(ref: Path, got: Path) -> None:
    """Final checkpoints (every tensor), final adapters, training logs and eval CSVs equal,
    wall-clock columns aside."""
    from safetensors.torch import load_file

    def no_wall(r: dict[str, str]) -> bool:
        return r.get("metric") == "wall_seconds"

    for task in WORKFLOW_RUNS:
        a, b = ref / "teachers" / task, got / "teachers" / task
        assert _steps(a) == _steps(b) == [0, 1, 2]
        assert not list((b / "checkpoints").glob(".*.tmp")), "a half-written checkpoint is left"
        for path_a, path_b in zip(
            ckpt.list_checkpoints(a / "checkpoints"),
            ckpt.list_checkpoints(b / "checkpoints"),
            strict=True,
        ):
            ta, ma = ckpt.load_checkpoint(path_a)
            tb, mb = ckpt.load_checkpoint(path_b)
            assert ma["config_hash"] == mb["config_hash"]
            assert ta.keys() == tb.keys()
            for group in ta:
                assert ta[group].keys() == tb[group].keys()
                for key in ta[group]:
                    assert torch.equal(ta[group][key], tb[group][key]), (path_b, group, key)
        fa = load_file(str(a / "final" / "adapter_model.safetensors"))
        fb = load_file(str(b / "final" / "adapter_model.safetensors"))
        assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
        assert _rows(a / "metrics.csv", no_wall) == _rows(b / "metrics.csv", no_wall)
        assert verify_run_log(b) is not None
        if task not in WORKFLOW_EVALS:
            continue
        ea = _rows(ref / "evals" / f"teacher_{task}" / "seed0.csv")
        eb = _rows(got / "evals" / f"teacher_{task}" / "seed0.csv")
        assert len(ea) == len(eb) > 0
        for ra, rb in zip(ea, eb, strict=True):
            ra.pop("wall_seconds"), rb.pop("wall_seconds")
            assert ra == rb
        sa = np.load(ref / "samples" / f"teacher_{task}" / "seed0.npz")
        sb = np.load(got / "samples" / f"teacher_{task}" / "seed0.npz")
        assert np.array_equal(sa["images"], sb["images"])


@pytest.mark.slow
def test_workflow_killed_mid_checkpoint_and_mid_evaluation_ends_like_an_uninterrupted_run(
    cfg, tmp_path, fault
):
    work = tmp_path / "work"
    _stage1_into(work, cfg)
    res = work / "results" / "smoke"
    mid_ckpt = fault.tried("workflow process group SIGKILLed mid-checkpoint-write")
    mid_eval = fault.tried("workflow process group SIGKILLed mid-evaluation")

    # 1. a job half-way through writing checkpoint 2 kills Snakemake and its sibling job
    code, out = _snakemake(work, *TARGETS, fault="checkpoint.write:2")
    assert code == -signal.SIGKILL, out
    half = list(res.glob("teachers/*/checkpoints/.step_0000002.tmp"))
    assert half, "no checkpoint was caught half-written"
    assert not any((res / "teachers" / t / "DONE").exists() for t in WORKFLOW_RUNS)

    # 2. the documented recovery: unlock, rerun; this time an evaluation is killed
    code, out = _snakemake(work, "--unlock")
    assert code == 0, out
    code, out = _snakemake(work, *TARGETS, fault="evaluate.checkpoint:1")
    assert code == -signal.SIGKILL, out
    # the first evaluation to reach checkpoint 1 killed everything (maybe a training job too)
    assert any((res / "teachers" / t / "DONE").exists() for t in WORKFLOW_RUNS)
    assert not any((res / "evals" / f"teacher_{t}" / "seed0.csv").exists() for t in WORKFLOW_EVALS)
    assert list(work.glob("logs/smoke/evals/teacher_*.log")), "no evaluation was running"

    # 3. unlock and rerun to the end
    code, out = _snakemake(work, "--unlock")
    assert code == 0, out
    code, out = _snakemake(work, *TARGETS)
    assert code == 0, out

    ref = _reference(cfg, work, tmp_path / "ref" / "results" / "smoke")
    _assert_same_results(ref, res)
    fault.survived(mid_ckpt)
    fault.survived(mid_eval)


def test_resume_under_another_config_refuses_unless_asked(cfg, run_copy, fault):
    changed = {**cfg, "tasks": {**cfg["tasks"]}}
    changed["tasks"]["text"] = {
        **cfg["tasks"]["text"],
        "teacher": {**cfg["tasks"]["text"]["teacher"], "lr": 0.5},
    }
    before = _digests(run_copy)
    with fault("resume with a different config hash"):
        with pytest.raises(ckpt.CheckpointError) as err:
            train_run(changed, RUN, 0, run_copy, progress=False)
        message = str(err.value)
        assert "another configuration" in message and "--allow-config-change" in message
        assert str(run_copy / "checkpoints" / "step_0000001") in message
        _assert_last_good_checkpoint_intact(run_copy, before, 1)
        train_run(changed, RUN, 0, run_copy, progress=False, allow_config_change=True)
        assert _steps(run_copy) == [0, 1, 2] and (run_copy / "DONE").exists()


def test_restart_on_config_change_sets_the_old_run_aside_and_starts_over(cfg, run_copy, fault):
    """The workflow's choice: an edited config reruns the job from step 0, keeping the old."""
    changed = {**cfg, "tasks": {**cfg["tasks"]}}
    changed["tasks"]["text"] = {
        **cfg["tasks"]["text"],
        "teacher": {**cfg["tasks"]["text"]["teacher"], "lr": 0.5},
    }
    before = _digests(run_copy)
    old_hash = ckpt.load_checkpoint(run_copy / "checkpoints" / "step_0000001")[1]["config_hash"]
    with fault("resume with a different config hash, restart asked"):
        train_run(changed, RUN, 0, run_copy, progress=False, restart_on_config_change=True)
        stale = run_copy / f"stale-{old_hash}"
        assert _digests(stale) == before  # the old outputs moved intact
        assert _steps(run_copy) == [0, 1, 2] and (run_copy / "DONE").exists()
        manifest = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_copy / "checkpoints"))[1]
        assert manifest["config_hash"] != old_hash
        first = pd.read_csv(run_copy / "metrics.csv")["step"].min()
        assert first == 1  # logged from the first step again, not resumed after step 1


def test_a_checkpoint_in_progress_is_ignored_and_replaced(cfg, run_copy, fault):
    """A leftover ``.step_*.tmp`` (a kill mid-write) never counts as a checkpoint."""
    with fault("leftover half-written checkpoint folder"):
        tmp = run_copy / "checkpoints" / ".step_0000002.tmp"
        tmp.mkdir()
        (tmp / "student.safetensors").write_bytes(b"\x00" * 10)
        assert ckpt.latest_checkpoint(run_copy / "checkpoints").name == "step_0000001"
        train_run(cfg, RUN, 0, run_copy, progress=False)
        assert _steps(run_copy) == [0, 1, 2] and not tmp.exists()


# ---------------------------------------------------------------------------------------------
# corruption: checkpoints and metrics files


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _alter_value(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    last = lines[-1]
    lines[-1] = re.sub(r",([^,]*)\r?\n$", ",12345\n", last)
    assert lines[-1] != last
    path.write_text("".join(lines), encoding="utf-8")


CHECKPOINT_DAMAGE = {
    "truncated student weights": ("checkpoints/step_0000001/student.safetensors", _truncate),
    "altered optimizer state": ("checkpoints/step_0000001/optimizer.safetensors", _flip),
    "missing EMA weights": ("checkpoints/step_0000001/ema.safetensors", Path.unlink),
    "unreadable manifest": ("checkpoints/step_0000001/manifest.json", _truncate),
    "truncated training log": ("metrics.csv", _truncate),
    "altered training log": ("metrics.csv", _alter_value),
    "deleted training log": ("metrics.csv", Path.unlink),
}


@pytest.mark.parametrize("damage", list(CHECKPOINT_DAMAGE))
def test_damaged_checkpoint_or_log_is_named_and_nothing_restarts(cfg, run_copy, damage, fault):
    rel, how = CHECKPOINT_DAMAGE[damage]
    target = run_copy / rel
    how(target)
    before = _digests(run_copy)
    with fault(f"resume from a checkpoint run with a {damage}"):
        with pytest.raises(ckpt.CheckpointError) as err:
            train_run(cfg, RUN, 0, run_copy, progress=False)
        assert str(target) in str(err.value), str(err.value)
        _assert_last_good_checkpoint_intact_after_damage(run_copy, before)


def _assert_last_good_checkpoint_intact_after_damage(run_dir: Path, before: dict) -> None:
    assert _digests(run_dir) == before, "the refused resume changed the run folder"
    assert _steps(run_dir) == [0, 1] and not (run_dir / "DONE").exists()


def test_evaluating_a_damaged_checkpoint_names_it(cfg, run_copy, tmp_path, fault):
    from opd.evaluation import evaluate_run

    target = run_copy / "checkpoints" / "step_0000001" / "ema.safetensors"
    _flip(target)
    with fault("evaluation of a checkpoint with altered EMA weights"):
        with pytest.raises(ckpt.CheckpointError, match=re.escape(str(target))):
            evaluate_run(cfg, run_copy, RUN, 0, tmp_path / "eval.csv", progress=False)
        assert not (tmp_path / "eval.csv").exists()


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_damaged_outputs_of_a_finished_run_are_refused_by_collect(
    cfg, finished_run, tmp_path, damage, fault
):
    from opd.cli import main
    from opd.evaluation import EvalIntegrityError, verify_eval_csv

    run_dir, eval_csv = finished_run
    work = tmp_path / "copy"
    shutil.copytree(run_dir, work / RUN)
    shutil.copy2(eval_csv, work / "eval.csv")
    shutil.copy2(eval_csv.with_name(eval_csv.name + ".sha256"), work / "eval.csv.sha256")
    assert verify_run_log(work / RUN) is not None and verify_eval_csv(work / "eval.csv")
    how = _truncate if damage == "truncated" else _alter_value
    resolved = Path(cfg["paths"]["results"]) / "config.yaml"
    with fault(f"{damage} eval CSV"):
        how(work / "eval.csv")
        with pytest.raises(EvalIntegrityError, match=re.escape(str(work / "eval.csv"))):
            verify_eval_csv(work / "eval.csv")
    with fault(f"{damage} training log of a finished run"):
        how(work / RUN / "metrics.csv")
        with pytest.raises(ckpt.CheckpointError, match=re.escape(str(work / RUN / "metrics.csv"))):
            verify_run_log(work / RUN)
    with fault(f"opd collect given a {damage} eval CSV and training log"):
        args = ["collect", "--config", str(resolved), "--evals", str(work / "eval.csv")]
        args += ["--train-log", RUN, "0", str(work / RUN), "--out", str(tmp_path / "m.csv")]
        with pytest.raises((EvalIntegrityError, ckpt.CheckpointError)):
            main(args)
        assert not (tmp_path / "m.csv").exists()


# ---------------------------------------------------------------------------------------------
# numerical faults: NaN / Inf in a loss, a reward, a gradient, an evaluation score


def _poisoned_step(monkeypatch: pytest.MonkeyPatch, cfg: dict, poison: Callable) -> str:
    """Wrap the run's method so that ``poison(method, logs)`` runs after each real step."""
    cls, _, _ = resolve_method(cfg, RUN)
    original = cls.step

    def step(self: Any, iteration: int) -> dict[str, float]:
        logs = original(self, iteration)
        return poison(self, logs)

    monkeypatch.setattr(cls, "step", step)
    return cls.__name__


def test_nan_loss_stops_the_run_naming_step_and_component(cfg, run_copy, monkeypatch, fault):
    seen: list[str] = []

    def nan_loss(method: Any, logs: dict[str, float]) -> dict[str, float]:
        key = next(k for k in logs if k.endswith("loss"))
        seen.append(key)
        for p in method.model.adapter_parameters("student"):  # as a NaN loss would
            if p.grad is not None:
                p.grad.fill_(math.nan)
        return {**logs, key: math.nan}

    _poisoned_step(monkeypatch, cfg, nan_loss)
    before = _digests(run_copy)
    with fault("NaN loss"):
        with pytest.raises(NonFiniteError) as err:
            train_run(cfg, RUN, 0, run_copy, progress=False)
        message = str(err.value)
        assert f"non-finite {seen[0]} (nan) at step 2" in message, message
        assert "step_0000001" in message  # the last good checkpoint is named
        _assert_last_good_checkpoint_intact(run_copy, before, 1)


def test_inf_gradient_stops_the_run_naming_step(cfg, run_copy, monkeypatch, fault):
    def inf_grad(method: Any, logs: dict[str, float]) -> dict[str, float]:
        p = next(p for p in method.model.adapter_parameters("student") if p.grad is not None)
        p.grad.view(-1)[0] = math.inf
        return logs

    _poisoned_step(monkeypatch, cfg, inf_grad)
    before = _digests(run_copy)
    with fault("Inf gradient"):
        with pytest.raises(NonFiniteError, match=r"non-finite grad_norm \((inf|nan)\) at step 2"):
            train_run(cfg, RUN, 0, run_copy, progress=False)
        _assert_last_good_checkpoint_intact(run_copy, before, 1)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_reward_stops_the_run_naming_step_task_and_scorer(
    cfg, run_copy, patch_scorer, bad, fault
):
    def poisoned(scorer: Any) -> Callable:
        def score(images, prompts, metadata):
            out = np.asarray(scorer(images, prompts, metadata), dtype=np.float64)
            out[0] = bad
            return out

        return score

    patch_scorer("text", poisoned)
    before = _digests(run_copy)
    with fault(f"{bad} reward"):
        with pytest.raises(NonFiniteError) as err:
            train_run(cfg, RUN, 0, run_copy, progress=False)
        message = str(err.value)
        assert "task 'text' at step 2" in message and "'text'" in message, message
        _assert_last_good_checkpoint_intact(run_copy, before, 1)


def test_non_finite_evaluation_score_names_scorer_and_checkpoint(
    cfg, run_copy, patch_scorer, tmp_path, fault
):
    from opd.evaluation import evaluate_run

    patch_scorer("text", lambda s: lambda i, p, m: np.full(len(i), np.nan))
    with fault("NaN evaluation score"):
        with pytest.raises(FloatingPointError) as err:
            evaluate_run(cfg, run_copy, RUN, 0, tmp_path / "eval.csv", progress=False)
        message = str(err.value)
        assert "scorer 'text'" in message and "column 'text'" in message, message
        assert "step_0000000" in message
        assert not (tmp_path / "eval.csv").exists()


# ---------------------------------------------------------------------------------------------
# bad input


CONFIG_ERRORS = {
    "unknown top-level key": ({"evaluation": {"seeds": [1]}}, "evaluation"),
    "unknown method key": ({"methods": {"opd": {"stepz": 3}}}, "methods.opd"),
    "ill-typed method value": ({"methods": {"opd": {"steps": "two"}}}, "methods.opd.steps"),
    "ill-typed eval value": ({"eval": {"num_steps": "three"}}, "eval.num_steps"),
    "unknown method name": ({"methods": {"opd": {"method": "opdd"}}}, "methods.opd"),
    "unknown teacher method": (
        {"tasks": {"text": {"teacher": {"method": "grpo_gaurd"}}}},
        "tasks.text.teacher",
    ),
    "unknown benchmark scorer": (
        {"benchmarks": {"compose": {"scorer": "composee"}}},
        "benchmarks.compose.scorer",
    ),
    "unknown reward scorer": ({"tasks": {"text": {"reward": {"ocr2": 1.0}}}}, "tasks.text.reward"),
    "shell metacharacters in a path": (
        {"paths": {"results": "results/x; rm -rf ~"}},
        "paths.results",
    ),
    "shell metacharacters in the accelerate file": (
        {"accelerate": {"config_file": "a.yaml && curl x"}},
        "accelerate.config_file",
    ),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_bad_config_is_refused_naming_the_key(case, fault):
    overrides, key = CONFIG_ERRORS[case]
    with fault(f"config: {case}"), pytest.raises(ConfigError, match=re.escape(key)):
        load_config("smoke", overrides=overrides)


def test_cli_refuses_an_ill_typed_override_before_any_compute(tmp_path, capsys, fault):
    from opd.cli import main

    out = tmp_path / "run"
    args = ["train", "--profile", "smoke", "--set", "methods.opd.steps=two"]
    with fault("ill-typed --set override on the command line"):
        code = main([*args, "--run", "opd", "--seed", "0", "--out", str(out)])
        assert code == 2 and "methods.opd.steps" in capsys.readouterr().err
        assert not out.exists()


def test_unknown_run_is_refused_before_compute(cfg, tmp_path, fault):
    with fault("unknown run name"):
        with pytest.raises(KeyError, match="unknown run 'opdd'"):
            train_run(cfg, "opdd", 0, tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()


PROMPT_FILES = {
    "empty": (b"", "holds no prompts"),
    "blank lines only": (b"\n  \n\n", "holds no prompts"),
    "not UTF-8": ("a red cube\nun cube épais\n".encode("latin-1"), "is not UTF-8"),
    "not JSON lines": (b'{"prompt": "a"}\nnot json\n', "line 2"),
}


@pytest.mark.parametrize("case", list(PROMPT_FILES))
def test_bad_prompt_files_are_refused_naming_the_file(case, tmp_path, fault):
    from opd.data import PromptSetError, load_prompt_file

    data, message = PROMPT_FILES[case]
    path = tmp_path / "prompts.txt"
    path.write_bytes(data)
    fmt = "jsonl" if case == "not JSON lines" else "lines"
    profile = {"prompts": {"cache_dir": str(tmp_path / "cache"), "sets": {}}}
    profile["prompts"]["sets"]["mine"] = {"url": str(path), "format": fmt}
    with fault(f"prompt file: {case}"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "not pinned; SHA-256 recorded"
            with pytest.raises(PromptSetError) as err:
                load_prompt_file({"source": "paper", "train": "mine"}, "train", profile)
        assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_overlong_prompt_is_truncated_with_a_warning_naming_it(cfg, fault):
    from opd.training.context import load_base_model

    model = load_base_model(cfg)
    n = model.prompt_encoder.max_length
    long = " ".join(["a red cube on a blue sphere"] * n)
    with fault("prompt longer than the tokenizer allows"):
        with pytest.warns(UserWarning, match=re.escape(repr(long)[:60])):
            embeds = model.encode_prompts([long, "a red cube"])
        assert embeds.hidden.shape[0] == 2 and torch.isfinite(embeds.hidden).all()


def test_missing_teacher_adapters_are_named_before_training(cfg, tmp_path, fault):
    missing = {t: tmp_path / "teachers" / t / "final" for t in cfg["tasks"]}
    with fault("teacher adapter folder missing"):
        with pytest.raises(FileNotFoundError) as err:
            train_run(cfg, "opd", 0, tmp_path / "a", missing, progress=False)
        assert "teacher adapter for task" in str(err.value)
        assert str(next(iter(missing.values()))) in str(err.value)
        assert _steps(tmp_path / "a") == []
    with fault("no teacher adapters given to a distillation run"):
        with pytest.raises(FileNotFoundError, match="needs a teacher adapter for task"):
            train_run(cfg, "opd", 0, tmp_path / "b", {}, progress=False)
        assert _steps(tmp_path / "b") == []


# ---------------------------------------------------------------------------------------------
# scorer services: down, garbage, flaky; never zeros


@contextlib.contextmanager
def _server(answers: list[tuple[int, bytes]]) -> Iterator[tuple[str, list[float]]]:
    """A local HTTP server answering POSTs from ``answers`` in turn (the last one repeats);
    yields (url, arrival times)."""
    hits: list[float] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            code, body = answers[min(len(hits), len(answers) - 1)]
            hits.append(time.monotonic())
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _images(n: int = 2) -> tuple[np.ndarray, list[str], list[dict]]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), ["a"] * n, [{}] * n


GARBAGE = {
    "HTML instead of JSON": (200, b"<html>busy</html>", "not JSON"),
    "too few scores": (200, b'{"scores": [0.5]}', "expected 2 scores"),
    "NaN scores": (200, b'{"scores": [0.5, NaN]}', "non-finite"),
    "error object": (200, b'{"error": "CUDA out of memory"}', "CUDA out of memory"),
    "HTTP 503": (503, b'{"error": "overloaded"}', "HTTP 503"),
}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_from_a_scorer_service_fails_after_bounded_retries(case, fault):
    from opd.rewards.paper.service import ServiceError, remote_scorer

    code, body, message = GARBAGE[case]
    with fault(f"scorer service answers garbage: {case}"), _server([(code, body)]) as (url, hits):
        scorer = remote_scorer("pickscore", "http", url=url, retries=2, backoff=0.05)
        with pytest.raises(ServiceError) as err:
            scorer(*_images())
        assert url in str(err.value) and message in str(err.value), str(err.value)
        assert len(hits) == 3  # the first try and two retries, no more
        assert hits[1] - hits[0] >= 0.045 and hits[2] - hits[1] >= 0.095  # backoff doubles


def test_scorer_service_down_fails_clearly_and_a_flaky_one_recovers(fault):
    from opd.rewards.paper.service import ServiceError, remote_scorer

    url = f"http://127.0.0.1:{_closed_port()}"
    with fault("scorer service down"):
        scorer = remote_scorer("pickscore", "http", url=url, retries=2, backoff=0.01)
        with pytest.raises(ServiceError, match=r"failed after 3 attempt\(s\)") as err:
            scorer(*_images())
        assert url in str(err.value)
    ok = b'{"scores": [0.25, 0.75]}'
    flaky = [(503, b"{}"), (200, b"oops"), (200, ok)]
    with fault("scorer service fails twice, then answers"), _server(flaky) as (url, hits):
        scorer = remote_scorer("pickscore", "http", url=url, retries=2, backoff=0.01)
        assert scorer(*_images()).tolist() == [0.25, 0.75] and len(hits) == 3


def test_a_dead_reward_service_stops_training_without_zeros(cfg, run_copy, patch_scorer, fault):
    from opd.rewards.paper.service import ServiceError, remote_scorer

    url = f"http://127.0.0.1:{_closed_port()}"
    patch_scorer("text", lambda s: remote_scorer("text", "http", url=url, retries=1, backoff=0))
    before = _digests(run_copy)
    with fault("reward service down during training"):
        with pytest.raises(ServiceError, match=re.escape(url)):
            train_run(cfg, RUN, 0, run_copy, progress=False)
        _assert_last_good_checkpoint_intact(run_copy, before, 1)


# ---------------------------------------------------------------------------------------------
# safety


WEIGHT_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".safetensors"}


def test_own_checkpoints_adapters_and_base_model_are_safetensors_only(cfg, finished_run, fault):
    run_dir, _ = finished_run
    with fault("a pickle planted in a checkpoint folder"):
        weights = [
            p
            for root in (run_dir, Path(cfg["paths"]["base"]))
            for p in root.rglob("*")
            if p.suffix in WEIGHT_SUFFIXES
        ]
        assert weights and all(p.suffix == ".safetensors" for p in weights), weights
        latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
        assert all(n.endswith(".safetensors") for n in ckpt.read_manifest(latest)["files"])
        planted = latest / "student.pt"
        torch.save({"x": torch.zeros(1)}, planted)
        try:  # not listed in the manifest: never loaded
            tensors, _ = ckpt.load_checkpoint(latest)
            assert "student" in tensors and "x" not in tensors["student"]
        finally:
            planted.unlink()


class _Payload:
    """A pickle that would create a file when unpickled without ``weights_only``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_third_party_pickles_need_a_pinned_checksum_and_load_weights_only(
    tmp_path, monkeypatch, fault
):
    from opd.data import ChecksumError
    from opd.rewards.paper.weights import load_torch_weights

    good = tmp_path / "head.pt"
    torch.save({"weight": torch.arange(4.0)}, good)
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    loaded = torch.load

    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch.load ran on an unverified file")

    with fault("third-party pickle with a wrong pinned checksum"):
        monkeypatch.setattr(torch, "load", no_load)
        with pytest.raises(ChecksumError, match=re.escape(str(good))):
            load_torch_weights(str(good), "0" * 64, cache_dir=cache)
    with fault("third-party pickle without a pinned checksum"):
        with pytest.raises(ChecksumError, match="no SHA-256 pinned"):
            load_torch_weights(str(good), None, cache_dir=cache)
        monkeypatch.setattr(torch, "load", loaded)
        state = load_torch_weights(str(good), digest, cache_dir=cache)
        assert torch.equal(state["weight"], torch.arange(4.0))
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    buf = io.BytesIO()
    torch.save({"weight": _Payload(marker)}, buf, pickle_module=pickle)
    evil.write_bytes(buf.getvalue())
    with fault("third-party pickle carrying code (checksum pinned)"):
        sha = hashlib.sha256(evil.read_bytes()).hexdigest()
        with pytest.raises(pickle.UnpicklingError):
            load_torch_weights(str(evil), sha, cache_dir=cache)
        assert not marker.exists()


def test_remote_code_off_localhost_binding_and_no_shell(monkeypatch, fault):
    import transformers

    from opd.rewards.paper import service
    from opd.rewards.paper.clip_scorers import CLIPBackbone

    calls: list[dict] = []

    class Fake:
        @classmethod
        def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
            calls.append(kwargs)
            return torch.nn.Linear(1, 1)

    monkeypatch.setattr(transformers, "CLIPModel", Fake)
    monkeypatch.setattr(transformers, "CLIPProcessor", Fake)
    with fault("hub model that ships remote code"):
        CLIPBackbone("some/model").load()
        assert calls and all(kw["trust_remote_code"] is False for kw in calls)
        calls.clear()
        CLIPBackbone("some/model", trust_remote_code=True).load()  # only when configured
        assert all(kw["trust_remote_code"] is True for kw in calls)
        sources = "\n".join(p.read_text() for p in (REPO / "opd").rglob("*.py"))
        assert not re.search(r"trust_remote_code\s*[=:]\s*True", sources)
    with fault("scorer service started without a host"):
        server = service.make_server(lambda i, p, m: np.zeros(len(i)))
        try:
            assert server.server_address[0] == "127.0.0.1" == service.DEFAULT_HOST
        finally:
            server.server_close()
    with fault("a shell command string where an argv list belongs"):
        with pytest.raises(ValueError, match="argv list"):
            service.SubprocessClient("python -m opd.rewards.paper.service serve; rm -rf ~")
        assert not re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(", sources)
