# Training-free guidance: one job per (T, repeats) runs a guided pass for every seed of the
# latent task over its latents, judged like the optimisation runs and compared with them at
# equal seconds.


if GUIDED_RECORDS:

    rule guide:
        input:
            **MODEL_FILES,
        output:
            records=expand(GUIDED_RECORD, steps="{steps}", repeats="{repeats}", seed=seeds_of("latent")),
        wildcard_constraints:
            steps=r"\d+",
            repeats=r"\d+",
        params:
            models=models_dir,
            flags=lambda wildcards: shlex.join(guide_arguments(config)),
            seeds=" ".join(map(str, seeds_of("latent"))),
            out=lambda wildcards: GUIDED_RECORD.format(steps=wildcards.steps, repeats=wildcards.repeats, seed="{seed}"),
        log:
            "results/logs/guidance/T{steps}/r{repeats}.log",
        benchmark:
            "results/benchmarks/guidance/T{steps}/r{repeats}.tsv"
        threads: config["threads_per_run"]
        resources:
            mem_mb=config.get("mem_mb_per_run", 3000),
            gpu=config.get("gpus_per_job", 0),
        conda:
            "../envs/sdo.yaml"
        shell:
            "python -m evals.cli --threads {threads} guide {params.flags} --steps {wildcards.steps} --repeats {wildcards.repeats} "
            "--seed {params.seeds} --models {params.models} --out {params.out:q} --sweep > {log} 2>&1"
