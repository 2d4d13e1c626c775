# Stage 1: one single-task RL teacher per task (run `teacher_<task>`, seed 0), kept as a LoRA
# adapter in results/<profile>/teachers/<task>/final. A task whose `teacher.pretrained` names a
# published LoRA (hub id or peft folder, or `{released: <name>}`, an entry of the `released`
# list, fetched once by fetch_released) copies it there instead of training one.


rule train_teacher:
    input:
        cfg=ancient(CONFIG_FILE),
        stage1=stage1(),
        ready=teacher_ready,
    output:
        TEACHER_DONE,
    log:
        f"{LOGS}/teachers/{{task}}.log",
    benchmark:
        f"{BENCH}/teachers/{{task}}.tsv"
    wildcard_constraints:
        task=only(TRAINED_TASKS),
    # the critical path (teachers, then the method's runs that distil them): ahead of the
    # baselines, which are ready at the same time and would otherwise go first
    priority: 10
    conda:
        ENV
    container:
        TRAIN_IMAGE
    threads: 1
    resources:
        **GPU_RESOURCES,
    params:
        key=teacher_config_key,
        out=output_dir,
        launch=LAUNCH,
    shell:
        "{params.launch} train --config {input.cfg} --run teacher_{wildcards.task} --seed 0"
        " --out {params.out} --restart-on-config-change > {log} 2>&1"


rule fetch_teacher:
    input:
        unpack(fetch_teacher_inputs),
    output:
        TEACHER_DONE,
    log:
        f"{LOGS}/teachers/{{task}}.log",
    wildcard_constraints:
        task=only(PRETRAINED),
    conda:
        ENV
    params:
        source=pretrained_source,
        out=lambda wildcards, output: f"{os.path.dirname(output[0])}/final",
    shell:
        "python -m opd.data adapter {params.source:q} --out {params.out} > {output} 2> {log}"
