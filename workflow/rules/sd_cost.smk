# Cost of every estimator on Stable Diffusion's architecture (`snakemake sd_cost`): one
# `sdo cost --model sd-random:<version>` process per UNet checkpointing setting builds the model
# once and measures every (parameter type, T, variant) row, resetting the peak memory before
# each. The job claims every core (and the GPU), so jobs run one at a time and the rows' seconds
# and peaks are their own; a killed job reruns all its rows. The `sd_cost` block's defaults are
# config/sd_cost.yaml (CPU); a preset given with --configfile (config/sd_cost_gpu.yaml)
# overrides them.

import shlex

from evals.config import check_config, cost_arguments


configfile: os.path.join(workflow.basedir, "config", "sd_cost.yaml")


check_config(config, base=workflow.basedir)  # now with the sd_cost block

SD_COST = config["sd_cost"]
UNET = {False: "plain", True: "checkpointed"}
SD_COST_ROW = "results/sd_cost/{unet}/{wrt}/T{steps}/{variant}.json"
SD_COST_GRID = dict(wrt=SD_COST["wrt"], steps=SD_COST["steps"], variant=list(SD_COST["variants"]))


rule sd_cost_rows:
    output:
        rows=expand(SD_COST_ROW, unet="{unet}", **SD_COST_GRID),
    wildcard_constraints:
        unet="plain|checkpointed",
    params:
        flags=lambda wildcards: shlex.join(
            cost_arguments(SD_COST) + ["--gradient-checkpointing"] * (wildcards.unet == "checkpointed")
        ),
    log:
        "results/logs/sd_cost/{unet}.log",
    benchmark:
        "results/benchmarks/sd_cost/{unet}.tsv"
    threads: workflow.cores
    resources:
        mem_mb=SD_COST.get("mem_mb", 12000),
        gpu=int(SD_COST.get("device", "cpu").startswith("cuda")),
    conda:
        "../envs/sdo.yaml"
    shell:
        "python -m evals.cli --threads {threads} cost {params.flags} --out-dir results/sd_cost/{wildcards.unet} "
        "--sweep > {log} 2>&1"


rule sd_cost:
    input:
        expand(SD_COST_ROW, unet=[UNET[on] for on in SD_COST["unet_checkpointing"]], **SD_COST_GRID),
    output:
        table=report("results/tables/sd_cost.csv", caption="../report/sd_cost.rst", category="Fidelity and cost"),
        figure=report("results/figures/sd_cost_vs_steps.png", caption="../report/sd_cost.rst", category="Fidelity and cost"),
    log:
        "results/logs/sd_cost.log",
    conda:
        "../envs/sdo.yaml"
    script:
        "../scripts/sd_cost_table.py"
