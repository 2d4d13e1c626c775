# Container images from docker/Dockerfile.<image> (the CUDA training image, one image per heavy
# scorer stack), built where docker or podman is installed: `snakemake --cores 1 containers`.


rule build_container:
    input:
        dockerfile=dockerfile,
    output:
        f"{CONTAINERS}/{{image}}.iid",
    log:
        "logs/containers/{image}.log",
    conda:
        ENV
    params:
        engine=CONTAINER_ENGINE or "docker",
        context=docker_context,
    shell:
        "{params.engine} build --iidfile {output} --tag opd-{wildcards.image}:latest"
        " --file {input.dockerfile} {params.context} > {log} 2>&1"
