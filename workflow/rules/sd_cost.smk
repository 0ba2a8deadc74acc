# Cost of every estimator at the published architectures' true shapes with random weights
# (`snakemake sd_cost`): one `sdo cost --model random:<architecture>` process per model and
# denoiser checkpointing setting builds the model once and measures every (parameter type, T,
# variant) row, resetting the peak memory before each. The job asks for every core (capped at
# --cores) and the GPU, so jobs run one at a time and the rows' seconds and peaks are their
# own; a killed job reruns all its rows. The `sd_cost` block's defaults are
# config/sd_cost.yaml (CPU, layered under the Snakefile's config); a preset given with
# --configfile (config/sd_cost_gpu.yaml) overrides them.

from evals.config import cost_arguments, cost_rows

SD_COST = config["sd_cost"]
COST_SOURCES = {slug(source): source for source in SD_COST["models"]}
DENOISER = {False: "plain", True: "checkpointed"}


for model in COST_SOURCES:  # one rule per model: each has its own step counts

    rule:
        name:
            f"sd_cost_rows_{model.replace('-', '_').replace('.', '_')}"
        output:
            rows=cost_rows(SD_COST, COST_SOURCES[model]),
        wildcard_constraints:
            denoiser="plain|checkpointed",
        params:
            flags=lambda wildcards, model=model: shlex.join(
                cost_arguments(SD_COST, COST_SOURCES[model])
                + ["--model-option", "gradient_checkpointing=true"] * (wildcards.denoiser == "checkpointed")
            ),
            out=lambda wildcards, output: os.path.dirname(os.path.dirname(os.path.dirname(output[0]))),  # .../{denoiser}
        log:
            f"results/logs/sd_cost/{model}/{{denoiser}}.log",
        benchmark:
            f"results/benchmarks/sd_cost/{model}/{{denoiser}}.tsv"
        threads: SD_COST.get("threads", 64)
        resources:
            mem_mb=SD_COST.get("mem_mb", 12000),
            gpu=int(SD_COST.get("device", "cpu").startswith("cuda")),
        conda:
            "../envs/sdo.yaml"
        shell:
            "python -m evals.cli --threads {threads} cost {params.flags} --out-dir {params.out} "
            "--sweep > {log} 2>&1"


rule sd_cost:
    input:
        [row for source in SD_COST["models"] for on in SD_COST["unet_checkpointing"] for row in cost_rows(SD_COST, source, DENOISER[on])],
    output:
        table=report("results/tables/sd_cost.csv", caption="../report/sd_cost.rst", category="5. Fidelity and cost"),
        figure=report("results/figures/sd_cost_vs_steps.png", caption="../report/sd_cost.rst", category="5. Fidelity and cost"),
    log:
        "results/logs/sd_cost.log",
    conda:
        "../envs/sdo.yaml"
    script:
        "../scripts/sd_cost_table.py"
