# Seconds and memory of every estimator at the published architectures' true shapes with random
# weights (`snakemake profile`): one `sdo profile` process per model and denoiser
# checkpointing setting builds the model once and measures every (parameter type, T, variant)
# row, resetting the peak memory before each. The job asks for every core (capped at --cores)
# and the GPU, so jobs run one at a time and the rows' seconds and peaks are their own; a
# killed job reruns all its rows. The `profile` block's defaults are config/profile.yaml (CPU,
# layered under the Snakefile's config); a preset given with --configfile
# (config/profile_gpu.yaml) overrides them.

for model in PROFILE_SOURCES:  # one rule per model: each has its own step counts

    rule:
        name:
            rule_name("profile_rows", model)
        output:
            rows=profile_rows(PROFILE_SOURCES[model]),
        log:
            f"results/logs/profile/{model}/{{denoiser}}.log",
        benchmark:
            f"results/benchmarks/profile/{model}/{{denoiser}}.tsv"
        wildcard_constraints:
            denoiser="plain|checkpointed",
        conda:
            "../envs/sdo.yaml"
        threads: PROFILE.get("threads", 64)
        resources:
            mem_mb=PROFILE.get("mem_mb", 12000),
            gpu=int(PROFILE.get("device", "cpu").startswith("cuda")),
        params:
            plugins=PLUGINS,
            flags=lambda wildcards, model=model: flags(
                jobs.profile_spec(
                    PROFILE, PROFILE_SOURCES[model], CHECKPOINTING[wildcards.denoiser]
                ),
                "out_dir",
            ),
            out=lambda wildcards, model=model: f"results/profile/{model}/{wildcards.denoiser}",
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
        table=report(
            "results/tables/profile.csv",
            caption="../report/profile.rst",
            category="5. Fidelity and cost",
        ),
        figure=report(
            "results/figures/profile_vs_steps.png",
            caption="../report/profile.rst",
            category="5. Fidelity and cost",
        ),
    log:
        "results/logs/profile.log",
    conda:
        "../envs/sdo.yaml"
    script:
        "../scripts/profile_table.py"
