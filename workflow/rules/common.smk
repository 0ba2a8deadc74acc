# Shared values and helpers of the rules.

import os

MODELS = config["models"]
RUNS = config["runs"]
BENCH = config["bench"]

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

BENCH_ROWS = expand(
    "results/bench/{wrt}/T{steps}/{variant}.json",
    wrt=BENCH["kinds"],
    steps=BENCH["steps"],
    variant=list(BENCH["variants"]),
)


def models_dir(wildcards, input):
    """The directory holding the model files a rule takes as input."""
    return os.path.dirname(input.denoiser)


def _flag_value(value):
    return str(value).lower() if isinstance(value, bool) else value


def estimator_flags(variants):
    """A params function: the wildcard variant's `--method M --option key=value ...` flags."""

    def flags(wildcards):
        spec = dict(variants[wildcards.variant])
        options = " ".join(f"--option {k}={_flag_value(v)}" for k, v in spec.items() if k != "method")
        return f"--method {spec['method']} {options}"

    return flags


def task_flags(wildcards):
    """The task's `sdo run` flags from its config entry (underscores become dashes)."""
    spec = RUNS["tasks"][wildcards.task]
    return " ".join(f"--{k.replace('_', '-')} {_flag_value(v)}" for k, v in spec.items() if k not in ("variants", "steps", "seeds"))
