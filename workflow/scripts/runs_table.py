"""Collect the sweep's records into its tables: verdicts.csv first, cost_to_quality.csv,
runs.csv (per iteration), summary.csv (per run), methods.csv (per model, task, variant and T
over seeds, with pooled FID/KID), evaluations.csv (held-out evaluations), audits.csv (the
online fidelity audit) and guidance_vs_optimisation.csv. The last log line counts the runs by
status."""

import logging

from checkout import log_to

from evals.sweep import build_tables
from evals.tables import write_csv

log_to(snakemake.log[0])
tables = build_tables(
    snakemake.input.records,
    snakemake.input.guided,
    snakemake.input.backward,
    snakemake.params.statistics,
    snakemake.params.weights,
)
for name in ("verdicts", "cost", "iterations", "summary", "methods", "evaluations", "audits", "guidance"):
    write_csv(tables[name], getattr(snakemake.output, name))
counts = tables["status_counts"]
logging.info("%d runs by status: %s", sum(counts.values()), ", ".join(f"{s} {n}" for s, n in counts.items()))
