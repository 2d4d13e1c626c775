"""Bookkeeping shared by the rules: the validated config, path patterns and input functions.

Logic lives in the ``opd`` package. This file only loads the chosen profile's configuration
(stopping before any job, with a message naming the key, if it is invalid), writes the resolved
config that every job reads, names the output paths and lists what each rule needs.
"""

import os
import re
import shlex
import shutil
from pathlib import Path

from snakemake.exceptions import WorkflowError

from opd.config import (
    ConfigError,
    config_hash,
    deep_merge,
    load_config,
    method_section,
    run_seeds,
    write_resolved,
    yaml_leaves,
)
from opd import manifest
from opd.released import adapters as released_adapters
from opd.released import pretrained_teachers as configured_pretrained
from opd.released import teacher_adapter
from opd.reporting import FIGURES, TABLES

# ---------------------------------------------------------------------------------------------
# The configuration: profile + defaults + --config/--configfile overrides, validated at parse time.


def cli_overrides():
    """The ``--config`` entries with their values typed (Snakemake types numbers but leaves
    ``warm_start=false`` a string)."""
    entries = dict(workflow.config_settings.config or {})
    return {key: yaml_leaves(v) for key, v in entries.items()}


def load_workflow_config(raw):
    """The merged, validated config; an invalid one stops the workflow before any job."""
    try:
        return load_config(
            raw.get("profile"), overrides=deep_merge(raw, cli_overrides())
        )
    except ConfigError as err:
        message = str(err)
        if not message.startswith("invalid configuration"):
            message = f"invalid configuration: {message}"
        raise WorkflowError(message) from None


CFG = load_workflow_config(config)
PROFILE = CFG["profile"]
RESULTS = CFG["paths"]["results"]
LOGS = f"logs/{PROFILE}"
BENCH = f"benchmarks/{PROFILE}"
CONFIG_FILE = f"{RESULTS}/config.yaml"
# Rewritten only when its content changes, so that its mtime stays put.
write_resolved(CFG, CONFIG_FILE)

TASKS = list(CFG["tasks"])
RUNS = list(CFG["methods"])
ENV = "../envs/opd.yaml"


def job_resources():
    """Scheduler resources of the GPU jobs: the config's ``resources`` (gpu, mem_mb, runtime)."""
    given = dict(CFG.get("resources") or {})
    resources = {"gpu": int(given.get("gpu", 0))}
    resources.update({k: int(given[k]) for k in ("mem_mb", "runtime") if k in given})
    return resources


GPU_RESOURCES = job_resources()


def eval_gpus():
    """GPUs of an evaluation (and gradient-variance) job: ``resources.eval_gpu``, by default 1
    where the training jobs have GPUs and 0 on a CPU profile."""
    given = dict(CFG.get("resources") or {})
    if given.get("eval_gpu") is not None:
        return int(given["eval_gpu"])
    return 1 if GPU_RESOURCES["gpu"] > 0 else 0


EVAL_RESOURCES = {**GPU_RESOURCES, "gpu": eval_gpus()}


def train_image():
    """Image of the GPU jobs under ``--sdm apptainer``: ``containers.train_image``, by default
    the CUDA training image of docker/ in the paper profile and none elsewhere (``None``: the
    rule runs in Snakemake's own environment, or its conda one)."""
    default = "docker://opd-train:latest" if PROFILE == "paper" else None
    return (CFG.get("containers") or {}).get("train_image", default)


TRAIN_IMAGE = train_image()


def train_launcher():
    """``opd``, or ``accelerate launch ... -m opd.cli`` where the config names an accelerate file."""
    accelerate = CFG.get("accelerate") or {}
    if accelerate.get("config_file"):
        return f"accelerate launch --config_file {accelerate['config_file']} -m opd.cli"
    return "opd"


LAUNCH = train_launcher()


RUN_SEEDS = run_seeds(CFG)  # run -> training seeds (opd.config.run_seeds)


