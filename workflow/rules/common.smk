# Shared values and helpers of the rules. Every job's command is built from its spec
# (evals.jobs) by one function (evals.flags.to_flags) and joined with shlex: every value a user
# writes reaches the shell quoted, and every other placeholder in a shell command is `:q`.

import re
import shlex
from pathlib import Path

from evals import jobs
from evals.flags import to_flags
from evals.jobs import slug
from sdo.models import resolve

# the given weights' directory, absolute: the Snakefile resolved it against the checkout
GIVEN_WEIGHTS = config["weights"]
RETRAINED = "results/retrained"
RUNS = config["runs"]
BENCH = config["bench"]
TASKS = jobs.active_tasks(config)
# path segment -> model source
SOURCES = {slug(source): source for source in config["model_options"]}

RUN_RECORD = "results/runs/{model}/{task}/{variant}/{chain}/seed{seed}.json"
GUIDED_RECORD = "results/guidance/{model}/T{steps}/r{repeats}/seed{seed}.json"
BENCH_ROW = "results/bench/{model}/{sampler}/{wrt}/T{steps}/{variant}.json"
# a job that measures a ratio of seconds asks for more cores than any machine has: Snakemake
# gives it all that --cores allows, so nothing runs beside it (a cluster profile sets its own)
EVERY_CORE = 4096


# every job imports the config's plug-in files, so what they register exists in the job too
PLUGINS = shlex.join(
    word for path in config.get("plugins") or [] for word in ("--plugin", path)
)


def flags(spec, *exclude):
    """The spec's flags as one shell-quoted string (fields in `exclude` left out)."""
    return shlex.join(to_flags(spec, exclude=exclude))


def weight_kinds(source):
    """The embedded weights a model source reads (its class says which)."""
    try:
        return list(resolve(source).cls.weight_files)
    except ValueError:
        return []


def weight_files(source, directory=None):
    kinds = weight_kinds(source)
    return [
        f"{directory or WEIGHTS}/{kind}.{suffix}"
        for kind in kinds
        for suffix in ("safetensors", "json")
    ]


# The given weights when every file the models read is there; else the models read a directory
# of the results where the missing ones are retrained and the others copied: a rule never
# writes (or deletes, when it fails) the given, committed files.
if all(
    Path(f).exists()
    for source in config["model_options"]
    for f in weight_files(source, GIVEN_WEIGHTS)
):
    WEIGHTS = GIVEN_WEIGHTS
else:
    WEIGHTS = config["weights"] = RETRAINED


def model_inputs(wildcards):
    return weight_files(SOURCES[wildcards.model])


RUN_JOBS = jobs.run_jobs(config)
RUN_RECORDS = [record for job in RUN_JOBS for record in job.records(RUN_RECORD)]
# (task, chain label) -> (model path segment, variant) -> job: one run rule per task and chain
JOBS_BY_RULE = {}
for job in RUN_JOBS:
    JOBS_BY_RULE.setdefault((job.task, job.chain.label), {})[
        (slug(job.model), job.variant)
    ] = job


def run_job(task, label, wildcards):
    return JOBS_BY_RULE[task, label][wildcards.model, wildcards.variant]


def rule_name(*parts):
    """A rule name from parts that may hold any character (a chain label, a model source)."""
    return "_".join(re.sub("[^A-Za-z0-9]", "_", part) for part in parts)


GUIDE_SPECS = jobs.guide_specs(config)
GUIDED_RECORDS = [
    GUIDED_RECORD.format(
        model=slug(spec.model), steps=spec.steps, repeats=spec.repeats, seed=seed
    )
    for spec, seeds in GUIDE_SPECS
    for seed in seeds
]
BACKWARD_COSTS = [
    f"results/backward_cost/{slug(source)}/{task}.json"
    for task, block in TASKS.items()
    for source in block["models"]
]
BENCH_ROWS = [
    row
    for source in BENCH["models"]
    for sampler in jobs.bench_samplers(config, source)
    for row in expand(
        BENCH_ROW,
        model=slug(source),
        sampler=sampler,
        wrt=BENCH["wrt"],
        steps=BENCH["steps"],
        variant=list(BENCH["variants"]),
    )
]


def bench_flags(wildcards):
    """Only this model's, sampler's, parameter type's, T's and variant's values and the bench's shared ones."""
    spec = jobs.bench_spec(
        config,
        SOURCES[wildcards.model],
        wildcards.wrt,
        int(wildcards.steps),
        wildcards.variant,
        wildcards.sampler,
    )
    return flags(spec, "out", "exact_gradient", "save_gradient")


PROFILE = config["profile"]
PROFILE_SOURCES = {slug(source): source for source in PROFILE["models"]}
CHECKPOINTING = {"plain": False, "checkpointed": True}
PROFILE_ROW = "results/profile/{model}/{denoiser}/{wrt}/T{steps}/{variant}.json"


def profile_rows(source, denoiser="{denoiser}"):
    """The rows one `sdo profile` job of a model source writes."""
    spec = jobs.profile_spec(PROFILE, source, False)
    return [
        PROFILE_ROW.format(
            model=slug(source),
            denoiser=denoiser,
            wrt=wrt,
            steps=steps,
            variant=v.partition("=")[0],
        )
        for wrt in spec.wrt
        for steps in spec.steps
        for v in spec.variants
    ]
