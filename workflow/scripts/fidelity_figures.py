"""Draw the fidelity and cost figures from results/tables/fidelity.csv."""

import logging

import pandas as pd
from checkout import log_to

from evals.figures import bench_cost_vs_steps, fidelity_vs_steps

log_to(snakemake.log[0])
table = pd.read_csv(snakemake.input[0])
fidelity_vs_steps(table, snakemake.output.fidelity)
bench_cost_vs_steps(table, snakemake.output.cost)
logging.info("figures written")
