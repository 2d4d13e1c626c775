# Stage 0 of the paper profile (no jobs in the mini world): the prompt sets, fetched once before
# the GPU jobs, and a readiness check per scorer. Scorers behind a service (GenEval, HPSv2.1,
# ImageReward, the UnifiedReward judge; docker/README.md) must answer their health probe from
# where Snakemake runs; in-process scorers (OCR, PickScore, CLIPScore, Aesthetic) are built by
# their factory and score one image, which downloads their weights and checks the pinned digests.
# The `.ok` files are ancient inputs: delete one to check again without rerunning anything.


rule fetch_prompts:
    input:
        cfg=ancient(CONFIG_FILE),
    output:
        PROMPTS_OK,
    log:
        f"{LOGS}/prompts.log",
    conda:
        ENV
    params:
        key=config_key("prompts", *task_keys("prompts")),
    shell:
        "python -m opd.data fetch --config {input.cfg} > {output} 2> {log}"


rule scorer_service:
    input:
        cfg=ancient(CONFIG_FILE),
    output:
        SERVICE_OK,
    log:
        f"{LOGS}/services/{{scorer}}.log",
    wildcard_constraints:
        scorer=only(SERVICE_SCORERS),
    conda:
        ENV
    params:
        key=scorer_key,
    shell:
        "python -m opd.rewards.paper.service check --scorer {wildcards.scorer}"
        " --config {input.cfg} > {output} 2> {log}"


rule scorer_ready:
    input:
        cfg=ancient(CONFIG_FILE),
    output:
        SCORER_OK,
    log:
        f"{LOGS}/scorers/{{scorer}}.log",
    wildcard_constraints:
        scorer=only(LOCAL_SCORERS),
    conda:
        ENV
    container:
        TRAIN_IMAGE
    threads: 1
    resources:
        gpu=scorer_gpus,
    params:
        key=scorer_key,
    shell:
        "python -m opd.rewards.paper.service check --scorer {wildcards.scorer}"
        " --config {input.cfg} > {output} 2> {log}"
