# One optimisation run per (task, variant, steps, seed); a run that cannot apply or fails still
# writes its record with a status, so the sweep is never lost.


rule run:
    input:
        denoiser=rules.train_denoiser.output.weights,
        classifier=rules.train_classifier.output.weights,
    output:
        record="results/runs/{task}/{variant}/T{steps}/seed{seed}.json",
    wildcard_constraints:
        task="latent|conditioning|finetune",
        steps=r"\d+",
        seed=r"\d+",
    params:
        models=models_dir,
        estimator=estimator_flags(RUNS["variants"]),
        task=task_flags,
    log:
        "results/logs/runs/{task}/{variant}/T{steps}/seed{seed}.log",
    threads: config["threads_per_run"]
    conda:
        "../../environment.yml"
    shell:
        "sdo --threads {threads} run --task {wildcards.task} {params.estimator} --steps {wildcards.steps} "
        "--seed {wildcards.seed} {params.task} --models {params.models} --out {output.record} > {log} 2>&1"
