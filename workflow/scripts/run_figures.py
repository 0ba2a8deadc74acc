"""Draw the verdict, convergence, fidelity, trade-off and sample figures from the run tables."""

import logging

import pandas as pd
from checkout import log_to

from evals import figures

log_to(snakemake.log[0])


def read(path):
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


evaluations, summary = read(snakemake.input.evaluations), read(snakemake.input.summary)
verdicts = read(snakemake.input.verdicts)
figures.verdicts(verdicts, snakemake.output.verdicts, figures.devices_of(summary))
full = snakemake.config["statistics"].get("full", "full")
figures.cost_vs_steps(verdicts, snakemake.output.steps, figures.devices_of(summary), full)
figures.reward_vs_cost(evaluations, snakemake.output.cost)
figures.reward_vs_seconds(evaluations, snakemake.output.seconds)
figures.fidelity_along_runs(read(snakemake.input.audits), snakemake.output.fidelity)
figures.tradeoff(read(snakemake.input.methods), snakemake.output.tradeoff)
figures.sample_grids(summary, snakemake.output.samples)
logging.info("figures written")