def alternatives(names):
    """A regex matching exactly one of ``names`` (wildcard constraints from the config)."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))


def only(names):
    """Like `alternatives`, but matching nothing for no names (a rule with no jobs)."""
    return alternatives(names) if names else "(?!)"


# ---------------------------------------------------------------------------------------------
# What the paper profile fetches or checks before its GPU jobs (nothing in the mini world):
# published teacher LoRAs, prompt sets, and its scorers (services answering, weights in place).


# Task -> published LoRA of the tasks whose teacher is fetched: a hub id or peft folder, or
# {released: <name>}, an entry of `released.adapters` (fetched once, by fetch_released).
PRETRAINED = configured_pretrained(CFG)
RELEASED = list(released_adapters(CFG))  # published adapters evaluated by `released`
TRAINED_TASKS = [t for t in TASKS if t not in PRETRAINED]
NEEDS_PROMPTS = any(
    (spec.get("prompts") or {}).get("source", "mini") != "mini"
    for spec in CFG["tasks"].values()
)


def scorer_options(name):
    return dict((CFG.get("scorer_options") or {}).get(name) or {})


def scorer_backend(name):
    """``scorer_options.<name>.backend``, else the default of the scorer's factory."""
    options = scorer_options(name)
    if "backend" in options:
        return str(options["backend"])
    return manifest.scorer(name)["backend"]


def external_scorers():
    """Benchmark and reward scorers that are neither part of the mini world nor learned by it:
    the paper's scorers (opd.rewards.paper) and any scorer with a configured ``backend``.
    """
    names = [spec["scorer"] for spec in CFG["benchmarks"].values()]
    names += [n for spec in CFG["tasks"].values() for n in spec["reward"]]
    learned = set(CFG.get("learned_scorers") or [])
    return [
        n
        for n in dict.fromkeys(names)
        if n not in learned
        and (manifest.scorer(n)["paper"] or "backend" in scorer_options(n))
    ]


SERVICE_SCORERS = [n for n in external_scorers() if scorer_backend(n) != "local"]
LOCAL_SCORERS = [n for n in external_scorers() if scorer_backend(n) == "local"]


# ---------------------------------------------------------------------------------------------
# Paths (patterns with {task}, {run}, {seed}).

WORLD_JSON = f"{CFG['paths']['world']}/world.json"
SCORERS_SUMMARY = f"{CFG['paths']['scorers']}/summary.json"
BASE_DONE = f"{CFG['paths']['base']}/DONE"
PRETRAIN_SPLIT = (CFG.get("base") or {}).get("split")  # {at, threads} or None
PRETRAIN_STATE = f"{CFG['paths']['base']}/pretrain_state.pt"
TEACHER_DONE = f"{RESULTS}/teachers/{{task}}/DONE"
RUN_DONE = f"{RESULTS}/runs/{{run}}/seed{{seed}}/DONE"
EVAL_BASE = f"{RESULTS}/evals/base/seed0.csv"
EVAL_TEACHER = f"{RESULTS}/evals/teacher_{{task}}/seed0.csv"
EVAL_RUN = f"{RESULTS}/evals/{{run}}/seed{{seed}}.csv"
SAMPLES_BASE = f"{RESULTS}/samples/base/seed0.npz"
SAMPLES_TEACHER = f"{RESULTS}/samples/teacher_{{task}}/seed0.npz"
SAMPLES_RUN = f"{RESULTS}/samples/{{run}}/seed{{seed}}.npz"
METRICS = f"{RESULTS}/metrics.csv"
TABLES_DIR = f"{RESULTS}/tables"
FIGURES_DIR = f"{RESULTS}/figures"
CONTAINERS = "results/containers"
PROMPTS_OK = f"{RESULTS}/prompts.ok"
RELEASED_DIR = f"{RESULTS}/released"
RELEASED_DONE = f"{RELEASED_DIR}/{{adapter}}/DONE"
RELEASED_EVAL = f"{RELEASED_DIR}/{{adapter}}/eval.csv"  # and its record, eval.json
RELEASED_BASE_EVAL = f"{RELEASED_DIR}/base/eval.csv"
SERVICE_OK = f"{RESULTS}/services/{{scorer}}.ok"
SCORER_OK = f"{RESULTS}/scorers/{{scorer}}.ok"


