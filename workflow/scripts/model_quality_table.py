"""Collect each embedded model's quality record into results/tables/model_quality.csv: one
row per model and guidance scale."""

import json
import logging

import pandas as pd
from checkout import log_to

from evals.tables import write_csv

log_to(snakemake.log[0])
rows = []
for path in snakemake.input:
    record = json.loads(open(path).read())
    if record["status"] != "ok":  # a row with its status and reason, never a lost table
        rows.append({"model": record["config"]["model"], "status": record["status"], "reason": record.get("reason")})
        continue
    for row in record["by_cfg_scale"]:
        rows.append(
            {
                "model": record["config"]["model"],
                "sampler": record["sampler"],
                "steps": record["config"]["steps"],
                "samples": record["samples"],
                "cfg_scale": row["cfg_scale"],
                "label_accuracy": row["label_accuracy"],
                "fid": row["fid"],
                "fid_train_vs_held_out": record["fid_train_vs_held_out"],
                "device": record["device"],
                "status": "ok",
            }
        )
write_csv(pd.DataFrame(rows), snakemake.output[0])
logging.info("%d rows", len(rows))
