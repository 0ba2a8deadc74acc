# Seconds and memory of every estimator at the published architectures' true shapes with random
# weights (`snakemake profile`): one `sdo profile` process per model and denoiser
# checkpointing setting builds the model once and measures every (parameter type, T, variant)
# row, resetting the peak memory before each. The job asks for every core (capped at --cores)
# and the GPU, so jobs run one at a time and the rows' seconds and peaks are their own; a
# killed job reruns all its rows. The `profile` block's defaults are config/profile.yaml (CPU,
# layered under the Snakefile's config); a preset given with --configfile
# (config/profile_gpu.yaml) overrides them.

PROFILE = config["profile"]
PROFILE_SOURCES = {slug(source): source for source in PROFILE["models"]}
CHECKPOINTING = {"plain": False, "checkpointed": True}
PROFILE_ROW = "results/profile/{model}/{denoiser}/{wrt}/T{steps}/{variant}.json"


def profile_rows(source, denoiser="{denoiser}"):
    """The rows one `sdo profile` job of a model source writes."""
    spec = jobs.profile_spec(PROFILE, source, False)
    return [
        PROFILE_ROW.format(model=slug(source), denoiser=denoiser, wrt=wrt, steps=steps, variant=v.partition("=")[0])
        for wrt in spec.wrt
        for steps in spec.steps
        for v in spec.variants
    ]


for model in PROFILE_SOURCES:  # one rule per model: each has its own step counts

    rule:
        name:
            f"profile_rows_{re.sub('[^A-Za-z0-9]', '_', model)}"
        output:
            rows=profile_rows(PROFILE_SOURCES[model]),
        wildcard_constraints:
            denoiser="plain|checkpointed",
        params:
            plugins=PLUGINS,
            flags=lambda wildcards, model=model: flags(
                jobs.profile_spec(PROFILE, PROFILE_SOURCES[model], CHECKPOINTING[wildcards.denoiser]), "out_dir"
            ),
            out=lambda wildcards, model=model: f"results/profile/{model}/{wildcards.denoiser}",
        log:
            f"results/logs/profile/{model}/{{denoiser}}.log",
        benchmark:
            f"results/benchmarks/profile/{model}/{{denoiser}}.tsv"
        threads: PROFILE.get("threads", 64)
        resources:
            mem_mb=PROFILE.get("mem_mb", 12000),
            gpu=int(PROFILE.get("device", "cpu").startswith("cuda")),
        conda:
            "../envs/sdo.yaml"
        shell:
            "python -m evals.cli --threads {threads} {params.plugins} --gpus-per-job {resources.gpu} profile {params.flags} "
            "--out-dir {params.out:q} --sweep > {log:q} 2>&1"


rule profile:
    input:
        [
            row
            for source in PROFILE["models"]
            for on in PROFILE["checkpointing"]
            for row in profile_rows(source, {False: "plain", True: "checkpointed"}[on])
        ],
    output:
        table=report("results/tables/profile.csv", caption="../report/profile.rst", category="5. Fidelity and cost"),
        figure=report(
            "results/figures/profile_vs_steps.png", caption="../report/profile.rst", category="5. Fidelity and cost"
        ),
    log:
        "results/logs/profile.log",
    conda:
        "../envs/sdo.yaml"
    script:
        "../scripts/profile_table.py"