# ---------------------------------------------------------------------------------------------
# Config keys each rule depends on. The resolved config is an `ancient` input (editing one
# method must not retrain the world); instead each rule carries a hash of the sections it reads
# as a param, so Snakemake's params trigger reruns exactly the jobs whose settings changed.


def _lookup(path):
    node = CFG
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def config_key(*paths):
    """A short hash of the config sections ``paths`` (dotted)."""
    return config_hash({p: _lookup(p) for p in paths})


def task_keys(*fields):
    """``tasks.<task>.<field>`` for every task."""
    return [f"tasks.{t}.{f}" for t in TASKS for f in fields]


EVAL_KEY = config_key("eval", "benchmarks", *task_keys("prompts"))
COLLECT_KEY = config_key(
    "table1", "ablations", "methods", "world.version", *task_keys("teacher.method")
)


def teacher_config_key(wildcards):
    return config_key(f"tasks.{wildcards.task}", "sampling")


def teacher_eval_key(wildcards):
    task = wildcards.task
    return config_key(
        "eval", "benchmarks", *task_keys("prompts"), f"tasks.{task}.teacher"
    )


def released_key(*fields):
    """A params function: a hash of the ``fields`` of the job's released entry."""

    def key(wildcards):
        entry = released_adapters(CFG)[wildcards.adapter]
        return config_hash({f: entry.get(f) for f in fields})

    return key


RELEASED_EVAL_KEY = config_key(
    "eval",
    "benchmarks",
    *task_keys("prompts"),
    "released.base",
    "model.sd3",
    "model.dtype",
)


def run_config_key(wildcards):
    return config_key(
        f"methods.{wildcards.run}",
        "sampling",
        *task_keys("prompts", "reward", "teacher.guidance"),
    )


# ---------------------------------------------------------------------------------------------
# Inputs.


def stage1():
    """The fixed stage-1 artifacts every training and evaluation needs (those the profile has)."""
    files = []
    if "world" in CFG:
        files.append(WORLD_JSON)
    if CFG.get("learned_scorers"):
        files.append(SCORERS_SUMMARY)
    if "base" in CFG:
        files.append(BASE_DONE)
    return files


def released_stage1():
    """Stage-1 artifacts of a published adapter's evaluation: the mini world and its learned
    scorers where the profile has them, not its own base (``released.base`` is the base).
    """
    return [f for f in stage1() if f != BASE_DONE]


def released_adapter_dir(name):
    """The peft folder that fetch_released writes for released entry ``name``."""
    return f"{os.path.dirname(RELEASED_DONE.format(adapter=name))}/adapter"


def released_fetch_args(wildcards):
    """``HUB [--subfolder S] [--revision R]`` of the job's released entry (shell-quoted)."""
    entry = released_adapters(CFG)[wildcards.adapter]
    args = [shlex.quote(entry["hub"])]
    for key in ("subfolder", "revision"):
        if entry.get(key):
            args.append(f"--{key} {shlex.quote(entry[key])}")
    return " ".join(args)


def scorer_image(name):
    """Where scorer ``name`` runs while an evaluation job scores: a service's container image
    (``containers.scorer_images``; ``external`` without one), an in-process scorer in the job's
    own image (``in-process`` where the job has none)."""
    if name in SERVICE_SCORERS:
        images = (CFG.get("containers") or {}).get("scorer_images") or {}
        return str(images.get(name, "external"))
    if name in LOCAL_SCORERS and TRAIN_IMAGE:
        return TRAIN_IMAGE
    return "in-process"


