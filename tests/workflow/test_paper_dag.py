"""The paper profile's DAG (dry runs): a job for every run x seed, teacher and scorer, GPU
resources per job, the CUDA image under ``--sdm apptainer``, the authors' published teachers
fetched by default (training them an option), and none of these paper-only jobs in the mini
world.

Every Snakemake call runs in a temporary working directory (``--directory``), as in
``test_dag.py``; ``apptainer`` is a stand-in that only reports its version (a dry run pulls
nothing).
"""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import pytest

from opd.config import load_config
from opd.registry import SCORERS
from tests.workflow.test_dag import expected_runs, job_stats, snakemake

# every test starts Snakemake (a few seconds each): not in the fast run
pytestmark = pytest.mark.slow

PAPER_ONLY = {
    "fetch_prompts",
    "fetch_teacher",
    "fetch_released",
    "scorer_service",
    "scorer_ready",
    "evaluate_pretrained_teacher",
}
TRAIN_RULES = {"train_teacher", "train_run"}
EVAL_RULES = {"evaluate_base", "evaluate_teacher", "evaluate_pretrained_teacher", "evaluate_run"}
PRETRAINED = "jieliu/SD3.5M-FlowGRPO-Text"
IMAGE = "docker://registry.example/opd-train:1.0"
TRAIN_TEACHERS = (
    "tasks={"
    + ", ".join(
        f"{t}: {{teacher: {{pretrained: null}}}}" for t in ("composition", "text", "aesthetics")
    )
    + "}"
)


def parse_jobs(output: str) -> list[dict]:
    """Every job of a dry run: rule, wildcards, input files, resources and shell command."""
    jobs: list[dict] = []
    job: dict | None = None
    for line in output.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            job = {"rule": m.group(1), "wildcards": {}, "input": [], "resources": {}, "shell": ""}
            jobs.append(job)
        elif job is None:
            continue
        elif m := re.match(r"^\s+wildcards: (.*)$", line):
            job["wildcards"] = dict(item.split("=", 1) for item in m.group(1).split(", "))
        elif m := re.match(r"^\s+input: (.*)$", line):
            job["input"] = m.group(1).split(", ")
        elif m := re.match(r"^\s+resources: (.*)$", line):
            job["resources"] = dict(item.split("=", 1) for item in m.group(1).split(", "))
        elif line.startswith("Shell command:"):
            job["shell"] = line.removeprefix("Shell command:").strip()
    return jobs


