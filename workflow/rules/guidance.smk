# Training-free guidance: one job per (model, T, repeats) runs a guided pass for every seed of
# the latent task over its latents, judged like the optimisation runs and compared with them
# at equal seconds.


if GUIDED_RECORDS:

    rule guide:
        input:
            model_inputs,
        output:
            records=expand(GUIDED_RECORD, model="{model}", steps="{steps}", repeats="{repeats}", seed=seeds_of("latent")),
        wildcard_constraints:
            steps=r"\d+",
            repeats=r"\d+",
            model="|".join(map(re.escape, SOURCES)),
        params:
            flags=lambda wildcards: shlex.join(guide_arguments(config, SOURCES[wildcards.model])),
            seeds=" ".join(map(str, seeds_of("latent"))),
            out=lambda wildcards: GUIDED_RECORD.format(
                model=wildcards.model, steps=wildcards.steps, repeats=wildcards.repeats, seed="{seed}"
            ),
        log:
            "results/logs/guidance/{model}/T{steps}/r{repeats}.log",
        benchmark:
            "results/benchmarks/guidance/{model}/T{steps}/r{repeats}.tsv"
        threads: config["threads_per_run"]
        resources:
            mem_mb=config.get("mem_mb_per_run", 3000),
            gpu=config.get("gpus_per_job", 0),
        conda:
            "../envs/sdo.yaml"
        shell:
            "python -m evals.cli --threads {threads} guide {params.flags} --steps {wildcards.steps} --repeats {wildcards.repeats} "
            "--seed {params.seeds} --out {params.out:q} --sweep > {log} 2>&1"
