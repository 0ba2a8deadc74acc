# Optimisation runs: one job per (model, task, variant, chain) runs every seed of the chain one
# after another in one process (the imports and the model load are paid once, not per seed),
# each run timing only its own work. A run that cannot apply, diverges, runs past its memory
# budget or fails still writes its record with a status (`--sweep`), so the sweep is never
# lost; a killed job reruns its seeds. One rule per task and chain, since chains may have their
# own seeds. A job's flags hold only its model's, task's, variant's and chain's values, so it
# reruns only when one of those changes. `--config rerun_failed=true` reruns the jobs that hold
# a failed record, keeping their other seeds' records (evals/rerun.py): parsing only reads,
# the records move aside when the sweep starts.

from evals.rerun import retry_token, stage_failed

RERUN = bool(config.get("rerun_failed"))

for (task, label), by_model in JOBS_BY_RULE.items():
    seeds = next(iter(by_model.values())).seeds
    longest = next(iter(by_model.values())).chain.steps

    rule:
        name:
            rule_name("run", task, label)
        input:
            model_inputs,
        output:
            records=expand(
                RUN_RECORD,
                model="{model}",
                task=task,
                variant="{variant}",
                chain=label,
                seed=seeds,
            ),
        log:
            f"results/logs/runs/{{model}}/{task}/{{variant}}/{label}.log",
        benchmark:
            f"results/benchmarks/runs/{{model}}/{task}/{{variant}}/{label}.tsv"
        wildcard_constraints:
            model="|".join(map(re.escape, SOURCES)),
            variant="|".join(map(re.escape, RUNS["variants"])),
        # longer chains first (a whole-chain baseline is the longest job), so no long job
        # starts last while the other cores idle
        priority: longest
        conda:
            "../envs/sdo.yaml"
        threads: config["threads_per_run"]
        resources:
            mem_mb=config.get("mem_mb_per_run", 3000),
            gpu=config.get("gpus_per_job", 0),
        params:
            plugins=PLUGINS,
            flags=lambda wildcards, task=task, label=label: flags(
                jobs.run_spec(config, run_job(task, label, wildcards)), "seed", "out"
            ),
            seeds=" ".join(map(str, seeds)),
            out=lambda wildcards, task=task, label=label: RUN_RECORD.format(
                model=wildcards.model,
                task=task,
                variant=wildcards.variant,
                chain=label,
                seed="{seed}",
            ),
            reuse=lambda wildcards, task=task, label=label: f"results/retry/runs/{wildcards.model}/{task}/{wildcards.variant}/{label}",
            retry=lambda wildcards, task=task, label=label: retry_token(
                run_job(task, label, wildcards).records(RUN_RECORD), RERUN
            ),
        shell:
            "python -m evals.cli --threads {threads} {params.plugins} --gpus-per-job {resources.gpu} run {params.flags} "
            "--seed {params.seeds} --reuse {params.reuse:q} --out {params.out:q} --sweep > {log:q} 2>&1"


rule backward_cost:
    input:
        model_inputs,
    output:
        "results/backward_cost/{model}/{task}.json",
    log:
        "results/logs/backward_cost/{model}/{task}.log",
    conda:
        "../envs/sdo.yaml"
    # it asks for every core --cores gives, so it measures alone; torch runs on the runs' threads
    threads: EVERY_CORE
    resources:
        mem_mb=config.get("mem_mb_per_run", 3000),
        gpu=config.get("gpus_per_job", 0),
    params:
        plugins=PLUGINS,
        flags=lambda wildcards: flags(
            jobs.backward_cost_spec(config, wildcards.task, SOURCES[wildcards.model]),
            "out",
        ),
        torch_threads=config["threads_per_run"],
    shell:
        "python -m evals.cli --threads {params.torch_threads} {params.plugins} --gpus-per-job {resources.gpu} backward-cost "
        "{params.flags} --out {output:q} --sweep > {log:q} 2>&1"


onstart:
    if (
        RERUN
    ):  # the sweep starts (never in a dry run): move the failed jobs' records aside
        stage_failed([job.records(RUN_RECORD) for job in RUN_JOBS])
