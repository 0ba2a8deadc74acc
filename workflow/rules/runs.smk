# One optimisation run per (task, method, steps, seed); a run that cannot apply or fails still
# writes its record with a status, so the sweep is never lost.


rule latent_run:
    input:
        denoiser=rules.train_denoiser.output.weights,
        classifier=rules.train_classifier.output.weights,
    output:
        record="results/runs/latent/{method}/T{steps}/seed{seed}.json",
        grid="results/runs/latent/{method}/T{steps}/seed{seed}.png",
    wildcard_constraints:
        steps=r"\d+",
        seed=r"\d+",
    params:
        models=models_dir,
        c=LATENT,
    log:
        "results/logs/latent/{method}/T{steps}/seed{seed}.log",
    threads: config["threads_per_run"]
    conda:
        "../../environment.yml"
    shell:
        "sdo --threads {threads} run --task latent --method {wildcards.method} --steps {wildcards.steps} "
        "--seed {wildcards.seed} --iters {params.c[iters]} --batch {params.c[batch]} --target {params.c[target]} "
        "--prompt {params.c[prompt]} --guidance {params.c[guidance]} --lr {params.c[lr]} --models {params.models} "
        "--out {output.record} > {log} 2>&1"

