# Tables from run records, figures from tables; every one of them goes into
# `snakemake --report results/report.html`, the verdicts first.


rule runs_table:
    input:
        records=RUN_RECORDS,
        guided=GUIDED_RECORDS,
        backward=BACKWARD_COSTS,
    output:
        verdicts=report(
            "results/tables/verdicts.csv",
            caption="../report/verdicts.rst",
            category="1. Verdicts",
        ),
        cost=report(
            "results/tables/cost_to_quality.csv",
            caption="../report/cost_to_quality.rst",
            category="1. Verdicts",
        ),
        iterations=report(
            "results/tables/runs.csv",
            caption="../report/runs.rst",
            category="3. Tables",
        ),
        summary=report(
            "results/tables/summary.csv",
            caption="../report/summary.rst",
            category="3. Tables",
        ),
        methods=report(
            "results/tables/methods.csv",
            caption="../report/methods.rst",
            category="3. Tables",
        ),
        evaluations=report(
            "results/tables/evaluations.csv",
            caption="../report/evaluations.rst",
            category="3. Tables",
        ),
        audits=report(
            "results/tables/audits.csv",
            caption="../report/audits.rst",
            category="2. Fidelity along runs",
        ),
        guidance=report(
            "results/tables/guidance_vs_optimisation.csv",
            caption="../report/guidance.rst",
            category="3. Tables",
        ),
    log:
        "results/logs/runs_table.log",
    conda:
        "../envs/sdo.yaml"
    resources:
        mem_mb=2000,
    params:
        statistics=config["statistics"],
        weights=WEIGHTS,
    script:
        "../scripts/runs_table.py"


rule run_figures:
    input:
        verdicts=rules.runs_table.output.verdicts,
        evaluations=rules.runs_table.output.evaluations,
        summary=rules.runs_table.output.summary,
        methods=rules.runs_table.output.methods,
        audits=rules.runs_table.output.audits,
    output:
        verdicts=report(
            "results/figures/verdicts.png",
            caption="../report/verdicts_figure.rst",
            category="1. Verdicts",
        ),
        cost=report(
            "results/figures/reward_vs_cost.png",
            caption="../report/reward_vs_cost.rst",
            category="1. Verdicts",
        ),
        steps=report(
            "results/figures/cost_vs_steps.png",
            caption="../report/cost_vs_steps.rst",
            category="1. Verdicts",
        ),
        seconds=report(
            "results/figures/reward_vs_seconds.png",
            caption="../report/reward_vs_seconds.rst",
            category="3. Convergence",
        ),
        fidelity=report(
            "results/figures/fidelity_along_runs.png",
            caption="../report/fidelity_along_runs.rst",
            category="2. Fidelity along runs",
        ),
        tradeoff=report(
            "results/figures/tradeoff.png",
            caption="../report/tradeoff.rst",
            category="3. Convergence",
        ),
        samples=report(
            "results/figures/samples.png",
            caption="../report/samples.rst",
            category="3. Convergence",
        ),
    log:
        "results/logs/run_figures.log",
    conda:
        "../envs/sdo.yaml"
    resources:
        mem_mb=2000,
    script:
        "../scripts/run_figures.py"
