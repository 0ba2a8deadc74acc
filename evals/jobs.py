"""Every job of the workflow as a spec built from the configuration (`evals.specs`), the same
specs the command line builds from its flags: a rule's command is `to_flags(spec)`, so each job
is handed exactly the settings it uses and a dry run shows them all.

A task block holds the sweep's axes (`models`, `variants`, `seeds`, and the chains it runs:
`steps: [T, ...]` for whole chains, or `chains:` entries of their own, e.g.
`{steps: 50, start_step: 45}` or `{steps: 50, start_step: 10, init: invert}`, each with its own
`variants`, `seeds` and `sampler` where it needs them) and run settings: any `RunSpec` field a
task may set (`RUN_SETTINGS`). A variant is `{method: <estimator>, <its options>}`, and
`whole_chain: true` makes it the whole-chain baseline of a partial chain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from evals.chains import chain_label
from evals.specs import BackwardCostSpec, BenchSpec, GuideSpec, ProfileSpec, QualitySpec, RunSpec, field_names

AXES = ("task", "models", "variants", "steps", "chains", "seeds")
JOB_FIELDS = (
    "task",
    "experiment",
    "method",
    "options",
    "variant",
    "steps",
    "seed",
    "out",
    "model",
    "model_options",
    "mem_mb",
    "start_tolerance",
    "whole_chain",
    "device",
)
RUN_SETTINGS = tuple(name for name in field_names(RunSpec) if name not in JOB_FIELDS)
CHAIN_KEYS = ("steps", "start_step", "init", "sampler", "sampler_options", "models", "variants", "seeds")
VARIANT_KEYS = ("method", "whole_chain")  # the rest are the estimator's options
EMBEDDED = ("embedded", "embedded-flow")


def slug(source: str) -> str:
    """A model source as one path segment and wildcard value: `sdxl:/data/sdxl` -> `sdxl-data-sdxl`."""
    return re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9._]+", "-", source)).strip("-") or "model"


def selected(config: dict, kind: str, listed) -> list:
    """The names of `listed` that the top-level selection `kind` (tasks, models, variants) keeps."""
    chosen = config.get(kind)
    return [name for name in listed if chosen is None or name in chosen]


@dataclass(frozen=True)
class ChainEntry:
    """One chain a task block runs; `models`, `variants` and `seeds` None take the block's."""

    steps: int
    start_step: int = 0
    init: str = "sample"
    sampler: str | None = None
    sampler_options: dict = field(default_factory=dict)
    models: tuple | None = None
    variants: tuple | None = None
    seeds: tuple | None = None

    @property
    def label(self) -> str:
        return chain_label(self.steps, self.start_step, self.init, self.sampler)


