"""Collect the profile rows into results/tables/profile.csv, with each row's seconds and peak
memory as ratios to `full` at the same model, parameter type, T and denoiser checkpointing, and
draw results/figures/profile_vs_steps.png (one line per variant and checkpointing)."""

import logging

from checkout import log_to

from evals.figures import bench_cost_vs_steps
from evals.tables import fidelity_table, write_csv

log_to(snakemake.log[0])
table = fidelity_table(snakemake.input)
table["checkpointing"] = table.get("config.model_options.gradient_checkpointing", False).fillna(False).astype(bool)
keys, costs = ["model", "wrt", "steps", "checkpointing"], ["seconds", "peak_bytes", "working_bytes", "saved_bytes"]
for column in costs:  # absent where no row finished
    table[column] = table.get(column)
full = table[(table["variant"] == "full") & (table["status"] == "ok")].set_index(keys)[costs]
reference = table.join(full, on=keys, rsuffix="_full")
for column in costs:
    table[f"{column}_vs_full"] = table[column] / reference[f"{column}_full"]
write_csv(table, snakemake.output.table)
labelled = table.assign(variant=table["variant"] + table["checkpointing"].map({True: " +denoiser ckpt", False: ""}))
bench_cost_vs_steps(labelled, snakemake.output.figure)
logging.info("%d rows", len(table))
