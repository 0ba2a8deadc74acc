# Fidelity and cost of every estimator on the same problem: one process per
# (model, parameter type, T, variant), one at a time so timings and peaks are the job's own.


rule bench_full:
    input:
        model_inputs,
    output:
        row=BENCH_ROW,
        gradient="results/bench/{model}/{sampler}/{wrt}/T{steps}/{variant}.safetensors",
    log:
        "results/logs/bench/{model}/{sampler}/{wrt}/T{steps}/{variant}.log",
    benchmark:
        "results/benchmarks/bench/{model}/{sampler}/{wrt}/T{steps}/{variant}.tsv"
    wildcard_constraints:
        variant="full",
        steps=r"\d+",
        model="|".join(map(re.escape, SOURCES)),
    conda:
        "../envs/sdo.yaml"
    threads: BENCH.get("threads", 2)
    resources:
        mem_mb=BENCH.get("mem_mb", 8000),
        gpu=config.get("gpus_per_job", 0),
    params:
        plugins=PLUGINS,
        flags=bench_flags,
    shell:
        "python -m evals.cli --threads {threads} {params.plugins} --gpus-per-job {resources.gpu} bench {params.flags} "
        "--save-gradient {output.gradient:q} --out {output.row:q} --sweep > {log:q} 2>&1"


rule bench_estimator:
    input:
        model_inputs,
        exact="results/bench/{model}/{sampler}/{wrt}/T{steps}/full.safetensors",
    output:
        row=BENCH_ROW,
    log:
        "results/logs/bench/{model}/{sampler}/{wrt}/T{steps}/{variant}.log",
    benchmark:
        "results/benchmarks/bench/{model}/{sampler}/{wrt}/T{steps}/{variant}.tsv"
    wildcard_constraints:
        variant=r"(?!full\b)[a-z0-9_]+",
        steps=r"\d+",
        model="|".join(map(re.escape, SOURCES)),
    conda:
        "../envs/sdo.yaml"
    threads: BENCH.get("threads", 2)
    resources:
        mem_mb=BENCH.get("mem_mb", 8000),
        gpu=config.get("gpus_per_job", 0),
    params:
        plugins=PLUGINS,
        flags=bench_flags,
    shell:
        "python -m evals.cli --threads {threads} {params.plugins} --gpus-per-job {resources.gpu} bench {params.flags} "
        "--exact-gradient {input.exact:q} --out {output.row:q} --sweep > {log:q} 2>&1"


rule fidelity_table:
    input:
        BENCH_ROWS,
    output:
        report(
            "results/tables/fidelity.csv",
            caption="../report/fidelity.rst",
            category="5. Fidelity and cost",
        ),
    log:
        "results/logs/fidelity_table.log",
    conda:
        "../envs/sdo.yaml"
    script:
        "../scripts/fidelity_table.py"


rule fidelity_figures:
    input:
        rules.fidelity_table.output,
    output:
        fidelity=report(
            "results/figures/fidelity_vs_steps.png",
            caption="../report/fidelity_figures.rst",
            category="5. Fidelity and cost",
        ),
        cost=report(
            "results/figures/bench_cost_vs_steps.png",
            caption="../report/fidelity_figures.rst",
            category="5. Fidelity and cost",
        ),
    log:
        "results/logs/fidelity_figures.log",
    conda:
        "../envs/sdo.yaml"
    script:
        "../scripts/fidelity_figures.py"


rule bench:
    input:
        rules.fidelity_table.output,
        rules.fidelity_figures.output,
