# The SDO benchmark: models x tasks x methods x chains x seeds -> results/tables and
# results/figures, with verdicts first (results/tables/verdicts.csv).
import logging
import os
import sys

from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# The workflow imports the project from this checkout; so do its jobs (`python -m` from the
# working directory) and scripts (workflow/scripts/checkout.py), in any environment.
sys.path.insert(0, workflow.basedir)
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])
    )
)

from evals.config import check_config, layered, layering_note, typed
from evals.report import verdicts_rst
from evals.sweep import sweep_outcome

# Snakemake merges a --configfile into the defaults key by key; a plug-in's options block (a
# task's reward_options, a variant) is replaced whole instead, so no run mixes two files' options.
settings = workflow.config_settings
defaults = (
    []
    if settings.replace_workflow_config
    else [
        os.path.join(workflow.basedir, "config", name)
        for name in ("config.yaml", "profile.yaml")
    ]
)
user_layers = [layered([path]) for path in settings.configfiles]
rebuilt = layered([*defaults, *settings.configfiles, typed(dict(settings.config))])
rebuilt["weights"] = os.path.join(
    workflow.basedir, rebuilt["weights"]
)  # relative to the checkout; absolute stays
config.clear()
config.update(rebuilt)
check_config(
    config, base="."
)  # files a config names are read from the working directory
if note := layering_note(user_layers, config):
    logging.getLogger("sdo").warning(note)


rule all:
    input:
        "results/tables/verdicts.csv",
        "results/tables/model_quality.csv",
        "results/tables/runs.csv",
        "results/tables/summary.csv",
        "results/tables/methods.csv",
        "results/tables/evaluations.csv",
        "results/tables/cost_to_quality.csv",
        "results/tables/audits.csv",
        "results/tables/guidance_vs_optimisation.csv",
        "results/figures/verdicts.png",
        "results/figures/reward_vs_cost.png",
        "results/figures/reward_vs_seconds.png",
        "results/figures/fidelity_along_runs.png",
        "results/figures/tradeoff.png",
        "results/figures/samples.png",
        "results/figures/cost_vs_steps.png",


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/runs.smk"
include: "workflow/rules/guidance.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/profile.smk"


config["report_verdicts"] = verdicts_rst(
    "results/tables/verdicts.csv"
)  # the report's verdicts table


onsuccess:
    # one console line when the sweep's runs did not all end ok; non-zero when none did
    if (outcome := sweep_outcome("results/tables/summary.csv")) is not None:
        message, failed = outcome
        print(f"sdo: {message}", file=sys.stderr)
        if failed:
            sys.exit(1)
