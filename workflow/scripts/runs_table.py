"""Collect run records into results/tables/runs.csv (per iteration) and summary.csv (per run)."""

import logging

from evals.tables import runs_table, write_csv

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO)
iterations, summary = runs_table(snakemake.input)
write_csv(iterations, snakemake.output.iterations)
write_csv(summary, snakemake.output.summary)
logging.info("%d iteration rows from %d runs", len(iterations), len(summary))
