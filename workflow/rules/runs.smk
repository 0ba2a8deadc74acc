# One optimisation run per (task, variant, steps, seed); a run that cannot apply, diverges or
# fails still writes its record with a status (`--sweep`), so the sweep is never lost.


rule run:
    input:
        **MODEL_FILES,
    output:
        record="results/runs/{task}/{variant}/T{steps}/seed{seed}.json",
    wildcard_constraints:
        task="latent|conditioning|finetune",
        steps=r"\d+",
        seed=r"\d+",
    params:
        models=models_dir,
        flags=run_flags,
    log:
        "results/logs/runs/{task}/{variant}/T{steps}/seed{seed}.log",
    benchmark:
        "results/benchmarks/runs/{task}/{variant}/T{steps}/seed{seed}.tsv"
    threads: config["threads_per_run"]
    resources:
        mem_mb=config.get("mem_mb_per_run", 3000),
        gpu=config.get("gpus_per_job", 0),
    conda:
        "../envs/sdo.yaml"
    shell:
        "python -m evals.cli --threads {threads} run {params.flags} --steps {wildcards.steps} --seed {wildcards.seed} "
        "--models {params.models} --out {output.record} --sweep > {log} 2>&1"
