# Shared values and helpers of the rules.

import shlex

import re

from evals.config import (
    active_tasks, backward_cost_arguments, bench_arguments, guide_arguments, model_arguments, run_arguments, slug,
)

WEIGHTS = config["weights"]  # absolute: the Snakefile resolved it against the checkout
RUNS = config["runs"]
BENCH = config["bench"]
TASKS = active_tasks(config)  # the tasks that run, with their selected models and variants
SOURCES = {slug(source): source for source in config["model_options"]}  # path segment -> model source
WEIGHT_FILES = {  # the committed weights each embedded model needs (rules retrain a missing one)
    "embedded": ["denoiser", "classifier"],
    "embedded-flow": ["flow_denoiser", "classifier"],
}

RUN_RECORD = "results/runs/{model}/{task}/{variant}/T{steps}/seed{seed}.json"
GUIDED_RECORD = "results/guidance/{model}/T{steps}/r{repeats}/seed{seed}.json"
BENCH_ROW = "results/bench/{model}/{wrt}/T{steps}/{variant}.json"
# a job that measures a ratio of seconds asks for more cores than any machine has: Snakemake
# gives it all that --cores allows, so nothing runs beside it (a cluster profile sets its own)
EVERY_CORE = 4096


def weight_files(source):
    """The weight and config files a model source reads from the weights directory."""
    kinds = WEIGHT_FILES.get(source, [])
    return [f"{WEIGHTS}/{kind}.{suffix}" for kind in kinds for suffix in ("safetensors", "json")]


def model_inputs(wildcards):
    return weight_files(SOURCES[wildcards.model])


def seeds_of(task):
    """The task's own seeds, else the runs' seeds."""
    return RUNS["tasks"][task].get("seeds", RUNS["seeds"])


RUN_RECORDS = [
    record
    for task, block in TASKS.items()
    for record in expand(
        RUN_RECORD, model=map(slug, block["models"]), task=task, variant=block["variants"], steps=block["steps"],
        seed=seeds_of(task),
    )
]

LATENT = TASKS.get("latent")
GUIDED_RECORDS = (
    expand(GUIDED_RECORD, model=map(slug, LATENT["models"]), steps=LATENT["steps"], repeats=config["guidance"]["repeats"],
           seed=seeds_of("latent"))
    if LATENT and config.get("guidance")
    else []
)

BACKWARD_COSTS = [f"results/backward_cost/{slug(source)}/{task}.json" for task, block in TASKS.items() for source in block["models"]]

BENCH_ROWS = expand(BENCH_ROW, model=map(slug, BENCH["models"]), wrt=BENCH["wrt"], steps=BENCH["steps"],
                    variant=list(BENCH["variants"]))


def bench_flags(wildcards):
    """Only this model's and variant's values and the bench's shared ones."""
    return shlex.join(bench_arguments(config, SOURCES[wildcards.model], wildcards.variant))
