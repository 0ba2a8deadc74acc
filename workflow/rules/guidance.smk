# Training-free guidance: one guided pass per (T, repeats, seed) over the latent task's
# latents, judged like the optimisation runs and compared with them at equal seconds.


rule guide:
    input:
        **MODEL_FILES,
    output:
        record="results/guidance/T{steps}/r{repeats}/seed{seed}.json",
    wildcard_constraints:
        steps=r"\d+",
        repeats=r"\d+",
        seed=r"\d+",
    params:
        models=models_dir,
        flags=lambda wildcards: shlex.join(guide_arguments(config)),
    log:
        "results/logs/guidance/T{steps}/r{repeats}/seed{seed}.log",
    benchmark:
        "results/benchmarks/guidance/T{steps}/r{repeats}/seed{seed}.tsv"
    threads: config["threads_per_run"]
    resources:
        mem_mb=config.get("mem_mb_per_run", 3000),
        gpu=config.get("gpus_per_job", 0),
    conda:
        "../envs/sdo.yaml"
    shell:
        "python -m evals.cli --threads {threads} guide {params.flags} --steps {wildcards.steps} --repeats {wildcards.repeats} "
        "--seed {wildcards.seed} --models {params.models} --out {output.record} --sweep > {log} 2>&1"
