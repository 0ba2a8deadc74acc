# Cost of every estimator on Stable Diffusion's architecture (`snakemake sd_cost`): one
# `sdo bench --model sd-random:<version>` process per (parameter type, T, UNet checkpointing,
# variant). Each job claims every core, so jobs run one at a time and their seconds and peaks
# are their own. The `sd_cost` block's defaults are config/sd_cost.yaml (CPU); a preset given
# with --configfile (config/sd_cost_gpu.yaml) overrides them.

import shlex

from evals.config import check_config, estimator_arguments


configfile: os.path.join(workflow.basedir, "config", "sd_cost.yaml")


check_config(config, base=workflow.basedir)  # now with the sd_cost block

SD_COST = config["sd_cost"]
UNET = {False: "plain", True: "checkpointed"}
SD_COST_ROWS = expand(
    "results/sd_cost/{wrt}/T{steps}/{unet}/{variant}.json",
    wrt=SD_COST["wrt"],
    steps=SD_COST["steps"],
    unet=[UNET[on] for on in SD_COST["unet_checkpointing"]],
    variant=list(SD_COST["variants"]),
)
# the `sdo bench` flags every row shares; a row adds its estimator and UNet checkpointing
SD_COST_FLAGS = [
    word
    for key in ("model", "resolution", "batch", "guidance", "dtype", "device", "seed", "repeats")
    if key in SD_COST
    for word in (f"--{key}", str(SD_COST[key]))
]


rule sd_cost_row:
    output:
        row="results/sd_cost/{wrt}/T{steps}/{unet}/{variant}.json",
    wildcard_constraints:
        wrt="latent|cond|weights",
        steps=r"\d+",
        unet="plain|checkpointed",
    params:
        flags=lambda wildcards: shlex.join(
            estimator_arguments(SD_COST["variants"], wildcards.variant)
            + SD_COST_FLAGS
            + ["--gradient-checkpointing"] * (wildcards.unet == "checkpointed")
        ),
    log:
        "results/logs/sd_cost/{wrt}/T{steps}/{unet}/{variant}.log",
    benchmark:
        "results/benchmarks/sd_cost/{wrt}/T{steps}/{unet}/{variant}.tsv"
    threads: workflow.cores
    resources:
        mem_mb=SD_COST.get("mem_mb", 12000),
        gpu=int(SD_COST.get("device", "cpu").startswith("cuda")),
    conda:
        "../envs/sdo.yaml"
    shell:
        "python -m evals.cli --threads {threads} bench --wrt {wildcards.wrt} --steps {wildcards.steps} {params.flags} "
        "--out {output.row} --sweep > {log} 2>&1"


rule sd_cost:
    input:
        SD_COST_ROWS,
    output:
        table=report("results/tables/sd_cost.csv", caption="../report/sd_cost.rst", category="Fidelity and cost"),
        figure=report("results/figures/sd_cost_vs_steps.png", caption="../report/sd_cost.rst", category="Fidelity and cost"),
    log:
        "results/logs/sd_cost.log",
    conda:
        "../envs/sdo.yaml"
    script:
        "../scripts/sd_cost_table.py"
