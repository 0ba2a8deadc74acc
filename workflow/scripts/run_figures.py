"""Draw the reward and cost figures from the run tables."""

import logging

import pandas as pd

from evals.figures import cost_vs_steps, reward_vs_iter

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO)
reward_vs_iter(pd.read_csv(snakemake.input.iterations), snakemake.output.reward)
cost_vs_steps(pd.read_csv(snakemake.input.summary), snakemake.output.cost)
logging.info("figures written")
