# The embedded models. Their weights and configs are committed; the training rule runs only
# when a model file is missing or a run is forced (`snakemake --forcerun train`).


rule train:
    output:
        weights=f"{WEIGHTS}/{{kind}}.safetensors",
        meta=f"{WEIGHTS}/{{kind}}.json",
    wildcard_constraints:
        kind="denoiser|flow_denoiser|classifier",
    log:
        "results/logs/train/{kind}.log",
    benchmark:
        "results/benchmarks/train/{kind}.tsv"
    threads: 2
    resources:
        mem_mb=3000,
    conda:
        "../envs/sdo.yaml"
    shell:
        "python -m evals.cli --threads {threads} train {wildcards.kind} --out $(dirname {output.weights}) > {log} 2>&1"


rule model_quality_of:
    input:
        model_inputs,
    output:
        record="results/quality/{model}.json",
        grid=report("results/quality/{model}.png", caption="../report/model_quality.rst", category="4. Models"),
    params:
        model=lambda wildcards: shlex.join(
            model_arguments(config, SOURCES[wildcards.model]) + ["--cfg-scale", *map(str, config["quality"]["cfg_scales"])]
        ),
        steps=config["quality"]["steps"],
        per_label=config["quality"]["per_label"],
    log:
        "results/logs/quality/{model}.log",
    benchmark:
        "results/benchmarks/quality/{model}.tsv"
    threads: config["quality"].get("threads", 2)
    resources:
        mem_mb=3000,
    conda:
        "../envs/sdo.yaml"
    shell:
        "python -m evals.cli --threads {threads} quality {params.model} --steps {params.steps} "
        "--per-label {params.per_label} --out {output.record} > {log} 2>&1"


rule model_quality:
    input:
        [f"results/quality/{slug(source)}.json" for source in config["quality"]["models"]],
    output:
        report("results/tables/model_quality.csv", caption="../report/model_quality.rst", category="4. Models"),
    log:
        "results/logs/model_quality.log",
    conda:
        "../envs/sdo.yaml"
    script:
        "../scripts/model_quality_table.py"