def by_rule(jobs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for job in jobs:
        out.setdefault(job["rule"], []).append(job)
    return out


def gpus(job: dict) -> int:
    return int(job["resources"].get("gpu", 0))


def backend(cfg: dict, name: str) -> str:
    """A scorer's backend: its configured one, else its factory's default."""
    options = (cfg.get("scorer_options") or {}).get(name) or {}
    if "backend" in options:
        return options["backend"]
    param = inspect.signature(SCORERS.get(name)).parameters.get("backend")
    return param.default if param is not None else "local"


def scorers_of(cfg: dict) -> set[str]:
    names = {spec["scorer"] for spec in cfg["benchmarks"].values()}
    return names | {n for spec in cfg["tasks"].values() for n in spec["reward"]}


def ok_file(cfg: dict, name: str) -> str:
    folder = "scorers" if backend(cfg, name) == "local" else "services"
    return f"results/paper/{folder}/{name}.ok"


def fake_apptainer(tmp: Path) -> dict:
    """An environment whose ``apptainer`` only prints a version (enough for a dry run)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "apptainer"
    exe.write_text('#!/bin/sh\necho "apptainer version 1.3.4"\n')
    exe.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def paper_dry_run(tmp: Path, *overrides: str) -> str:
    work = tmp / "work"
    work.mkdir()
    args = ["-n", "reproduce", "--sdm", "apptainer", "--config", "profile=paper", *overrides]
    rc, out = snakemake(work, *args, env=fake_apptainer(tmp))
    assert rc == 0, out
    return out


@pytest.fixture(scope="module")
def paper(tmp_path_factory) -> tuple[dict, str]:
    return load_config("paper"), paper_dry_run(tmp_path_factory.mktemp("paper"))


def test_every_run_teacher_and_scorer_has_a_job(paper) -> None:
    cfg, out = paper
    jobs = by_rule(parse_jobs(out))
    runs = expected_runs(cfg)
    assert {(j["wildcards"]["run"], j["wildcards"]["seed"]) for j in jobs["train_run"]} == runs
    # stage 1 by default: the authors' published teachers, fetched once and evaluated
    assert "train_teacher" not in jobs and "evaluate_teacher" not in jobs
    assert {j["wildcards"]["task"] for j in jobs["fetch_teacher"]} == set(cfg["tasks"])
    assert {j["wildcards"]["task"] for j in jobs["evaluate_pretrained_teacher"]} == set(
        cfg["tasks"]
    )
    named = {t: s["teacher"]["pretrained"]["released"] for t, s in cfg["tasks"].items()}
    assert {j["wildcards"]["adapter"] for j in jobs["fetch_released"]} == set(named.values())
    for job in jobs["fetch_teacher"]:
        name = named[job["wildcards"]["task"]]
        assert f"results/paper/released/{name}/DONE" in job["input"]
        assert f"python -m opd.data adapter results/paper/released/{name}/adapter" in job["shell"]
    (geneval,) = [j for j in jobs["fetch_released"] if "geneval" in j["wildcards"]["adapter"]]
    assert (
        "python -m opd.data adapter quanhaol/DiffusionOPD --subfolder GenEvalTeacher/lora"
        " --revision main --out results/paper/released/opd_geneval_teacher/adapter"
        in geneval["shell"]
    )

    services = {j["wildcards"]["scorer"] for j in jobs["scorer_service"]}
    local = {j["wildcards"]["scorer"] for j in jobs["scorer_ready"]}
    assert services | local == scorers_of(cfg) and not services & local
    assert {s["scorer"] for s in cfg["benchmarks"].values()} <= services | local
    assert services == {n for n in scorers_of(cfg) if backend(cfg, n) != "local"}
    # the paper's four services (docker/README.md) and its four in-process scorers
    assert services == {"geneval", "hpsv21", "imagereward", "unifiedreward"}
    assert local == {"ocr", "pickscore", "clipscore", "aesthetic"}
    for job in jobs["scorer_service"] + jobs["scorer_ready"]:
        name = job["wildcards"]["scorer"]
        assert f"python -m opd.rewards.paper.service check --scorer {name}" in job["shell"]
        assert f"> {ok_file(cfg, name)}" in job["shell"]

    stats = job_stats(out)
    assert stats["fetch_prompts"] == 1
    assert stats["train_run"] == len(runs) and stats["evaluate_run"] == len(runs)


def test_gpu_resources_and_gates(paper) -> None:
    cfg, out = paper
    jobs = parse_jobs(out)
    train_gpu = int(cfg["resources"]["gpu"])
    eval_gpu = int(cfg["resources"].get("eval_gpu", 1 if train_gpu else 0))
    assert train_gpu == 8 and eval_gpu == 1
    gates = {ok_file(cfg, s["scorer"]) for s in cfg["benchmarks"].values()}
    for job in jobs:
        rule, inputs = job["rule"], set(job["input"])
        if rule in TRAIN_RULES:
            assert gpus(job) == train_gpu, job
            assert "results/paper/prompts.ok" in inputs, job
        elif rule in EVAL_RULES or rule == "grad_variance":
            assert gpus(job) == eval_gpu, job
            assert "results/paper/prompts.ok" in inputs, job
            if rule != "grad_variance":
                assert gates <= inputs, job
        elif rule == "scorer_ready":
            device = cfg["scorer_options"][job["wildcards"]["scorer"]].get("device", "cuda")
            assert gpus(job) == (eval_gpu if device.startswith("cuda") else 0), job
        else:  # fetches, probes, tables and figures: no GPU
            assert gpus(job) == 0, job
    # the GPU rules run in the training image under --sdm apptainer
    assert "Singularity image docker://opd-train:latest will be pulled." in out


def test_training_the_teachers_stays_an_option(tmp_path) -> None:
    out = paper_dry_run(tmp_path, TRAIN_TEACHERS)
    cfg = load_config("paper")
    jobs = by_rule(parse_jobs(out))
    assert {j["wildcards"]["task"] for j in jobs["train_teacher"]} == set(cfg["tasks"])
    assert {j["wildcards"]["task"] for j in jobs["evaluate_teacher"]} == set(cfg["tasks"])
    assert not {"fetch_teacher", "fetch_released", "evaluate_pretrained_teacher"} & set(jobs)
    assert all(gpus(j) == int(cfg["resources"]["gpu"]) for j in jobs["train_teacher"])
    # the reward scorers of a teacher's task gate its training
    (text,) = [j for j in jobs["train_teacher"] if j["wildcards"]["task"] == "text"]
    assert {ok_file(cfg, n) for n in cfg["tasks"]["text"]["reward"]} <= set(text["input"])


def test_a_pretrained_teacher_is_fetched_and_evaluated_as_its_adapter(tmp_path) -> None:
    trained = "{teacher: {pretrained: null}}"  # the other two trained
    out = paper_dry_run(
        tmp_path,
        f"tasks={{text: {{teacher: {{pretrained: {PRETRAINED}}}}}, composition: {trained},"
        f" aesthetics: {trained}}}",
        "resources={eval_gpu: 2}",
        f"containers={{train_image: '{IMAGE}'}}",
    )
    cfg = load_config("paper")
    jobs = by_rule(parse_jobs(out))
    others = set(cfg["tasks"]) - {"text"}
    assert {j["wildcards"]["task"] for j in jobs["train_teacher"]} == others
    assert {j["wildcards"]["task"] for j in jobs["evaluate_teacher"]} == others
    (fetch,) = jobs["fetch_teacher"]
    assert fetch["wildcards"] == {"task": "text"} and gpus(fetch) == 0
    assert (
        f"python -m opd.data adapter {PRETRAINED} --out results/paper/teachers/text/final"
        in fetch["shell"]
    )
    (evaluate,) = jobs["evaluate_pretrained_teacher"]
    assert evaluate["wildcards"] == {"task": "text"}
    assert "--adapter results/paper/teachers/text/final --run teacher_text" in evaluate["shell"]
    assert "results/paper/teachers/text/DONE" in evaluate["input"]
    for rule in EVAL_RULES | {"grad_variance"}:
        assert all(gpus(j) == 2 for j in jobs[rule]), rule
    # distillation still reads the fetched adapter where a trained one would be
    opd = next(j for j in jobs["train_run"] if j["wildcards"]["run"] == "opd")
    assert "--teacher text=results/paper/teachers/text/final" in opd["shell"]
    assert "results/paper/teachers/text/DONE" in opd["input"]
    assert f"Singularity image {IMAGE} will be pulled." in out


@pytest.mark.parametrize("profile", ["smoke", "mini"])
def test_the_mini_world_has_no_paper_only_jobs(profile, tmp_path) -> None:
    rc, out = snakemake(
        tmp_path, "-n", "reproduce", "--sdm", "apptainer", "--config", f"profile={profile}"
    )
    assert rc == 0, out  # no rule has an image there: apptainer is neither needed nor present
    jobs = parse_jobs(out)
    assert jobs and not PAPER_ONLY & {j["rule"] for j in jobs}
    assert all(gpus(j) == 0 for j in jobs)
    assert not any(f.endswith(".ok") for j in jobs for f in j["input"])
    assert "Singularity image" not in out
