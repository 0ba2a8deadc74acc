# Optimisation runs: one job per (task, variant, steps) runs every seed of the task one after
# another in one process (the imports and the model load are paid once, not per seed), each
# run timing only its own work. A run that cannot apply, diverges or fails still writes its
# record with a status (`--sweep`), so the sweep is never lost; a killed job reruns its seeds.
# One rule per task, since tasks may have their own seeds. A job's params hold only its task's
# and variant's values, so it reruns only when one of those changes.

for task in RUNS["tasks"]:

    rule:
        name:
            f"run_{task}"
        input:
            **MODEL_FILES,
        output:
            records=expand(RUN_RECORD, task=task, variant="{variant}", steps="{steps}", seed=seeds_of(task)),
        wildcard_constraints:
            steps=r"\d+",
        params:
            models=models_dir,
            flags=lambda wildcards, task=task: shlex.join(run_arguments(config, task, wildcards.variant)),
            seeds=" ".join(map(str, seeds_of(task))),
            out=lambda wildcards, task=task: RUN_RECORD.format(task=task, variant=wildcards.variant, steps=wildcards.steps, seed="{seed}"),
        log:
            f"results/logs/runs/{task}/{{variant}}/T{{steps}}.log",
        benchmark:
            f"results/benchmarks/runs/{task}/{{variant}}/T{{steps}}.tsv"
        threads: config["threads_per_run"]
        resources:
            mem_mb=config.get("mem_mb_per_run", 3000),
            gpu=config.get("gpus_per_job", 0),
        conda:
            "../envs/sdo.yaml"
        shell:
            "python -m evals.cli --threads {threads} run {params.flags} --steps {wildcards.steps} --seed {params.seeds} "
            "--models {params.models} --out {params.out:q} --sweep > {log} 2>&1"
