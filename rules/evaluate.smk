# Evaluation of every saved checkpoint on every benchmark column (fixed prompts and seeds),
# with a few final samples per run for the sample grid; a checkpoint whose adapter is the
# identity (each run's step 0) reuses the base model's rows at its CFG scale; a fetched
# (published) teacher is evaluated as its adapter folder. One GPU per job in the paper profile
# (resources.eval_gpu).


rule evaluate_base:
    input:
        cfg=ancient(CONFIG_FILE),
        stage1=stage1(),
        ready=eval_ready(),
    output:
        csv=EVAL_BASE,
        samples=SAMPLES_BASE,
    log:
        f"{LOGS}/evals/base.log",
    benchmark:
        f"{BENCH}/evals/base.tsv"
    conda:
        ENV
    container:
        TRAIN_IMAGE
    threads: 1
    resources:
        **EVAL_RESOURCES,
    params:
        key=EVAL_KEY,
    shell:
        "opd evaluate --config {input.cfg} --base --out {output.csv}"
        " --samples {output.samples} > {log} 2>&1"


rule evaluate_teacher:
    input:
        cfg=ancient(CONFIG_FILE),
        done=TEACHER_DONE,
        ready=eval_ready(),
        base=EVAL_BASE,
    output:
        csv=EVAL_TEACHER,
        samples=SAMPLES_TEACHER,
    log:
        f"{LOGS}/evals/teacher_{{task}}.log",
    benchmark:
        f"{BENCH}/evals/teacher_{{task}}.tsv"
    wildcard_constraints:
        task=only(TRAINED_TASKS),
    conda:
        ENV
    container:
        TRAIN_IMAGE
    threads: 1
    resources:
        **EVAL_RESOURCES,
    params:
        key=teacher_eval_key,
        run_dir=done_dir,
    shell:
        "opd evaluate --config {input.cfg} --run-dir {params.run_dir}"
        " --run teacher_{wildcards.task} --seed 0 --base-eval {input.base} --out {output.csv}"
        " --samples {output.samples} > {log} 2>&1"


rule evaluate_run:
    input:
        cfg=ancient(CONFIG_FILE),
        done=RUN_DONE,
        ready=eval_ready(),
        base=EVAL_BASE,
    output:
        csv=EVAL_RUN,
        samples=SAMPLES_RUN,
    log:
        f"{LOGS}/evals/{{run}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/evals/{{run}}/seed{{seed}}.tsv"
    conda:
        ENV
    container:
        TRAIN_IMAGE
    threads: 1
    resources:
        **EVAL_RESOURCES,
    params:
        key=EVAL_KEY,
        run_dir=done_dir,
    shell:
        "opd evaluate --config {input.cfg} --run-dir {params.run_dir} --run {wildcards.run}"
        " --seed {wildcards.seed} --base-eval {input.base} --out {output.csv}"
        " --samples {output.samples} > {log} 2>&1"


rule evaluate_pretrained_teacher:
    input:
        cfg=ancient(CONFIG_FILE),
        done=TEACHER_DONE,
        ready=eval_ready(),
    output:
        csv=EVAL_TEACHER,
        samples=SAMPLES_TEACHER,
    log:
        f"{LOGS}/evals/teacher_{{task}}.log",
    benchmark:
        f"{BENCH}/evals/teacher_{{task}}.tsv"
    wildcard_constraints:
        task=only(PRETRAINED),
    conda:
        ENV
    container:
        TRAIN_IMAGE
    threads: 1
    resources:
        **EVAL_RESOURCES,
    params:
        key=teacher_eval_key,
        adapter=lambda wildcards, input: f"{os.path.dirname(input.done)}/final",
    shell:
        "opd evaluate --config {input.cfg} --adapter {params.adapter}"
        " --run teacher_{wildcards.task} --seed 0 --out {output.csv}"
        " --samples {output.samples} > {log} 2>&1"
