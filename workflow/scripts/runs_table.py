"""Collect run records into runs.csv (per iteration), summary.csv (per run), methods.csv (per
task, variant and T over seeds, with pooled FID/KID), evaluations.csv (held-out evaluations)
and cost_to_quality.csv."""

import logging

from checkout import log_to

from evals.convergence import cost_to_quality, evaluations_table
from evals.guide import guidance_table
from evals.tables import methods_table, pooled_quality, runs_table, write_csv
from sdo.models import store
from sdo.models.data import load_split

log_to(snakemake.log[0])
iterations, summary = runs_table(snakemake.input.records)
methods = methods_table(summary)
pooled = pooled_quality(summary, store.load("classifier", snakemake.params.models), load_split("held_out")[0])
if len(pooled):
    methods = methods.merge(pooled, on=["task", "wrt", "variant", "steps"], how="left")
evaluations = evaluations_table(snakemake.input.records)
write_csv(iterations, snakemake.output.iterations)
write_csv(summary, snakemake.output.summary)
write_csv(methods, snakemake.output.methods)
write_csv(evaluations, snakemake.output.evaluations)
write_csv(cost_to_quality(evaluations, fraction=snakemake.params.fraction), snakemake.output.cost)
write_csv(guidance_table(snakemake.input.guided, evaluations), snakemake.output.guidance)
logging.info("%d iteration rows from %d runs", len(iterations), len(summary))
