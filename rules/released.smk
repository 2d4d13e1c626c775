# Published adapters (the profile's `released` list: hub id, subfolder, revision, trained CFG,
# reported numbers) evaluated on every benchmark column under the profile's protocol, beside what
# their authors report: `snakemake --cores all released --config profile=paper`. Each adapter is
# fetched through the huggingface_hub cache (HF_HUB_OFFLINE=1 serves a cached snapshot) and
# evaluated on `released.base` at the CFG it was trained for, with the scorer images recorded.


rule fetch_released:
    input:
        cfg=ancient(CONFIG_FILE),
    output:
        RELEASED_DONE,
    log:
        f"{LOGS}/released/{{adapter}}.fetch.log",
    wildcard_constraints:
        adapter=only(RELEASED),
    conda:
        ENV
    params:
        key=released_key("hub", "subfolder", "revision"),
        source=released_fetch_args,
        out=lambda wildcards, output: f"{os.path.dirname(output[0])}/adapter",
    shell:
        "python -m opd.data adapter {params.source} --out {params.out} > {output} 2> {log}"


rule evaluate_released_base:
    input:
        cfg=ancient(CONFIG_FILE),
        stage1=released_stage1(),
        ready=eval_ready(),
    output:
        csv=RELEASED_BASE_EVAL,
        record=RELEASED_BASE_EVAL.replace(".csv", ".json"),
    log:
        f"{LOGS}/released/base.log",
    benchmark:
        f"{BENCH}/released/base.tsv"
    conda:
        ENV
    container:
        TRAIN_IMAGE
    threads: 1
    resources:
        **EVAL_RESOURCES,
    params:
        key=RELEASED_EVAL_KEY,
        scorers=scorer_image_args(),
    shell:
        "opd evaluate --config {input.cfg} --released-base {params.scorers}"
        " --out {output.csv} > {log} 2>&1"


rule evaluate_released:
    input:
        cfg=ancient(CONFIG_FILE),
        done=RELEASED_DONE,
        stage1=released_stage1(),
        ready=eval_ready(),
    output:
        csv=RELEASED_EVAL,
        record=RELEASED_EVAL.replace(".csv", ".json"),
    log:
        f"{LOGS}/released/{{adapter}}.log",
    benchmark:
        f"{BENCH}/released/{{adapter}}.tsv"
    wildcard_constraints:
        adapter=only(RELEASED),
    conda:
        ENV
    container:
        TRAIN_IMAGE
    threads: 1
    resources:
        **EVAL_RESOURCES,
    params:
        key=RELEASED_EVAL_KEY,
        entry=released_key("hub", "subfolder", "revision", "guidance"),
        adapter=lambda wildcards, input: f"{os.path.dirname(input.done)}/adapter",
        scorers=scorer_image_args(),
    shell:
        "opd evaluate --config {input.cfg} --released {wildcards.adapter}"
        " --adapter {params.adapter} {params.scorers} --out {output.csv} > {log} 2>&1"


rule released_table:
    input:
        cfg=ancient(CONFIG_FILE),
        base=RELEASED_BASE_EVAL,
        evals=list(released_evals().values()),
    output:
        md=f"{TABLES_DIR}/released.md",
        csv=f"{TABLES_DIR}/released.csv",
    log:
        f"{LOGS}/report/released.log",
    conda:
        ENV
    params:
        key=config_key("released", "benchmarks", "eval"),
        evals=released_eval_args,
        out=output_dir,
    shell:
        "opd released --config {input.cfg} --base-eval {input.base} {params.evals}"
        " --out-dir {params.out} > {log} 2>&1"
