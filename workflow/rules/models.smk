# The embedded models. Their weights and configs are committed and never an output of a rule:
# when one is missing, the models read results/retrained instead, where the missing ones are
# trained and the present ones copied (common.smk).


rule copy_weights:
    input:
        weights=f"{GIVEN_WEIGHTS}/{{kind}}.safetensors",
        meta=f"{GIVEN_WEIGHTS}/{{kind}}.json",
    output:
        weights=f"{RETRAINED}/{{kind}}.safetensors",
        meta=f"{RETRAINED}/{{kind}}.json",
    log:
        "results/logs/copy_weights/{kind}.log",
    conda:
        "../envs/sdo.yaml"
    shell:
        "cp {input.weights:q} {output.weights:q} && cp {input.meta:q} {output.meta:q} 2> {log:q}"


rule train:
    output:
        weights=f"{RETRAINED}/{{kind}}.safetensors",
        meta=f"{RETRAINED}/{{kind}}.json",
    log:
        "results/logs/train/{kind}.log",
    benchmark:
        "results/benchmarks/train/{kind}.tsv"
    wildcard_constraints:
        kind="denoiser|flow_denoiser|classifier",
    conda:
        "../envs/sdo.yaml"
    threads: 2
    resources:
        mem_mb=3000,
    params:
        out=lambda wildcards, output: Path(output.weights).parent,
    shell:
        "python -m evals.cli --threads {threads} train {wildcards.kind:q} --out {params.out:q} > {log:q} 2>&1"


ruleorder: copy_weights > train


rule model_quality_of:
    input:
        model_inputs,
    output:
        record="results/quality/{model}.json",
        grid=report(
            "results/quality/{model}.png",
            caption="../report/model_quality.rst",
            category="4. Models",
        ),
    log:
        "results/logs/quality/{model}.log",
    benchmark:
        "results/benchmarks/quality/{model}.tsv"
    conda:
        "../envs/sdo.yaml"
    threads: config["quality"].get("threads", 2)
    resources:
        mem_mb=3000,
    params:
        plugins=PLUGINS,
        flags=lambda wildcards: flags(
            jobs.quality_spec(config, SOURCES[wildcards.model]), "out"
        ),
    shell:
        "python -m evals.cli --threads {threads} {params.plugins} quality {params.flags} --out {output.record:q} --sweep > {log:q} 2>&1"


rule model_quality:
    input:
        [
            f"results/quality/{slug(source)}.json"
            for source in config["quality"]["models"]
        ],
    output:
        report(
            "results/tables/model_quality.csv",
            caption="../report/model_quality.rst",
            category="4. Models",
        ),
    log:
        "results/logs/model_quality.log",
    conda:
        "../envs/sdo.yaml"
    script:
        "../scripts/model_quality_table.py"
