# The embedded models. Their weights are committed; these rules run only when the files are
# missing or a run is forced (`snakemake --forcerun train_denoiser`).


rule train_classifier:
    output:
        weights=f"{MODELS}/classifier.safetensors",
        meta=f"{MODELS}/classifier.json",
    log:
        "results/logs/train_classifier.log",
    threads: workflow.cores
    conda:
        "../../environment.yml"
    shell:
        "sdo --threads {threads} train classifier --out $(dirname {output.weights}) > {log} 2>&1"


rule train_denoiser:
    output:
        weights=f"{MODELS}/denoiser.safetensors",
        meta=f"{MODELS}/denoiser.json",
    log:
        "results/logs/train_denoiser.log",
    threads: workflow.cores
    conda:
        "../../environment.yml"
    shell:
        "sdo --threads {threads} train denoiser --out $(dirname {output.weights}) > {log} 2>&1"


rule model_quality:
    input:
        denoiser=rules.train_denoiser.output.weights,
        classifier=rules.train_classifier.output.weights,
    output:
        record="results/tables/model_quality.json",
        grid="results/tables/model_quality.png",
    params:
        models=models_dir,
        q=config["quality"],
        guidance=" ".join(map(str, config["quality"]["guidance"])),
    log:
        "results/logs/model_quality.log",
    threads: workflow.cores
    conda:
        "../../environment.yml"
    shell:
        "sdo --threads {threads} quality --models {params.models} --steps {params.q[steps]} "
        "--guidance {params.guidance} --per-label {params.q[per_label]} --out {output.record} > {log} 2>&1"
