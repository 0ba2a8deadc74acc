"""The workflow's configuration: layered from its files, and checked before any job runs.

`layered` merges config files as Snakemake does, except that a plug-in's options block is
replaced whole. `check_config` validates the structure against `config/schema.yaml`, then
builds every job's spec (`evals.jobs`) and checks what a schema cannot say, from the code
itself: run settings by the spec's own fields and checks, each variant's estimator options,
each task's, sampler's, reward's and metrics' options by their options dataclasses, that every
model's weights are on this machine (and readable) and take their options, that each sampler
fits its model and the estimators that run on it and can run T steps, that every reward is
offered for its models' images, that user callables import and define their function, that
plug-in files load, and that names in selections and tasks are defined. It raises
`ConfigError` with one message naming the key, the bad value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

from evals import jobs
from evals.specs import SettingError

SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"


class ConfigError(ValueError):
    """A configuration value the workflow cannot run."""


def load_schema(path: Path | str = SCHEMA) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _replaced_whole(path: tuple[str, ...]) -> bool:
    """Whether a later config replaces the block at `path` instead of merging into it: a
    plug-in's options (a task's `*_options` block, a model's entry under model_options, a variant),
    where a mixture of two files' keys would make options nobody wrote, and the bench's variants
    and samplers (a bench preset measures what it lists)."""
    return (
        bool(path)
        and path != ("model_options",)
        and (
            path[-1].endswith("_options")
            or (len(path) == 2 and path[0] == "model_options")
            or (len(path) >= 2 and path[-2] == "variants")
            or path in (("bench", "variants"), ("bench", "samplers"))
        )
    )


def typed(values):
    """`--config` values as YAML types: Snakemake reads `key=true` or `seeds=[0,1]` as text
    (YAML's base loader), which the schema would refuse; each text is read again as YAML."""
    if isinstance(values, dict):
        return {key: typed(value) for key, value in values.items()}
    if isinstance(values, (list, tuple)):
        return [typed(value) for value in values]
    if isinstance(values, str):
        try:
            return yaml.safe_load(values)
        except yaml.YAMLError:
            return values
    return values


def layered(layers: list[dict | str | Path]) -> dict:
    """Config layers (mappings or YAML files) merged in order as Snakemake merges --configfile and
    --config (mappings key by key, lists replaced), except that plug-in option blocks are
    replaced whole (`_replaced_whole`) and a task that names another reward drops the lower
    layer's reward_options."""

    def merge(base: dict, update: dict, path: tuple[str, ...]) -> dict:
        merged = dict(base)
        if (
            len(path) == 3
            and path[:2] == ("runs", "tasks")
            and update.get("reward", base.get("reward")) != base.get("reward")
        ):
            merged.pop("reward_options", None)  # options of the reward a lower layer named
        for key, value in update.items():
            inner = (*path, str(key))
            if isinstance(value, dict) and isinstance(merged.get(key), dict) and not _replaced_whole(inner):
                merged[key] = merge(merged[key], value, inner)
            else:
                merged[key] = value
        return merged

    config: dict = {}
    for layer in layers:
        config = merge(config, layer if isinstance(layer, dict) else yaml.safe_load(Path(layer).read_text()) or {}, ())
    return config


def _key(path) -> str:
    return ".".join(str(part) for part in path) or "(top level)"


def _message(error: jsonschema.ValidationError) -> str:
    """One line: the key, what is wrong with its value, and what is allowed there."""
    if error.validator == "additionalProperties" and "properties" in error.schema:
        allowed = ", ".join(sorted(error.schema["properties"]))
        return f"config key {_key(error.absolute_path)}: {error.message}; allowed keys: {allowed}"
    text = f"config key {_key(error.absolute_path)}: {error.message}"
    description = error.schema.get("description") if isinstance(error.schema, dict) else None
    return f"{text}; allowed: {description}" if description else text


def _fail(key: str, error: Exception) -> ConfigError:
    return ConfigError(f"config key {key}: {error}")


def _check_variants(key: str, variants: dict) -> None:
    from sdo.estimators import make_estimator

    for name, variant in variants.items():
        if not isinstance(variant.get("whole_chain", False), bool):
            raise ConfigError(f"config key {key}.{name}.whole_chain: {variant['whole_chain']!r} is not true or false")
        try:
            make_estimator(variant["method"], **jobs.estimator_options(variant))
        except ValueError as error:
            raise _fail(f"{key}.{name}", error) from None


def _check_block_keys(task: str, block: dict) -> None:
    """A task block holds the sweep's axes and run settings (a RunSpec's fields) only."""
    allowed = (*jobs.AXES, *jobs.RUN_SETTINGS)
    for key in block:
        if key not in allowed:
            raise ConfigError(
                f"config key runs.tasks.{task}.{key}: {key!r} is not a run setting; allowed keys: "
                f"{', '.join(sorted(allowed))}"
            )
    if not block.get("steps") and not block.get("chains"):
        raise ConfigError(f"config key runs.tasks.{task}: no chain to run; give steps: [T, ...] or chains: [...]")
    for index, chain in enumerate(block.get("chains") or []):
        for key in chain:
            if key not in jobs.CHAIN_KEYS:
                raise ConfigError(
                    f"config key runs.tasks.{task}.chains[{index}].{key}: not a chain key; allowed keys: "
                    f"{', '.join(jobs.CHAIN_KEYS)}"
                )


def check_models(config: dict) -> dict:
    """Every model source under model_options: resolved, its options checked, its weights found
    and readable (the message names where it looked). Returns source -> (class, schedule)."""
    from sdo.models import planned_schedule

    found = {}
    for source in config["model_options"]:
        try:
            found[source] = planned_schedule(source, jobs.model_options(config, source))
        except (ValueError, FileNotFoundError) as error:
            raise _fail(f"model_options.{source}", error) from None
    return found


def preflight(spec, cls, schedule: dict, base: Path | str = ".") -> None:
    """ValueError naming what a run of `spec` on a model of class `cls` (with `schedule`) cannot
    do, found without loading the model: its task's options, its sampler (registered, fitting the
    model's process and the estimator's needs, able to run T steps and an inversion where asked),
    its reward and metrics (offered for the model's images, their options, user callables that
    import). The same checks a run makes before it starts."""
    from evals.domains import DOMAINS
    from evals.plugins import load_callable
    from evals.rewards import is_callable_name, reward_entry, reward_options
    from evals.run import task_options_of
    from sdo.estimators import make_estimator
    from sdo.samplers import SAMPLERS, capabilities, refusal
    from sdo.tasks import TASKS

    try:
        options = TASKS.lookup(spec.task).make_options(task_options_of(spec))
    except ValueError as error:
        raise SettingError("task_options", str(error)) from None
    estimator = make_estimator(spec.method, **spec.options)
    sampler = spec.sampler or cls.sampler_for(schedule)
    kind = SAMPLERS.lookup(sampler)
    if kind.process != cls.process:
        fitting = sorted(name for name, other in SAMPLERS.items() if other.process == cls.process)
        raise ValueError(
            f"sampler {sampler!r} is for {kind.process} models; {spec.model} is a {cls.process} model: "
            f"use one of {', '.join(fitting)}"
        )
    can = capabilities(sampler, spec.sampler_options, schedule)
    if spec.steps > can.max_steps:
        raise ValueError(
            f"T = {spec.steps} is more than {sampler} can run on {spec.model}: at most {can.max_steps} "
            "steps (num_train_timesteps)"
        )
    reason = refusal(estimator.name, estimator.needs, sampler, can)
    if reason:
        raise ValueError(reason)
    start = getattr(options, "start_step", 0)
    if start >= spec.steps:
        raise ValueError(f"start_step {start} must be below T = {spec.steps}")
    if getattr(options, "init", "sample") == "invert":
        if not can.inversion:
            raise ValueError(
                f"init=invert runs the sampler backwards; {sampler} has no inversion (ddim and flow_euler do)"
            )
        folder = getattr(options, "init_images", "")
        if folder and not (Path(base) / folder).is_dir():
            raise SettingError("task_options", f"init_images {folder!r} is not a folder of images (read from {base})")
    if TASKS[spec.task].wrt == "cond" and not cls.conditional:
        raise ValueError(f"{spec.model} is unconditional: it has no conditioning to optimise")
    try:
        if is_callable_name(spec.reward):
            load_callable(spec.reward, base)
        else:
            reward_entry(spec.reward, cls.domain)
    except ValueError as error:
        raise SettingError("reward", f"({spec.model}, {cls.domain} images) {error}") from None
    try:
        reward_options(spec.reward, cls.domain, spec.reward_options)
    except ValueError as error:
        raise SettingError("reward_options", f"({spec.model}, {cls.domain} images) {error}") from None
    named = {name for name in spec.metrics if not is_callable_name(name)}
    try:
        for name in spec.metrics:
            if name in named:
                block = spec.metric_options.get(name) or {}
                if not isinstance(block, dict):
                    raise ValueError(f"metric_options.{name} must be a mapping of the {name} reward's options")
                reward_options(name, cls.domain, block)
            else:
                load_callable(name, base)
    except ValueError as error:
        raise SettingError("metrics", str(error)) from None
    try:
        DOMAINS.lookup(cls.domain).make_options({k: v for k, v in spec.metric_options.items() if k not in named})
    except ValueError as error:
        raise SettingError("metric_options", str(error)) from None


def check_config(config: dict, schema: dict | None = None, base: Path | str = ".") -> None:
    """Raise ConfigError for the first problem found; `base` resolves relative files."""
    from evals.plugins import PluginError, import_plugin

    schema = schema or load_schema()
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        raise ConfigError(_message(error))
    for path in config.get("plugins") or []:
        try:
            import_plugin(Path(base) / path)
        except (PluginError, ValueError, TypeError) as error:
            raise _fail("plugins", error) from None
    for kind, names in (
        ("tasks", config["runs"]["tasks"]),
        ("models", config["model_options"]),
        ("variants", config["runs"]["variants"]),
    ):
        for name in config.get(kind) or []:
            if name not in names:
                raise ConfigError(f"config key {kind}: {name!r} is not defined; allowed: {', '.join(names)}")
    _check_variants("runs.variants", config["runs"]["variants"])
    _check_variants("bench.variants", config["bench"]["variants"])
    if "profile" in config:
        _check_profile(config["profile"])
    models = check_models(config)
    for source in config["quality"]["models"] + config["bench"]["models"]:
        if source not in models:
            raise ConfigError(f"config key quality/bench models: {source!r} has no entry under model_options")
    from sdo.tasks import TASKS

    defined = config["runs"]["variants"]
    for task, block in config["runs"]["tasks"].items():
        key = f"runs.tasks.{task}"
        registered = jobs.registered_task(block, task)
        if registered not in TASKS:
            where = f"{key}.task" if "task" in block else "runs.tasks"
            raise ConfigError(
                f"config key {where}: task {registered!r} is not registered; allowed: "
                f"{', '.join(sorted(TASKS))} (a block named otherwise says which with task:)"
            )
        _check_block_keys(task, block)
        for chain in jobs.chains(block):
            for name in chain.variants or block["variants"]:
                if name not in defined:
                    raise ConfigError(
                        f"config key {key}.variants: variant {name!r} is not defined; allowed: the names "
                        f"under runs.variants ({', '.join(defined)})"
                    )
            for source in chain.models or ():
                if source not in block["models"]:
                    raise ConfigError(
                        f"config key {key}.chains: model {source!r} is not among the block's models "
                        f"({', '.join(block['models'])})"
                    )
        for source in block["models"]:
            if source not in models:
                raise ConfigError(
                    f"config key {key}.models: {source!r} is not listed under model_options; "
                    f"allowed: {', '.join(models)}"
                )
    for job in jobs.run_jobs(config):
        key = f"runs.tasks.{job.task} ({job.model}, {job.variant}, {job.chain.label})"
        try:
            spec = jobs.run_spec(config, job)
            preflight(spec, *models[job.model], base)
        except SettingError as error:
            block = config["runs"]["tasks"][job.task]
            raise _fail(f"runs.tasks.{job.task}.{error.field}" if error.field in block else key, error) from None
        except (ValueError, TypeError) as error:
            raise _fail(key, error) from None
    try:
        jobs.guide_specs(config)
    except (ValueError, TypeError) as error:
        raise _fail("guidance", error) from None


def _check_profile(block: dict) -> None:
    from sdo.models import check_model

    _check_variants("profile.variants", block["variants"])
    for source, settings in block["models"].items():
        for name in (settings or {}).get("variants", []):
            if name not in block["variants"]:
                raise ConfigError(
                    f"config key profile.models.{source}.variants: {name!r} is not defined under profile.variants"
                )
        options = {**(block.get("model_options") or {}), **((settings or {}).get("model_options") or {})}
        try:
            check_model(source, options)
        except (ValueError, FileNotFoundError) as error:
            raise _fail(f"profile.models.{source}", error) from None


CHAIN_FIELDS = ("steps", "start_step", "init", "sampler")


def layering_note(layers: list[dict], config: dict) -> str | None:
    """What a user's config files that name only some tasks, or a task's steps but not its
    chains, should know: which tasks and chains the layered config still runs from the defaults
    (and how to run only theirs), or None."""
    named, chains_kept = set(), []
    for layer in layers:
        named |= set((layer.get("runs") or {}).get("tasks") or {})
    running = jobs.active_tasks(config)
    for task in sorted(named & set(running)):
        blocks = [((layer.get("runs") or {}).get("tasks") or {}).get(task) or {} for layer in layers]
        if any("steps" in block for block in blocks) and not any("chains" in block for block in blocks):
            labels = [
                jobs.ChainEntry(**{k: v for k, v in chain.items() if k in CHAIN_FIELDS}).label
                for chain in running[task].get("chains") or []
            ]
            if labels:
                chains_kept.append(
                    f"the {task} task also runs the chains {', '.join(labels)} from the defaults "
                    f"(add `chains: []` to its block to run only its steps)"
                )
    extra = [task for task in running if task not in named]
    if named and extra and config.get("tasks") is None:
        chains_kept.insert(
            0,
            f"the config files name the tasks {', '.join(sorted(named))}, and the layered config "
            f"also runs {', '.join(extra)} from the defaults; add `tasks: [{', '.join(sorted(named))}]` "
            "to run only yours",
        )
    return "; ".join(chains_kept) or None
