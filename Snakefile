# DiffusionOPD reproduction suite: on-policy distillation of per-task diffusion RL teachers,
# compared with multi-task RL and cascade RL on every benchmark.
#
#   snakemake --cores all reproduce                        # the default profile (mini, CPU)
#   snakemake --cores all reproduce --config profile=smoke
#   snakemake --report results/mini/report.html            # after reproduce
#   snakemake --cores all tables   /   figures             # regenerate from metrics.csv
#   snakemake --cores 1 prepare --config profile=paper     # fetch prompts/teachers, check scorers
#   snakemake --cores all released --config profile=paper  # published adapters vs their papers
#
# The profile's config (config/profiles/<profile>.yaml over config/defaults.yaml, plus any
# --config / --configfile overrides) is validated when this file is parsed, before any job, and
# written to results/<profile>/config.yaml, which every job reads. Enabling a method or a seed
# is a config edit; rules are generic over {task}, {run} and {seed}.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


# Loads and validates the config (CFG), writes the resolved config, path patterns, helpers.
include: "rules/common.smk"


wildcard_constraints:
    task=alternatives(TASKS),
    run=alternatives(RUNS),
    seed=r"\d+",
    image=r"[A-Za-z0-9][A-Za-z0-9_.-]*",


localrules:
    reproduce,
    tables,
    figures,
    teachers,
    methods,
    containers,
    collect_metrics,
    make_tables,
    make_figures,
    retention,
    check_properties,
    plot_grad_variance,
    prepare,
    fetch_prompts,
    fetch_teacher,
    fetch_released,
    released_table,
    released,
    scorer_service,


rule reproduce:
    default_target: True
    input:
        reproduce_targets(),


rule tables:
    input:
        table_targets(),


rule figures:
    input:
        figure_targets(),


rule teachers:
    input:
        expand(TEACHER_DONE, task=TASKS),


rule methods:
    input:
        run_dones(),


rule containers:
    input:
        container_targets(),


rule prepare:
    input:
        prepare_targets(),


rule released:
    input:
        released_targets(),


include: "rules/world.smk"
include: "rules/paper.smk"
include: "rules/teachers.smk"
include: "rules/methods.smk"
include: "rules/evaluate.smk"
include: "rules/released.smk"
include: "rules/analysis.smk"
include: "rules/report.smk"
include: "rules/containers.smk"


onstart:
    warm_start_begin()


onsuccess:
    warm_start_end()


onerror:
    warm_start_end()
