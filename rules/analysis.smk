# Analyses: the tidy metrics table (everything downstream reads only it), the gradient-variance
# study (base model + teachers) and the per-task retention curves.


rule collect_metrics:
    input:
        cfg=ancient(CONFIG_FILE),
        evals=all_evals(),
        runs=[*expand(TEACHER_DONE, task=TASKS), *run_dones()],
    output:
        METRICS,
    log:
        f"{LOGS}/analysis/collect.log",
    conda:
        ENV
    params:
        key=COLLECT_KEY,
        train_logs=train_log_args(),
    shell:
        "opd collect --config {input.cfg} --evals {input.evals} {params.train_logs}"
        " --out {output} > {log} 2>&1"


rule grad_variance:
    input:
        cfg=ancient(CONFIG_FILE),
        stage1=stage1(),
        teachers=expand(TEACHER_DONE, task=TASKS),
        ready=variance_ready(),
    output:
        report(
            f"{TABLES_DIR}/grad_variance.csv",
            caption="../report/grad_variance_table.rst",
            category="Analyses",
            subcategory="gradient variance",
            labels={"table": "gradient variance"},
        ),
    log:
        f"{LOGS}/analysis/grad_variance.log",
    benchmark:
        f"{BENCH}/analysis/grad_variance.tsv"
    conda:
        ENV
    container:
        TRAIN_IMAGE
    threads: 1
    resources:
        **EVAL_RESOURCES,
    params:
        key=config_key(
            "variance", "sampling", *task_keys("prompts", "teacher.guidance")
        ),
        teachers=all_teacher_args(),
    shell:
        "opd variance --config {input.cfg} --out {output} {params.teachers} > {log} 2>&1"


rule plot_grad_variance:
    input:
        cfg=ancient(CONFIG_FILE),
        table=f"{TABLES_DIR}/grad_variance.csv",
    output:
        png=report_entry(
            f"{FIGURES_DIR}/grad_variance.png",
            generated_caption(f"{FIGURES_DIR}/grad_variance.png"),
            category="Analyses",
            subcategory="gradient variance",
            labels={"figure": "grad_variance", "format": "png"},
        ),
        pdf=f"{FIGURES_DIR}/grad_variance.pdf",
        rst=f"{FIGURES_DIR}/grad_variance.rst",
        txt=f"{FIGURES_DIR}/grad_variance.caption.txt",
    log:
        f"{LOGS}/analysis/plot_grad_variance.log",
    conda:
        ENV
    params:
        out=results_root,
    shell:
        "opd plot-variance --config {input.cfg} --table {input.table}"
        " --out-dir {params.out} > {log} 2>&1"


rule retention:
    input:
        cfg=ancient(CONFIG_FILE),
        metrics=METRICS,
    output:
        png=report_entry(
            f"{FIGURES_DIR}/retention.png",
            generated_caption(f"{FIGURES_DIR}/retention.png"),
            category="Analyses",
            subcategory="retention",
            labels={"figure": "retention", "format": "png"},
        ),
        pdf=f"{FIGURES_DIR}/retention.pdf",
        rst=f"{FIGURES_DIR}/retention.rst",
        txt=f"{FIGURES_DIR}/retention.caption.txt",
        table=report(
            f"{TABLES_DIR}/retention.csv",
            caption="../report/retention_table.rst",
            category="Analyses",
            subcategory="retention",
            labels={"table": "retention"},
        ),
    log:
        f"{LOGS}/analysis/retention.log",
    conda:
        ENV
    params:
        key=config_key("benchmarks", "tasks"),
        out=results_root,
    shell:
        "opd retention --config {input.cfg} --metrics {input.metrics}"
        " --out-dir {params.out} > {log} 2>&1"


rule check_properties:
    input:
        cfg=ancient(CONFIG_FILE),
        metrics=METRICS,
        ceilings=world_table("prompt_ceilings.json"),
    output:
        csv=report(
            f"{TABLES_DIR}/properties.csv",
            caption="../report/properties.rst",
            category="World",
            labels={"table": "properties 3, 4 and recovery"},
        ),
        md=f"{TABLES_DIR}/properties.md",
        png=report_entry(
            f"{FIGURES_DIR}/recovery.png",
            generated_caption(f"{FIGURES_DIR}/recovery.png"),
            category="Analyses",
            subcategory="recovery",
            labels={"figure": "recovery", "format": "png"},
        ),
        pdf=f"{FIGURES_DIR}/recovery.pdf",
        rst=f"{FIGURES_DIR}/recovery.rst",
        txt=f"{FIGURES_DIR}/recovery.caption.txt",
    log:
        f"{LOGS}/analysis/properties.log",
    conda:
        ENV
    params:
        key=config_key("benchmarks", "tasks"),
        out=output_dir,
        figures=lambda wildcards, output: os.path.dirname(output.png),
        ceilings=input_flag("ceilings"),
    shell:
        "opd properties --config {input.cfg} --metrics {input.metrics} {params.ceilings}"
        " --out-dir {params.out} --figures-dir {params.figures} > {log} 2>&1"