def scorer_image_args():
    """``--scorer-image NAME=WHERE`` for every benchmark column's scorer: recorded with each
    released-model evaluation (the scorer's version is part of its protocol)."""
    names = dict.fromkeys(spec["scorer"] for spec in CFG["benchmarks"].values())
    return " ".join(f"--scorer-image {n}={scorer_image(n)}" for n in names)


def released_evals():
    """Name -> eval CSV of every published adapter."""
    return {name: RELEASED_EVAL.format(adapter=name) for name in RELEASED}


def released_eval_args(wildcards, input):
    """``--eval NAME=CSV`` for every published adapter's evaluation."""
    return " ".join(f"--eval {name}={path}" for name, path in released_evals().items())


def ready_files(scorers):
    """The paper profile's gates before a GPU job that samples prompts and scores with
    ``scorers``: the fetched prompt sets and each scorer's ``.ok``. Ancient: checking a
    service again (deleting its ``.ok``) never reruns finished jobs."""
    files = [PROMPTS_OK] if NEEDS_PROMPTS else []
    for name in dict.fromkeys(scorers):
        if name in SERVICE_SCORERS:
            files.append(SERVICE_OK.format(scorer=name))
        elif name in LOCAL_SCORERS:
            files.append(SCORER_OK.format(scorer=name))
    return [ancient(f) for f in files]


def reward_scorers(tasks):
    return [n for t in tasks for n in CFG["tasks"][t]["reward"]]


def eval_ready():
    """Gates of an evaluation: prompts and every benchmark column's scorer."""
    return ready_files(spec["scorer"] for spec in CFG["benchmarks"].values())


def teacher_ready(wildcards):
    """Gates of a teacher's training: prompts and its task's reward scorers."""
    return ready_files(reward_scorers([wildcards.task]))


def run_ready():
    """Gates of a run's training: prompts and every task's reward scorers."""
    return ready_files(reward_scorers(TASKS))


def variance_ready():
    """Gates of the gradient-variance study: prompts and its task's reward scorers."""
    task = (CFG.get("variance") or {}).get("task")
    return ready_files(reward_scorers([task] if task in TASKS else TASKS))


def pretrained_source(wildcards):
    """What fetch_teacher copies: the fetched released entry's folder, or the hub id / folder."""
    name = teacher_adapter(CFG, wildcards.task)
    if name is not None:
        return released_adapter_dir(name)
    return PRETRAINED[wildcards.task]


def fetch_teacher_inputs(wildcards):
    """The resolved config, and the fetched released entry when the teacher names one."""
    files = {"cfg": ancient(CONFIG_FILE)}
    name = teacher_adapter(CFG, wildcards.task)
    if name is not None:
        files["released"] = RELEASED_DONE.format(adapter=name)
    return files


def scorer_key(wildcards):
    return config_key(f"scorer_options.{wildcards.scorer}")


def scorer_gpus(wildcards):
    """An evaluation's GPUs for an in-process scorer on CUDA (its configured device), else 0."""
    options = scorer_options(wildcards.scorer)
    device = (
        options.get("device") or (options.get("local") or {}).get("device") or "cuda"
    )
    return EVAL_RESOURCES["gpu"] if str(device).startswith("cuda") else 0


def needs_teachers(run):
    """Whether run ``run`` (a method run or ``teacher_<task>``) distils from the teachers."""
    return manifest.method(method_section(CFG, run)[0])["needs_teachers"]


def train_inputs(wildcards):
    """Stage-1 artifacts, plus every task's teacher for methods that distil from teachers."""
    files = {"cfg": ancient(CONFIG_FILE), "stage1": stage1()}
    if needs_teachers(wildcards.run):
        files["teachers"] = expand(TEACHER_DONE, task=TASKS)
    return files


def teacher_dir(task):
    return os.path.dirname(TEACHER_DONE.format(task=task))


def all_teacher_args():
    """``--teacher TASK=ADAPTER_DIR`` for every task."""
    return " ".join(f"--teacher {t}={teacher_dir(t)}/final" for t in TASKS)


