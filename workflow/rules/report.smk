# Tables from run records, figures from tables; every one of them goes into
# `snakemake --report results/report.html`.


rule runs_table:
    input:
        records=RUN_RECORDS,
        guided=GUIDED_RECORDS,
        **MODEL_FILES,
    output:
        iterations=report("results/tables/runs.csv", caption="../report/runs.rst", category="Tables"),
        summary=report("results/tables/summary.csv", caption="../report/summary.rst", category="Tables"),
        methods=report("results/tables/methods.csv", caption="../report/methods.rst", category="Tables"),
        evaluations=report("results/tables/evaluations.csv", caption="../report/evaluations.rst", category="Tables"),
        cost=report("results/tables/cost_to_quality.csv", caption="../report/cost_to_quality.rst", category="Tables"),
        guidance=report(
            "results/tables/guidance_vs_optimisation.csv", caption="../report/guidance.rst", category="Tables"
        ),
    params:
        fraction=config["target_fraction"],
        models=models_dir,
    log:
        "results/logs/runs_table.log",
    resources:
        mem_mb=2000,
    conda:
        "../envs/sdo.yaml"
    script:
        "../scripts/runs_table.py"


rule run_figures:
    input:
        evaluations=rules.runs_table.output.evaluations,
        summary=rules.runs_table.output.summary,
        methods=rules.runs_table.output.methods,
    output:
        reward=report("results/figures/reward_vs_iter.png", caption="../report/reward_vs_iter.rst", category="Convergence"),
        seconds=report("results/figures/reward_vs_seconds.png", caption="../report/reward_vs_seconds.rst", category="Convergence"),
        tradeoff=report("results/figures/tradeoff.png", caption="../report/tradeoff.rst", category="Cost"),
        cost=report("results/figures/cost_vs_steps.png", caption="../report/cost_vs_steps.rst", category="Cost"),
        samples=report("results/figures/samples.png", caption="../report/samples.rst", category="Samples"),
    log:
        "results/logs/run_figures.log",
    resources:
        mem_mb=2000,
    conda:
        "../envs/sdo.yaml"
    script:
        "../scripts/run_figures.py"
