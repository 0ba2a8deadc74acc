"""Collect run records into runs.csv (per iteration), summary.csv (per run) and methods.csv
(per task, estimator and T, over seeds)."""

import logging

from evals.tables import methods_table, runs_table, write_csv

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO)
iterations, summary = runs_table(snakemake.input)
write_csv(iterations, snakemake.output.iterations)
write_csv(summary, snakemake.output.summary)
write_csv(methods_table(summary), snakemake.output.methods)
logging.info("%d iteration rows from %d runs", len(iterations), len(summary))
