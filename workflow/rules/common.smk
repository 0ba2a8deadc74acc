# Shared values and helpers of the rules.

import shlex

from evals.config import bench_arguments, guide_arguments, run_arguments

MODELS = config["models"]
RUNS = config["runs"]
BENCH = config["bench"]
MODEL_FILES = {
    "denoiser": f"{MODELS}/denoiser.safetensors",
    "denoiser_meta": f"{MODELS}/denoiser.json",
    "classifier": f"{MODELS}/classifier.safetensors",
    "classifier_meta": f"{MODELS}/classifier.json",
}

RUN_RECORD = "results/runs/{task}/{variant}/T{steps}/seed{seed}.json"
GUIDED_RECORD = "results/guidance/T{steps}/r{repeats}/seed{seed}.json"


def seeds_of(task):
    """The task's own seeds, else the runs' seeds."""
    return RUNS["tasks"][task].get("seeds", RUNS["seeds"])


RUN_RECORDS = [
    record
    for task, spec in RUNS["tasks"].items()
    for record in expand(RUN_RECORD, task=task, variant=spec["variants"], steps=spec["steps"], seed=seeds_of(task))
]

LATENT = RUNS["tasks"].get("latent")
GUIDED_RECORDS = (
    expand(GUIDED_RECORD, steps=LATENT["steps"], repeats=config["guidance"]["repeats"], seed=seeds_of("latent"))
    if LATENT and "guidance" in config
    else []
)

BENCH_ROWS = expand(
    "results/bench/{wrt}/T{steps}/{variant}.json",
    wrt=BENCH["wrt"],
    steps=BENCH["steps"],
    variant=list(BENCH["variants"]),
)


def models_dir(wildcards, input):
    """The directory holding the model files a rule takes as input."""
    return os.path.dirname(input.denoiser)


def bench_flags(wildcards):
    """Only this variant's values and the bench's shared ones."""
    return shlex.join(bench_arguments(config, wildcards.variant))