def chains(block: dict) -> list[ChainEntry]:
    """The chains of a task block: its `steps` (whole chains) and its `chains` entries."""
    entries = [ChainEntry(steps=steps) for steps in block.get("steps") or []]
    for entry in block.get("chains") or []:
        values = dict(entry)
        for key in ("models", "variants", "seeds"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        entries.append(ChainEntry(**values))
    return entries


def active_tasks(config: dict) -> dict[str, dict]:
    """The tasks that run, each with only its selected models (tasks left with none are dropped)."""
    tasks = {}
    for name in selected(config, "tasks", config["runs"]["tasks"]):
        block = dict(config["runs"]["tasks"][name])
        block["models"] = selected(config, "models", block["models"])
        if block["models"]:
            tasks[name] = block
    return tasks


@dataclass(frozen=True)
class RunJob:
    """One run job: a model, a task block (`task`: its name, the experiment), a variant and a
    chain, every seed in one process."""

    task: str
    model: str
    variant: str
    chain: ChainEntry
    seeds: tuple[int, ...]

    def records(self, pattern: str) -> list[str]:
        return [
            pattern.format(
                model=slug(self.model), task=self.task, variant=self.variant, chain=self.chain.label, seed=seed
            )
            for seed in self.seeds
        ]


def run_jobs(config: dict) -> list[RunJob]:
    """Every run job of the config's active tasks, chains and selected variants."""
    jobs = []
    for task, block in active_tasks(config).items():
        for chain in chains(block):
            variants = selected(config, "variants", chain.variants or block["variants"])
            models = [model for model in block["models"] if chain.models is None or model in chain.models]
            seeds = tuple(chain.seeds or block.get("seeds") or config["runs"]["seeds"])
            jobs += [RunJob(task, model, variant, chain, seeds) for model in models for variant in variants]
    return jobs


def registered_task(block: dict, name: str) -> str:
    """The registered task a block runs: its `task`, else its own name."""
    return block.get("task") or name


def model_options(config: dict, source: str) -> dict:
    """A model's configured load options, an embedded model's with the config's weights directory."""
    options = dict(config["model_options"].get(source) or {})
    if source.split(":", 1)[0] in EMBEDDED and "weights" not in options:
        options["weights"] = config["weights"]
    return options


def estimator_options(variant: dict) -> dict:
    return {key: value for key, value in variant.items() if key not in VARIANT_KEYS}


def run_spec(config: dict, job: RunJob, seed: int | None = None) -> RunSpec:
    """The spec of one seed of a run job (the first seed by default; the output path left out)."""
    block = config["runs"]["tasks"][job.task]
    variant = config["runs"]["variants"][job.variant]
    chain = job.chain
    settings = {key: block[key] for key in RUN_SETTINGS if key in block}
    task_options = dict(settings.pop("task_options", None) or {})
    if chain.start_step:
        task_options.update(start_step=chain.start_step, init=chain.init)
    sampler_options = {**(settings.pop("sampler_options", None) or {}), **chain.sampler_options}
    sampler = chain.sampler or settings.pop("sampler", None)
    task = registered_task(block, job.task)
    return RunSpec(
        **settings,
        task=task,
        experiment=None if task == job.task else job.task,
        method=variant["method"],
        options=estimator_options(variant),
        variant=job.variant,
        steps=chain.steps,
        sampler=sampler,
        sampler_options=sampler_options,
        task_options=task_options,
        model=job.model,
        model_options=model_options(config, job.model),
        mem_mb=config.get("mem_mb_per_run"),
        start_tolerance=config["statistics"].get("start_tolerance"),
        whole_chain=bool(variant.get("whole_chain")),
        seed=job.seeds[0] if seed is None else seed,
        device=config.get("device", "auto"),
    )


def guide_specs(config: dict) -> list[tuple[GuideSpec, tuple[int, ...]]]:
    """The guided passes: every repeats setting over the latent task's whole chains (or the
    guidance block's `steps`), on each of its models, with the latent task's reward, prompt,
    batch and guidance scale; each with the seeds it runs."""
    guidance, tasks = config.get("guidance"), active_tasks(config)
    if not guidance or "latent" not in tasks:
        return []
    block = tasks["latent"]
    steps = guidance.get("steps") or [c.steps for c in chains(block) if not c.start_step]
    seeds = tuple(block.get("seeds") or config["runs"]["seeds"])
    shared = {
        key: block[key]
        for key in (
            "batch",
            "cfg_scale",
            "reward",
            "reward_options",
            "reward_tolerance",
            "metrics",
            "metric_options",
            "task_options",
            "sampler",
            "sampler_options",
        )
        if key in block
    }
    return [
        (
            GuideSpec(
                **shared,
                model=model,
                model_options=model_options(config, model),
                steps=t,
                repeats=repeats,
                scale=guidance["scale"],
                schedule=guidance["schedule"],
                mem_mb=config.get("mem_mb_per_run"),
                seed=seeds[0],
                device=config.get("device", "auto"),
            ),
            seeds,
        )
        for model in block["models"]
        for t in dict.fromkeys(steps)
        for repeats in guidance["repeats"]
    ]


def backward_cost_spec(config: dict, task: str, source: str) -> BackwardCostSpec:
    """The backward-cost measurement of one model and task: the task's parameter type, batch,
    guidance, sampler and smallest T, and the statistics' rounds."""
    from sdo.tasks import TASKS

    block = config["runs"]["tasks"][task]
    return BackwardCostSpec(
        model=source,
        model_options=model_options(config, source),
        wrt=TASKS[registered_task(block, task)].wrt,
        batch=block.get("batch", 8),
        steps=min(c.steps for c in chains(block)),
        rounds=config["statistics"].get("backward_rounds", 15),
        lora_rank=(block.get("task_options") or {}).get("lora_rank"),
        cfg_scale=block.get("cfg_scale", 1.0),
        reward=block.get("reward"),
        reward_options=dict(block.get("reward_options") or {}),
        sampler=block.get("sampler"),
        sampler_options=dict(block.get("sampler_options") or {}),
        mem_mb=config.get("mem_mb_per_run"),
        device=config.get("device", "auto"),
    )


def bench_samplers(config: dict, source: str) -> list[str]:
    """The samplers the bench runs a model on: the bench block's `samplers` for it, else the
    model's own (read from its scheduler configuration without loading it)."""
    from sdo.models import planned_schedule

    listed = (config["bench"].get("samplers") or {}).get(source)
    if listed:
        return list(listed)
    cls, schedule = planned_schedule(source, model_options(config, source))
    return [cls.sampler_for(schedule)]


def bench_spec(config: dict, source: str, wrt: str, steps: int, variant: str, sampler: str | None = None) -> BenchSpec:
    """One bench row of a model, sampler, parameter type, T and variant."""
    bench = config["bench"]
    definition = bench["variants"][variant]
    shared = {key: bench[key] for key in ("batch", "seed", "rounds", "mem_mb") if key in bench}
    return BenchSpec(
        **shared,
        model=source,
        model_options=model_options(config, source),
        wrt=wrt,
        steps=steps,
        method=definition["method"],
        options=estimator_options(definition),
        variant=variant,
        sampler=sampler,
        device=config.get("device", "auto"),
    )


def profile_spec(block: dict, source: str, checkpointing: bool) -> ProfileSpec:
    """The profile of one model of a `profile` block with its denoiser's checkpointing on or off."""
    model = block["models"][source] or {}
    names = model.get("variants", list(block["variants"]))
    variants = []
    for name in names:
        options = estimator_options(block["variants"][name])
        text = ",".join(f"{k}={_text(v)}" for k, v in sorted(options.items()))
        variants.append(f"{name}={block['variants'][name]['method']}" + (f":{text}" if text else ""))
    options = {**(block.get("model_options") or {}), **(model.get("model_options") or {})}
    if checkpointing:
        options["gradient_checkpointing"] = True
    shared = {key: block[key] for key in ("batch", "seed", "rounds", "mem_mb", "device") if key in block}
    return ProfileSpec(
        **shared,
        model=source,
        model_options=options,
        variants=variants,
        wrt=list(block["wrt"]),
        steps=list(model.get("steps", block["steps"])),
        cfg_scale=model.get("cfg_scale", block.get("cfg_scale", 1.0)),
        plain_loop=model.get("plain_loop", block.get("plain_loop", True)),
        out_dir=Path("results/profile"),
    )


def _text(value) -> str:
    from evals.flags import encode

    return encode(value)


def quality_spec(config: dict, source: str) -> QualitySpec:
    quality = config["quality"]
    return QualitySpec(
        model=source,
        model_options=model_options(config, source),
        steps=quality["steps"],
        cfg_scales=list(quality["cfg_scales"]),
        per_label=quality["per_label"],
        device=config.get("device", "auto"),
    )