def run_priority(wildcards):
    """Scheduling priority of a training run, below the teachers' 10: runs that distil from
    teachers are short, the rest (baselines sized by fairness) long and started first.
    """
    return 1 if needs_teachers(wildcards.run) else 5


def teacher_args(wildcards):
    """Every task's teacher for methods that distil from teachers; nothing for the others."""
    return all_teacher_args() if needs_teachers(wildcards.run) else ""


def done_dir(wildcards, input):
    """The run folder of the ``done`` marker input."""
    return os.path.dirname(input.done)


def output_dir(wildcards, output):
    """The folder of the first output."""
    return os.path.dirname(output[0])


def results_root(wildcards, output):
    """``results/<profile>`` from a first output under ``results/<profile>/<folder>/``."""
    return str(Path(output[0]).parents[1])


def run_evals():
    return [
        EVAL_RUN.format(run=r, seed=s) for r, seeds in RUN_SEEDS.items() for s in seeds
    ]


def run_dones():
    return [
        RUN_DONE.format(run=r, seed=s) for r, seeds in RUN_SEEDS.items() for s in seeds
    ]


def all_evals():
    """Every eval CSV: base, teachers, every configured run x seed."""
    return [EVAL_BASE, *expand(EVAL_TEACHER, task=TASKS), *run_evals()]


def train_log_args():
    """``--train-log RUN SEED DIR`` for every teacher and run (their ``metrics.csv`` logs)."""
    items = [(f"teacher_{t}", 0, teacher_dir(t)) for t in TASKS]
    items += [
        (r, s, os.path.dirname(RUN_DONE.format(run=r, seed=s)))
        for r, seeds in RUN_SEEDS.items()
        for s in seeds
    ]
    return " ".join(f"--train-log {r} {s} {d}" for r, s, d in items)


def grid_samples():
    """(label, npz) of the sample grid: base + CFG, the teachers, each Table-1 run's first seed."""
    items = [("base_cfg", SAMPLES_BASE)]
    items += [(f"teacher_{t}", SAMPLES_TEACHER.format(task=t)) for t in TASKS]
    items += [
        (r, SAMPLES_RUN.format(run=r, seed=RUN_SEEDS[r][0])) for r in CFG["table1"]
    ]
    return items


def grid_sample_files():
    return [path for _, path in grid_samples()]


def grid_sample_args():
    return " ".join(f"--samples {label}={path}" for label, path in grid_samples())


# ---------------------------------------------------------------------------------------------
# Report entries. Captions that state measured numbers are written by the commands next to
# their outputs (<name>.rst) and read when `snakemake --report` renders the report.


def generated_caption(path):
    return os.path.abspath(f"{os.path.splitext(path)[0]}.rst")


def report_entry(path, caption, **kwargs):
    """``path`` marked for the HTML report with ``caption`` and a category."""
    return report(path, caption=caption, **kwargs)


def figure_outputs():
    """PNG (in the report), PDF and generated caption of each figure of `opd figures`."""
    files = []
    for name in FIGURES:
        png = f"{FIGURES_DIR}/{name}.png"
        labels = {"figure": name, "format": "png"}
        entry = report_entry(
            png,
            generated_caption(png),
            category="Figures",
            subcategory=name,
            labels=labels,
        )
        files += [entry, f"{FIGURES_DIR}/{name}.pdf", f"{FIGURES_DIR}/{name}.rst"]
    return files


def table_outputs():
    """Table 1 and the ablation table (CSV in the report), their Markdown/LaTeX and captions."""
    files = []
    for name, formats in TABLES.items():
        csv = f"{TABLES_DIR}/{name}.csv"
        labels = {"table": name}
        entry = report_entry(
            csv, generated_caption(csv), category="Tables", labels=labels
        )
        others = [f"{TABLES_DIR}/{name}.{ext}" for ext in formats if ext != "csv"]
        files += [entry, *others, f"{TABLES_DIR}/{name}.rst"]
    return files


