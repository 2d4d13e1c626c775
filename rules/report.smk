# Table 1, the ablation table and the paper's figures, regenerated from metrics.csv alone (plus
# the evaluation samples for the sample grid). Each output gets a caption written from the
# measured numbers, which `snakemake --report` shows.


rule make_tables:
    input:
        cfg=ancient(CONFIG_FILE),
        metrics=METRICS,
        bounds=world_table("world_bounds.json"),
    output:
        table_outputs(),
    log:
        f"{LOGS}/report/tables.log",
    conda:
        ENV
    params:
        key=config_key(
            "benchmarks", "tasks", "methods", "table1", "ablations", "released"
        ),
        out=output_dir,
        bounds=input_flag("bounds"),
    shell:
        "opd tables --config {input.cfg} --metrics {input.metrics} {params.bounds}"
        " --out-dir {params.out} > {log} 2>&1"


rule make_figures:
    input:
        cfg=ancient(CONFIG_FILE),
        metrics=METRICS,
        samples=grid_sample_files(),
        bounds=world_table("world_bounds.json"),
    output:
        figure_outputs(),
    log:
        f"{LOGS}/report/figures.log",
    conda:
        ENV
    params:
        key=config_key("benchmarks", "tasks", "methods", "table1", "ablations"),
        out=output_dir,
        bounds=input_flag("bounds"),
        samples=grid_sample_args(),
    shell:
        "opd figures --config {input.cfg} --metrics {input.metrics} {params.samples} {params.bounds}"
        " --out-dir {params.out} > {log} 2>&1"
