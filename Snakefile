# The SDO benchmark: methods x tasks x step counts x seeds -> results/tables and results/figures.
import os
import sys

from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# The workflow imports the project from this checkout; so do its jobs (`python -m` from the
# working directory) and scripts (workflow/scripts/checkout.py), in any environment.
sys.path.insert(0, workflow.basedir)

from evals.config import check_config

check_config(config, base=workflow.basedir)


rule all:
    input:
        "results/tables/model_quality.json",
        "results/tables/runs.csv",
        "results/tables/summary.csv",
        "results/tables/methods.csv",
        "results/tables/evaluations.csv",
        "results/tables/cost_to_quality.csv",
        "results/tables/guidance_vs_optimisation.csv",
        "results/figures/reward_vs_iter.png",
        "results/figures/reward_vs_seconds.png",
        "results/figures/tradeoff.png",
        "results/figures/cost_vs_steps.png",
        "results/figures/samples.png",


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/runs.smk"
include: "workflow/rules/guidance.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/sd_cost.smk"
