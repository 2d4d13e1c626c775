# Stage 0 of the mini world: the synthetic world, its learned scorers, the base model, and the
# validation of the world's properties (docs/mini_world.md). Scorer training and pretraining run
# side by side on one thread each: measured on 2 cores, that takes 682 s (pretraining, the longer)
# against 271 + 473 = 744 s when each takes both threads in turn (torch gains only 1.25-1.4x from a
# second thread for scorer training). With ``base.split``, pretraining stops after ``at`` steps
# (about when scorer training ends) and a second job resumes it on both threads (1.6x faster per
# step at batch 128), instead of leaving the second core idle. The paper profile has no world
# section: its base model and scorers come from the model hub.


rule build_world:
    input:
        cfg=ancient(CONFIG_FILE),
    output:
        WORLD_JSON,
    log:
        f"{LOGS}/world/world.log",
    conda:
        ENV
    params:
        key=config_key("world"),
        out=output_dir,
    shell:
        "opd world --config {input.cfg} --out {params.out} > {log} 2>&1"


rule train_scorers:
    input:
        cfg=ancient(CONFIG_FILE),
        world=WORLD_JSON,
    output:
        SCORERS_SUMMARY,
    log:
        f"{LOGS}/world/scorers.log",
    benchmark:
        f"{BENCH}/world/scorers.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **GPU_RESOURCES,
    params:
        key=config_key("world", "learned_scorers", "scorer_training", "scorer_options"),
        out=output_dir,
    shell:
        "opd scorers --config {input.cfg} --set threads={threads} --out {params.out} > {log} 2>&1"


rule pretrain_base_head:
    input:
        cfg=ancient(CONFIG_FILE),
        world=WORLD_JSON,
    output:
        temp(PRETRAIN_STATE),
    log:
        f"{LOGS}/world/pretrain_head.log",
    benchmark:
        f"{BENCH}/world/pretrain_head.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **GPU_RESOURCES,
    params:
        key=config_key("world", "model", "base"),
        out=lambda wildcards: CFG["paths"]["base"],
        at=(PRETRAIN_SPLIT or {}).get("at", 0),
    shell:
        "opd pretrain --config {input.cfg} --set threads={threads} --out {params.out}"
        " --state {output} --stop-at {params.at} > {log} 2>&1"


rule pretrain_base:
    input:
        cfg=ancient(CONFIG_FILE),
        world=WORLD_JSON,
        state=[PRETRAIN_STATE] if PRETRAIN_SPLIT else [],
    output:
        BASE_DONE,
    log:
        f"{LOGS}/world/pretrain.log",
    benchmark:
        f"{BENCH}/world/pretrain.tsv"
    conda:
        ENV
    # the configured thread count, not Snakemake's (capped by --cores): the weights depend on it
    threads: (PRETRAIN_SPLIT or {}).get("threads", 1)
    resources:
        **GPU_RESOURCES,
    params:
        key=config_key("world", "model", "base"),
        out=output_dir,
        threads=(PRETRAIN_SPLIT or {}).get("threads", 1),
        state=f"--state {PRETRAIN_STATE}" if PRETRAIN_SPLIT else "",
    shell:
        "opd pretrain --config {input.cfg} --set threads={params.threads} --out {params.out}"
        " {params.state} > {log} 2>&1"


rule validate_world:
    input:
        cfg=ancient(CONFIG_FILE),
        stage1=stage1(),
        base_eval=EVAL_BASE,
    output:
        csv=report(
            f"{TABLES_DIR}/world_validation.csv",
            caption="../report/world_validation.rst",
            category="World",
            labels={"table": "world validation"},
        ),
        md=f"{TABLES_DIR}/world_validation.md",
        bounds=f"{TABLES_DIR}/world_bounds.json",
        ceilings=f"{TABLES_DIR}/prompt_ceilings.json",
    log:
        f"{LOGS}/world/validate.log",
    conda:
        ENV
    threads: 1
    params:
        key=config_key("world", "eval", "validation", "benchmarks"),
        out=output_dir,
    shell:
        "opd validate-world --config {input.cfg} --base-eval {input.base_eval}"
        " --out-dir {params.out} > {log} 2>&1"
