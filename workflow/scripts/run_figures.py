"""Draw the convergence, cost and sample figures from the run tables."""

import logging

from checkout import log_to

import pandas as pd

from evals.figures import cost_vs_steps, reward_vs_iter, reward_vs_seconds, sample_grids, tradeoff

log_to(snakemake.log[0])
evaluations = pd.read_csv(snakemake.input.evaluations)
summary = pd.read_csv(snakemake.input.summary)
reward_vs_iter(evaluations, snakemake.output.reward)
reward_vs_seconds(evaluations, snakemake.output.seconds)
tradeoff(pd.read_csv(snakemake.input.methods), snakemake.output.tradeoff)
cost_vs_steps(summary, snakemake.output.cost)
sample_grids(summary, snakemake.output.samples)
logging.info("figures written")
