"""The Snakemake workflow: its DAG per profile (dry runs), lint and format, config validation
before any job, and (with a stand-in ``opd``) that a finished workflow reruns nothing.

Every Snakemake call runs in a temporary working directory (``--directory``), so the repository's
own ``results/`` and ``.snakemake/`` are never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from opd.config import load_config
from opd.reporting import FIGURES

# every test starts Snakemake (a few seconds each): not in the fast run
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
CONFIG = REPO / "config" / "config.yaml"


def snakemake(workdir: Path, *args: str, env: dict | None = None, timeout: int = 600):
    """Run Snakemake on the repository's Snakefile in ``workdir``; stdout and stderr together.

    Started as ``python -m snakemake`` with this interpreter, so that job shells see the PATH
    given here (a pyenv shim would put its own bin folder first).
    """
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(SNAKEFILE),
        "--directory",
        str(workdir),
        "--configfile",
        str(CONFIG),
        *args,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def dry_run_jobs(output: str) -> list[tuple[str, dict[str, str], str]]:
    """(rule, wildcards, shell command) of every job listed by a dry run."""
    jobs: list[tuple[str, dict[str, str], str]] = []
    rule, wildcards = None, {}
    for line in output.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line):
            if rule is not None:
                jobs.append((rule, wildcards, ""))
            rule, wildcards = m.group(1), {}
        elif (m := re.match(r"^\s+wildcards: (.*)$", line)) and rule is not None:
            wildcards = dict(item.split("=", 1) for item in m.group(1).split(", "))
        elif line.startswith("Shell command:") and rule is not None:
            jobs.append((rule, wildcards, line.removeprefix("Shell command:").strip()))
            rule, wildcards = None, {}
    if rule is not None:
        jobs.append((rule, wildcards, ""))
    return jobs


def job_stats(output: str) -> dict[str, int]:
    """The dry run's "Job stats" table: rule -> job count."""
    stats: dict[str, int] = {}
    lines = output.splitlines()
    start = lines.index("Job stats:") + 3
    for line in lines[start:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        stats[parts[0]] = int(parts[1])
    return stats


def expected_runs(cfg: dict) -> set[tuple[str, str]]:
    own = cfg.get("run_seeds") or {}
    runs = {(r, str(s)) for r in cfg["table1"] for s in own.get(r, cfg["seeds"])}
    return runs | {(r, str(s)) for r in cfg["ablations"] for s in own.get(r, cfg["ablation_seeds"])}


@pytest.mark.parametrize("profile", ["smoke", "mini", "paper"])
def test_dry_run_lists_every_run_seed_teacher_and_evaluation(profile, tmp_path):
    if not (REPO / "config" / "profiles" / f"{profile}.yaml").exists():
        pytest.skip(f"no {profile} profile")
    rc, out = snakemake(tmp_path, "-n", "reproduce", "--config", f"profile={profile}")
    assert rc == 0, out
    cfg = load_config(profile)
    jobs = dry_run_jobs(out)
    by_rule: dict[str, list[tuple[dict, str]]] = {}
    for rule, wildcards, shell in jobs:
        by_rule.setdefault(rule, []).append((wildcards, shell))

    runs = expected_runs(cfg)
    assert {(w["run"], w["seed"]) for w, _ in by_rule["train_run"]} == runs
    assert {(w["run"], w["seed"]) for w, _ in by_rule["evaluate_run"]} == runs
    fetched = {t for t, s in cfg["tasks"].items() if s["teacher"].get("pretrained")}
    trained = set(cfg["tasks"]) - fetched  # the paper profile fetches its authors' teachers
    assert {w["task"] for w, _ in by_rule.get("train_teacher", [])} == trained
    assert {w["task"] for w, _ in by_rule.get("evaluate_teacher", [])} == trained
    assert {w["task"] for w, _ in by_rule.get("fetch_teacher", [])} == fetched
    assert (profile == "paper") == (fetched == set(cfg["tasks"]))
    stats = job_stats(out)
    assert stats["train_run"] == len(runs) and stats["evaluate_run"] == len(runs)
    once = ["evaluate_base", "grad_variance", "collect_metrics", "make_tables", "make_figures"]
    once += ["retention", "plot_grad_variance", "reproduce"]
    if "world" in cfg:  # the mini world's stage 0 (the paper profile downloads its base model)
        once += ["build_world", "train_scorers", "pretrain_base", "validate_world"]
    if cfg.get("base", {}).get("split"):  # pretraining in two jobs, the second on more threads
        once.append("pretrain_base_head")
        (resume,) = [s for _, s in by_rule["pretrain_base"]]
        threads = cfg["base"]["split"]["threads"]
        assert f"--set threads={threads}" in resume and "--state" in resume, resume
    for rule in once:
        assert stats.get(rule) == 1, (rule, stats)

    # the library contract: teachers are passed to the methods that distil from them only
    shells = {(w["run"], w["seed"]): s for w, s in by_rule["train_run"]}
    opd = shells[("opd", str(cfg["seeds"][0]))]
    for task in cfg["tasks"]:
        assert f"--teacher {task}=results/{profile}/teachers/{task}/final" in opd
    assert "--teacher" not in shells[("multitask_nft", str(cfg["seeds"][0]))]
    assert f"--config results/{profile}/config.yaml" in opd
    # the validated config was written for the jobs to read
    written = yaml.safe_load((tmp_path / f"results/{profile}/config.yaml").read_text())
    assert written["profile"] == profile and written["table1"] == cfg["table1"]


def test_enabling_a_method_and_seeds_is_a_config_edit(tmp_path):
    extra = {
        "seeds": [0, 1],
        "methods": {"opd_sde_0.3": {"method": "opd", "noise_level": 0.3, "steps": 2}},
        "ablations": ["opd_ppo", "opd_sde_0.3"],
    }
    overrides = tmp_path / "more.yaml"
    overrides.write_text(yaml.safe_dump(extra))
    rc, out = snakemake(
        tmp_path,
        "-n",
        "methods",
        "--configfile",
        str(CONFIG),
        str(overrides),
        "--config",
        "profile=smoke",
    )
    assert rc == 0, out
    runs = {(w["run"], w["seed"]) for r, w, _ in dry_run_jobs(out) if r == "train_run"}
    assert runs == expected_runs(load_config("smoke", overrides=extra))
    assert ("opd_sde_0.3", "0") in runs and ("opd", "1") in runs


def test_lint_is_clean(tmp_path):
    rc, out = snakemake(tmp_path, "--lint", "--config", "profile=smoke")
    assert rc == 0, out
    assert "Lints for" not in out, out
    assert "Congratulations" in out


def test_parsing_the_workflow_imports_no_torch(tmp_path):
    """Every snakemake call parses the Snakefile: the config check and the rules' input
    functions use opd.manifest, so a dry run never imports torch, transformers or diffusers."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    rc, out = snakemake(tmp_path, "-n", "reproduce", "--config", "profile=mini", env=env)
    assert rc == 0, out[-3000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.splitlines() if "|" in line}
    assert "opd.config" in imported and "snakemake" in imported  # the profile was read
    assert not imported & {"torch", "transformers", "diffusers"}


def test_snakefmt_is_clean():
    exe = shutil.which("snakefmt")
    if exe is None:
        pytest.skip("snakefmt is not installed")
    proc = subprocess.run(
        [exe, "--check", "Snakefile", "rules"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


MALFORMED = {  # a --config entry or the content of a --configfile, and the key to be named
    "unknown method": ("methods={nosuch: {}}", "methods.nosuch"),
    "wrong type": ("seeds=abc", "seeds"),
    "negative steps": ("methods={opd: {steps: -1}}", "methods.opd.steps"),
    "unknown method option": ("methods={opd: {stepz: 3}}", "methods.opd: unknown key(s) stepz"),
    "missing key": ("benchmarks={extra: {task: text}}", "benchmarks.extra"),
    "file: negative steps": ({"methods": {"opd": {"steps": -3}}}, "methods.opd.steps"),
    "file: wrong type": ({"eval": {"num_steps": "ten"}}, "eval.num_steps"),
    "split beyond the steps": ("base={split: {at: 9, threads: 2}}", "base.split.at"),
    "file: unknown teacher": (
        {"tasks": {"text": {"teacher": {"method": "nosuch"}}}},
        "tasks.text.teacher.method",
    ),
    "file: published adapter without a revision": (
        {"released": {"base": {"hub": "o/base", "revision": "main"}, "adapters": [
            {"name": "x", "hub": "o/x", "subfolder": None, "guidance": 4.5, "reported": None}
        ]}},
        "released.adapters.0: 'revision' is a required property",
    ),
    "file: published adapter reporting an unknown benchmark": (
        {"released": {"base": {"hub": "o/base", "revision": "main"}, "adapters": [
            {"name": "x", "hub": "o/x", "subfolder": None, "revision": "main", "guidance": 4.5,
             "reported": {"source": "a paper", "protocol": {}, "values": {"geneva": 0.9}}}
        ]}},
        "released.adapters[0].reported.values.geneva: not a benchmark",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_config_stops_before_any_job_naming_the_key(case, tmp_path):
    spec, key = MALFORMED[case]
    if isinstance(spec, dict):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump(spec))
        args = ["--configfile", str(CONFIG), str(bad), "--config", "profile=smoke"]
    else:
        args = ["--config", "profile=smoke", spec]
    work = tmp_path / "work"
    work.mkdir()
    rc, out = snakemake(work, "-n", "reproduce", *args)
    assert rc != 0, out
    assert "invalid configuration" in out, out
    assert key in out, out
    assert "Job stats" not in out and "rule " not in out, out
    assert not (work / "results").exists()


STUB = '''#!{python}
"""Stand-in for the opd CLI: writes exactly the files each sub-command promises."""
import sys
from pathlib import Path

FIGURES = {figures!r}
cmd, args = sys.argv[1], sys.argv[2:]


def opt(name):
    return Path(args[args.index(name) + 1]) if name in args else None


def touch(*paths):
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("Generated caption of " + p.stem + ".\\n" if p.suffix == ".rst" else "x\\n")


out, out_dir = opt("--out"), opt("--out-dir")
if cmd == "world":
    touch(out / "world.json")
elif cmd == "scorers":
    touch(out / "summary.json")
elif cmd == "pretrain" and "--stop-at" in args:
    touch(opt("--state"))
elif cmd in ("pretrain", "train"):
    touch(out / "DONE")
elif cmd == "evaluate":
    touch(out, *([opt("--samples")] if "--samples" in args else []))
elif cmd in ("collect", "variance"):
    touch(out)
elif cmd == "validate-world":
    names = ("world_validation.csv", "world_validation.md", "world_bounds.json")
    touch(*[out_dir / n for n in (*names, "prompt_ceilings.json")])
elif cmd == "properties":
    touch(out_dir / "properties.csv", out_dir / "properties.md")
    ext = ("png", "pdf", "rst", "caption.txt")
    touch(*[opt("--figures-dir") / f"recovery.{{e}}" for e in ext])
elif cmd == "tables":
    touch(*[out_dir / f"table1.{{e}}" for e in ("md", "tex", "csv", "rst")])
    touch(*[out_dir / f"ablations.{{e}}" for e in ("md", "csv", "rst")])
elif cmd == "figures":
    touch(*[out_dir / f"{{n}}.{{e}}" for n in FIGURES for e in ("png", "pdf", "rst")])
elif cmd in ("retention", "plot-variance"):
    name = "retention" if cmd == "retention" else "grad_variance"
    ext = ("png", "pdf", "rst", "caption.txt")
    touch(*[out_dir / f"figures/{{name}}.{{e}}" for e in ext])
    if cmd == "retention":
        touch(out_dir / "tables/retention.csv")
else:
    sys.exit("stub opd: unknown command " + cmd)
'''


def test_finished_workflow_reruns_nothing_and_tables_alone_regenerate(tmp_path):
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "opd"
    stub.write_text(STUB.format(python=sys.executable, figures=list(FIGURES)))
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    work = tmp_path / "work"
    work.mkdir()
    smoke = ["--config", "profile=smoke"]

    rc, out = snakemake(work, "--cores", "2", "reproduce", *smoke, env=env)
    assert rc == 0, out
    rc, out = snakemake(work, "-n", "reproduce", *smoke, env=env)
    assert rc == 0 and "Nothing to be done" in out, out

    # editing one method's section reruns that method's jobs and what reads them, nothing else
    rc, out = snakemake(work, "-n", "reproduce", *smoke, "methods={opd: {steps: 3}}", env=env)
    assert rc == 0, out
    stats = job_stats(out)
    assert stats["train_run"] == 1 and stats["evaluate_run"] == 1, stats
    assert not {"train_teacher", "pretrain_base", "build_world", "evaluate_base"} & set(stats)

    (work / "results/smoke/tables/table1.md").unlink()
    rc, out = snakemake(work, "-n", "tables", *smoke, env=env)
    assert rc == 0, out
    assert job_stats(out) == {"make_tables": 1, "tables": 1}

    report = work / "results/smoke/report.html"
    rc, out = snakemake(work, "--report", str(report), *smoke, env=env)
    assert rc == 0, out
    assert "Generated caption of convergence" in report.read_text()
    assert "Generated caption of recovery" in report.read_text()


def test_split_pretraining_runs_as_two_jobs_and_leaves_no_state(tmp_path):
    """The real ``opd`` through Snakemake: the head job saves the state, the second job resumes
    from it on the configured threads, Snakemake deletes the state, and nothing reruns."""
    split = ["profile=smoke", "base={split: {at: 3, threads: 2}}", "progress=false"]
    target = "results/smoke/base/DONE"
    rc, out = snakemake(tmp_path, "--cores", "2", target, "--config", *split)
    assert rc == 0, out
    assert "pretrain_base_head" in out and "Removing temporary output" in out, out
    base = tmp_path / "results/smoke/base"
    summary = json.loads((base / "pretrain.json").read_text())
    assert summary["resumed_at"] == 3 and summary["steps"] == 5, summary
    assert not (base / "pretrain_state.pt").exists()
    rc, out = snakemake(tmp_path, "-n", target, "--config", *split)
    assert rc == 0 and "Nothing to be done" in out, out
