# The SDO benchmark: methods x tasks x step counts x seeds -> results/tables and results/figures.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


rule all:
    input:
        "results/tables/model_quality.json",
        "results/tables/runs.csv",
        "results/tables/summary.csv",
        "results/tables/methods.csv",
        "results/figures/reward_vs_iter.png",
        "results/figures/cost_vs_steps.png",


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/runs.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/bench.smk"
