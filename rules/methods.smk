# Stage 2: every configured run x seed (Table-1 runs: `seeds`; ablations: `ablation_seeds`;
# a run in `run_seeds`: its own).
# Methods that distil from teachers get every task's teacher adapter.


rule train_run:
    input:
        unpack(train_inputs),
        ready=run_ready(),
    output:
        RUN_DONE,
    log:
        f"{LOGS}/runs/{{run}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/runs/{{run}}/seed{{seed}}.tsv"
    # longest first: each baseline's budget is the teachers' plus the student's, so its runs
    # start before the short distillation runs, which then fill the cores at the end
    priority: run_priority
    conda:
        ENV
    container:
        TRAIN_IMAGE
    threads: 1
    resources:
        **GPU_RESOURCES,
    params:
        key=run_config_key,
        out=output_dir,
        teachers=teacher_args,
        launch=LAUNCH,
    shell:
        "{params.launch} train --config {input.cfg} --run {wildcards.run} --seed {wildcards.seed}"
        " --out {params.out} {params.teachers} --restart-on-config-change > {log} 2>&1"