# ---------------------------------------------------------------------------------------------
# Targets.


def table_targets():
    files = [
        f"{TABLES_DIR}/{name}.{ext}"
        for name, formats in TABLES.items()
        for ext in formats
    ]
    return [*files, f"{TABLES_DIR}/retention.csv", f"{TABLES_DIR}/properties.csv"]


def world_table(name):
    """A table the world validation writes (``world_bounds.json``: each column's floor and
    ceiling; ``prompt_ceilings.json``: its best-of-16 clean-render ceiling per prompt), as an
    input list: empty for profiles without a world."""
    return [f"{TABLES_DIR}/{name}"] if "world" in CFG else []


def input_flag(name):
    """A params function giving ``--<name> FILE`` for the rule's input ``name``, or nothing when
    that input is empty (a profile without a world)."""

    def flag(wildcards, input):
        return f"--{name} {input[name]}" if input[name] else ""

    return flag


def figure_targets():
    names = [*FIGURES, "retention", "grad_variance", "recovery"]
    return [f"{FIGURES_DIR}/{n}.{e}" for n in names for e in ("png", "pdf")]


def reproduce_targets():
    """Everything of the profile: world validation, metrics, tables and figures."""
    files = [
        METRICS,
        *table_targets(),
        *figure_targets(),
        f"{TABLES_DIR}/grad_variance.csv",
    ]
    if "world" in CFG:
        files.append(f"{TABLES_DIR}/world_validation.csv")
    return files


def released_targets():
    """The released-model table, where the profile configures published adapters."""
    if not CFG.get("released"):
        return []
    return [f"{TABLES_DIR}/released.{ext}" for ext in ("md", "csv")]


def prepare_targets():
    """What the paper profile fetches and checks before its GPU jobs (`snakemake prepare`)."""
    files = [PROMPTS_OK] if NEEDS_PROMPTS else []
    files += expand(TEACHER_DONE, task=list(PRETRAINED))
    files += expand(SERVICE_OK, scorer=SERVICE_SCORERS)
    return files + expand(SCORER_OK, scorer=LOCAL_SCORERS)


# ---------------------------------------------------------------------------------------------
# Containers (built only where a container engine is installed).

CONTAINER_ENGINE = shutil.which("docker") or shutil.which("podman")
DOCKER_DIR = Path(workflow.basedir) / "docker"


def container_images():
    """Image names: the config's ``containers.images`` or every ``docker/Dockerfile.<name>``."""
    images = (CFG.get("containers") or {}).get("images")
    if images is None:
        images = sorted(p.suffix.lstrip(".") for p in DOCKER_DIR.glob("Dockerfile.*"))
    return list(images)


def container_targets():
    if CONTAINER_ENGINE is None:
        return []
    return expand(f"{CONTAINERS}/{{image}}.iid", image=container_images())


def dockerfile(wildcards):
    return str(DOCKER_DIR / f"Dockerfile.{wildcards.image}")


def docker_context(wildcards, input):
    """The build context: the repository root (the images copy the package from it)."""
    return str(Path(input.dockerfile).parents[1])


# ---------------------------------------------------------------------------------------------
# Warm start (opd.warmstart): on a local run without conda or containers, the jobs' `opd`
# processes fork from one server that imported torch, transformers, peft and diffusers once,
# instead of spending about 8 s each importing them.

WARM = {}


def warm_start_begin():
    """Start the warm server when the config asks for it and every job runs here, as itself."""
    if not CFG.get("warm_start") or workflow.remote_exec:
        return
    if workflow.deployment_settings.deployment_method:
        return
    from opd.warmstart import start_server

    WARM["server"] = start_server(
        Path(f"{LOGS}/warmstart.log"), ledger=Path(f"{BENCH}/warm_jobs.jsonl")
    )


def warm_start_end():
    server = WARM.pop("server", None)
    if server is not None:
        server.stop()
