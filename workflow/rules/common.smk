# Shared values and helpers of the rules.

import os

MODELS = config["models"]
LATENT = config["latent"]
BENCH = config["bench"]

LATENT_RUNS = expand(
    "results/runs/latent/{method}/T{steps}/seed{seed}.json",
    method=LATENT["methods"],
    steps=LATENT["steps"],
    seed=LATENT["seeds"],
)

BENCH_ROWS = expand(
    "results/bench/{wrt}/T{steps}/{variant}.json",
    wrt=BENCH["kinds"],
    steps=BENCH["steps"],
    variant=list(BENCH["variants"]),
)


def models_dir(wildcards, input):
    """The directory holding the model files a rule takes as input."""
    return os.path.dirname(input.denoiser)


def bench_method(wildcards):
    return BENCH["variants"][wildcards.variant]["method"]


def bench_options(wildcards):
    """The variant's estimator options as `--option key=value` flags."""
    spec = {k: v for k, v in BENCH["variants"][wildcards.variant].items() if k != "method"}
    return " ".join(f"--option {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in spec.items())
