# Training-free guidance: one job per (model, T, repeats) runs a guided pass for every seed of
# the latent task over its latents, judged like the optimisation runs and compared with them
# at equal seconds.

GUIDES = {
    (slug(spec.model), str(spec.steps), str(spec.repeats)): (spec, seeds)
    for spec, seeds in GUIDE_SPECS
}

if GUIDES:

    rule guide:
        input:
            model_inputs,
        output:
            records=expand(
                GUIDED_RECORD,
                model="{model}",
                steps="{steps}",
                repeats="{repeats}",
                seed=next(iter(GUIDES.values()))[1],
            ),
        log:
            "results/logs/guidance/{model}/T{steps}/r{repeats}.log",
        benchmark:
            "results/benchmarks/guidance/{model}/T{steps}/r{repeats}.tsv"
        wildcard_constraints:
            steps=r"\d+",
            repeats=r"\d+",
            model="|".join(map(re.escape, SOURCES)),
        conda:
            "../envs/sdo.yaml"
        threads: config["threads_per_run"]
        resources:
            mem_mb=config.get("mem_mb_per_run", 3000),
            gpu=config.get("gpus_per_job", 0),
        params:
            plugins=PLUGINS,
            flags=lambda wildcards: flags(
                GUIDES[wildcards.model, wildcards.steps, wildcards.repeats][0],
                "seed",
                "out",
            ),
            seeds=lambda wildcards: " ".join(
                map(
                    str, GUIDES[wildcards.model, wildcards.steps, wildcards.repeats][1]
                )
            ),
            out=lambda wildcards: GUIDED_RECORD.format(
                model=wildcards.model,
                steps=wildcards.steps,
                repeats=wildcards.repeats,
                seed="{seed}",
            ),
        shell:
            "python -m evals.cli --threads {threads} {params.plugins} --gpus-per-job {resources.gpu} guide {params.flags} "
            "--seed {params.seeds} --out {params.out:q} --sweep > {log:q} 2>&1"
