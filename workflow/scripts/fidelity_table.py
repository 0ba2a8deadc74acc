"""Collect bench rows into results/tables/fidelity.csv."""

import logging

from evals.tables import fidelity_table, write_csv

logging.basicConfig(filename=snakemake.log[0], level=logging.INFO)
table = fidelity_table(snakemake.input)
write_csv(table, snakemake.output[0])
logging.info("%d rows", len(table))
