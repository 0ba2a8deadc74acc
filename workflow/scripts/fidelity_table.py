"""Collect bench rows into results/tables/fidelity.csv."""

import logging

from checkout import log_to

from evals.tables import fidelity_table, write_csv

log_to(snakemake.log[0])
table = fidelity_table(snakemake.input)
write_csv(table, snakemake.output[0])
logging.info("%d rows", len(table))
