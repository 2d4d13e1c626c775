# Stage 1: one single-task RL teacher per task (run `teacher_<task>`, seed 0), kept as a LoRA
# adapter in results/<profile>/teachers/<task>/final.


rule train_teacher:
    input:
        cfg=ancient(CONFIG_FILE),
        stage1=stage1(),
    output:
        TEACHER_DONE,
    log:
        f"{LOGS}/teachers/{{task}}.log",
    benchmark:
        f"{BENCH}/teachers/{{task}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **GPU_RESOURCES,
    params:
        key=teacher_config_key,
        out=output_dir,
        launch=LAUNCH,
    shell:
        "{params.launch} train --config {input.cfg} --run teacher_{wildcards.task} --seed 0"
        " --out {params.out} > {log} 2>&1"
