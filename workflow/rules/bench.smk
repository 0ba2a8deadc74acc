# Fidelity and cost of every estimator on the same problem: one process per
# (parameter type, T, variant), one at a time so timings and peaks are the job's own.


rule bench_reference:
    input:
        denoiser=rules.train_denoiser.output.weights,
        classifier=rules.train_classifier.output.weights,
    output:
        row="results/bench/{wrt}/T{steps}/{variant}.json",
        gradient="results/bench/{wrt}/T{steps}/{variant}.safetensors",
    wildcard_constraints:
        variant="full",
        steps=r"\d+",
    params:
        models=models_dir,
        b=BENCH,
    log:
        "results/logs/bench/{wrt}/T{steps}/{variant}.log",
    threads: workflow.cores
    conda:
        "../../environment.yml"
    shell:
        "sdo --threads {threads} bench --wrt {wildcards.wrt} --steps {wildcards.steps} --batch {params.b[batch]} "
        "--seed {params.b[seed]} --repeats {params.b[repeats]} --models {params.models} --variant {wildcards.variant} "
        "--method full --save-gradient {output.gradient} --out {output.row} > {log} 2>&1"


rule bench_estimator:
    input:
        denoiser=rules.train_denoiser.output.weights,
        classifier=rules.train_classifier.output.weights,
        reference="results/bench/{wrt}/T{steps}/full.safetensors",
    output:
        row="results/bench/{wrt}/T{steps}/{variant}.json",
    wildcard_constraints:
        variant=r"(?!full\b)[a-z0-9_]+",
        steps=r"\d+",
    params:
        models=models_dir,
        b=BENCH,
        estimator=estimator_flags(BENCH["variants"]),
    log:
        "results/logs/bench/{wrt}/T{steps}/{variant}.log",
    threads: workflow.cores
    conda:
        "../../environment.yml"
    shell:
        "sdo --threads {threads} bench --wrt {wildcards.wrt} --steps {wildcards.steps} --batch {params.b[batch]} "
        "--seed {params.b[seed]} --repeats {params.b[repeats]} --models {params.models} --variant {wildcards.variant} "
        "{params.estimator} --reference {input.reference} --out {output.row} > {log} 2>&1"


rule fidelity_table:
    input:
        BENCH_ROWS,
    output:
        "results/tables/fidelity.csv",
    log:
        "results/logs/fidelity_table.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/fidelity_table.py"


rule fidelity_figures:
    input:
        rules.fidelity_table.output,
    output:
        fidelity="results/figures/fidelity_vs_steps.png",
        cost="results/figures/bench_cost_vs_steps.png",
    log:
        "results/logs/fidelity_figures.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/fidelity_figures.py"


rule bench:
    input:
        rules.fidelity_table.output,
        rules.fidelity_figures.output,
