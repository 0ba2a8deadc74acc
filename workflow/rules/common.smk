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

RUN_RECORDS = [
    record
    for task, spec in RUNS["tasks"].items()
    for record in expand(
        "results/runs/{task}/{variant}/T{steps}/seed{seed}.json",
        task=task,
        variant=spec["variants"],
        steps=spec["steps"],
        seed=spec.get("seeds", RUNS["seeds"]),
    )
]

LATENT = RUNS["tasks"].get("latent")
GUIDED_RECORDS = (
    expand(
        "results/guidance/T{steps}/r{repeats}/seed{seed}.json",
        steps=LATENT["steps"],
        repeats=config["guidance"]["repeats"],
        seed=LATENT.get("seeds", RUNS["seeds"]),
    )
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


def run_flags(wildcards):
    """Only this task's and variant's values: a job reruns when one of them changes."""
    return shlex.join(run_arguments(config, wildcards.task, wildcards.variant))


def bench_flags(wildcards):
    """Only this variant's values and the bench's shared ones."""
    return shlex.join(bench_arguments(config, wildcards.variant))
