# The embedded models. Their weights and configs are committed; these rules run only when a
# model file is missing or a run is forced (`snakemake --forcerun train_denoiser`).


rule train_classifier:
    output:
        weights=MODEL_FILES["classifier"],
        meta=MODEL_FILES["classifier_meta"],
    log:
        "results/logs/train_classifier.log",
    benchmark:
        "results/benchmarks/train_classifier.tsv"
    threads: 2
    resources:
        mem_mb=2000,
    conda:
        "../envs/sdo.yaml"
    shell:
        "python -m evals.cli --threads {threads} train classifier --out $(dirname {output.weights}) > {log} 2>&1"


rule train_denoiser:
    output:
        weights=MODEL_FILES["denoiser"],
        meta=MODEL_FILES["denoiser_meta"],
    log:
        "results/logs/train_denoiser.log",
    benchmark:
        "results/benchmarks/train_denoiser.tsv"
    threads: 2
    resources:
        mem_mb=3000,
    conda:
        "../envs/sdo.yaml"
    shell:
        "python -m evals.cli --threads {threads} train denoiser --out $(dirname {output.weights}) > {log} 2>&1"


rule model_quality:
    input:
        **MODEL_FILES,
    output:
        record="results/tables/model_quality.json",
        grid=report("results/tables/model_quality.png", caption="../report/model_quality.rst", category="Model"),
    params:
        models=models_dir,
        steps=config["quality"]["steps"],
        per_label=config["quality"]["per_label"],
        guidance=" ".join(map(str, config["quality"]["guidance"])),
    log:
        "results/logs/model_quality.log",
    benchmark:
        "results/benchmarks/model_quality.tsv"
    threads: config["quality"].get("threads", 2)
    resources:
        mem_mb=3000,
    conda:
        "../envs/sdo.yaml"
    shell:
        "python -m evals.cli --threads {threads} quality --models {params.models} --steps {params.steps} "
        "--guidance {params.guidance} --per-label {params.per_label} --out {output.record} > {log} 2>&1"
