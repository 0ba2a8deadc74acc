# Optimisation runs: one job per (model, task, variant, steps) runs every seed of the task one
# after another in one process (the imports and the model load are paid once, not per seed),
# each run timing only its own work. A run that cannot apply, diverges, runs past its memory
# budget or fails still writes its record with a status (`--sweep`), so the sweep is never
# lost; a killed job reruns its seeds. One rule per task, since tasks may have their own seeds.
# A job's params hold only its model's, task's and variant's values, so it reruns only when
# one of those changes. `--config rerun_failed=true` reruns the jobs that hold a failed record
# (evals/rerun.py), keeping their other seeds' records.

for task in TASKS:

    rule:
        name:
            f"run_{task}"
        input:
            model_inputs,
        output:
            records=expand(RUN_RECORD, model="{model}", task=task, variant="{variant}", steps="{steps}", seed=seeds_of(task)),
        wildcard_constraints:
            steps=r"\d+",
            model="|".join(map(re.escape, SOURCES)),
        params:
            flags=lambda wildcards, task=task: shlex.join(run_arguments(config, task, SOURCES[wildcards.model], wildcards.variant)),
            seeds=" ".join(map(str, seeds_of(task))),
            out=lambda wildcards, task=task: RUN_RECORD.format(
                model=wildcards.model, task=task, variant=wildcards.variant, steps=wildcards.steps, seed="{seed}"
            ),
            reuse=lambda wildcards, task=task: f"results/retry/runs/{wildcards.model}/{task}/{wildcards.variant}/T{wildcards.steps}",
        log:
            f"results/logs/runs/{{model}}/{task}/{{variant}}/T{{steps}}.log",
        benchmark:
            f"results/benchmarks/runs/{{model}}/{task}/{{variant}}/T{{steps}}.tsv"
        threads: config["threads_per_run"]
        resources:
            mem_mb=config.get("mem_mb_per_run", 3000),
            gpu=config.get("gpus_per_job", 0),
        conda:
            "../envs/sdo.yaml"
        shell:
            "python -m evals.cli --threads {threads} run {params.flags} --steps {wildcards.steps} --seed {params.seeds} "
            "--reuse {params.reuse:q} --out {params.out:q} --sweep > {log} 2>&1"


rule backward_cost:
    input:
        model_inputs,
    output:
        "results/backward_cost/{model}/{task}.json",
    params:
        flags=lambda wildcards: shlex.join(backward_cost_arguments(config, wildcards.task, SOURCES[wildcards.model])),
        torch_threads=config["threads_per_run"],
    log:
        "results/logs/backward_cost/{model}/{task}.log",
    # it asks for every core --cores gives, so it measures alone; torch runs on the runs' threads
    threads: EVERY_CORE
    resources:
        mem_mb=config.get("mem_mb_per_run", 3000),
        gpu=config.get("gpus_per_job", 0),
    conda:
        "../envs/sdo.yaml"
    shell:
        "python -m evals.cli --threads {params.torch_threads} backward-cost {params.flags} --out {output} > {log} 2>&1"


if config.get("rerun_failed"):  # stage the jobs that hold a failed record (evals.rerun)
    from evals.rerun import stage_failed

    stage_failed(
        [
            expand(RUN_RECORD, model=slug(source), task=task, variant=variant, steps=steps, seed=seeds_of(task))
            for task, block in TASKS.items()
            for source in block["models"]
            for variant in block["variants"]
            for steps in block["steps"]
        ],
        derived="results/tables/summary.csv",
    )
