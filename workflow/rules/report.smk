# Tables from run records, figures from tables.


rule runs_table:
    input:
        RUN_RECORDS,
    output:
        iterations="results/tables/runs.csv",
        summary="results/tables/summary.csv",
        methods="results/tables/methods.csv",
    log:
        "results/logs/runs_table.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/runs_table.py"


rule run_figures:
    input:
        iterations=rules.runs_table.output.iterations,
        summary=rules.runs_table.output.summary,
    output:
        reward="results/figures/reward_vs_iter.png",
        cost="results/figures/cost_vs_steps.png",
    log:
        "results/logs/run_figures.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/run_figures.py"
