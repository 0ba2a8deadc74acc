"""The workflow's configuration: checked before any job runs, and turned into `sdo` arguments.

`check_config` validates the structure against `config/schema.yaml`, then what a schema cannot
say, from the code itself: each variant's estimator options (by building the estimator), each
task's and reward's and metrics' options (by their options dataclasses), that every model's
weights are on this machine and take their options, that every reward is offered for its
models' images, that names in selections and tasks are defined, and that reward and metric
files exist. It raises `ConfigError` with one message naming the key, the bad value and what is
allowed. The `*_arguments` functions build each job's command line from only the values that
job uses, so a job reruns only when one of those changes.
"""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import yaml

SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"
EMBEDDED_PREFIX = "embedded"
RUN_SETTINGS = ("iters", "batch", "lr", "betas", "eval_every", "cfg_scale", "eta", "reward_tolerance", "audit_every",
                "fallback_below", "audit_checkpoint")
PLUGIN_OPTIONS = ("model_options", "task_options", "reward_options", "metric_options")


class ConfigError(ValueError):
    """A configuration value the workflow cannot run."""


def load_schema(path: Path | str = SCHEMA) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _replaced_whole(path: tuple[str, ...]) -> bool:
    """Whether a later config replaces the block at `path` instead of merging into it: a
    plug-in's options (a task's `*_options` block, a model's entry under model_options, a variant),
    where a mixture of two files' keys would make options nobody wrote."""
    return bool(path) and path != ("model_options",) and (
        path[-1].endswith("_options")
        or (len(path) == 2 and path[0] == "model_options")
        or (len(path) >= 2 and path[-2] == "variants")
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
        if len(path) == 3 and path[:2] == ("runs", "tasks") and update.get("reward", base.get("reward")) != base.get("reward"):
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


def slug(source: str) -> str:
    """A model source as one path segment and wildcard value: `sdxl:/data/sdxl` -> `sdxl-data-sdxl`."""
    return re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9._]+", "-", source)).strip("-") or "model"


def selected(config: dict, kind: str, listed) -> list:
    """The names of `listed` that the top-level selection `kind` (tasks, models, variants) keeps."""
    chosen = config.get(kind)
    return [name for name in listed if chosen is None or name in chosen]


def active_tasks(config: dict) -> dict[str, dict]:
    """The tasks that run, each with only its selected models and variants (tasks left with
    none are dropped)."""
    tasks = {}
    for name in selected(config, "tasks", config["runs"]["tasks"]):
        block = dict(config["runs"]["tasks"][name])
        block["models"] = selected(config, "models", block["models"])
        block["variants"] = selected(config, "variants", block["variants"])
        if block["models"] and block["variants"]:
            tasks[name] = block
    return tasks


def import_plugins(config: dict, base: Path | str = ".") -> None:
    from evals.cli import import_plugin

    for path in config.get("plugins") or []:
        import_plugin(Path(base) / path)


def _fail(key: str, error: Exception) -> ConfigError:
    return ConfigError(f"config key {key}: {error}")


def _check_file(key: str, callable_name: str, base: Path | str) -> None:
    source = callable_name.rpartition(":")[0]
    if source.endswith(".py") and not (Path(base) / source).is_file():
        raise ConfigError(
            f"config key {key}: file {source!r} of {callable_name!r} does not exist; "
            "allowed: an existing file.py:function or package.module:function"
        )


def _check_variants(key: str, variants: dict) -> None:
    from sdo.estimators import make_estimator

    for name, variant in variants.items():
        options = {k: v for k, v in variant.items() if k != "method"}
        try:
            make_estimator(variant["method"], **options)
        except ValueError as error:
            raise _fail(f"{key}.{name}", error) from None


def check_models(config: dict) -> dict:
    """Every model source under model_options: resolved, its options checked, its weights found
    (FileNotFoundError's message names where it looked). Returns source -> model class."""
    from sdo.models import check_model

    classes = {}
    for source, options in config["model_options"].items():
        try:
            classes[source] = check_model(source, _embedded_options(config, source, options or {})).cls
        except (ValueError, FileNotFoundError) as error:
            raise _fail(f"model_options.{source}", error) from None
    return classes


def _check_cost(block: dict) -> None:
    from sdo.models import check_model

    _check_variants("sd_cost.variants", block["variants"])
    for source, settings in block["models"].items():
        for name in (settings or {}).get("variants", []):
            if name not in block["variants"]:
                raise ConfigError(f"config key sd_cost.models.{source}.variants: {name!r} is not defined under sd_cost.variants")
        options = {**(block.get("model_options") or {}), **((settings or {}).get("model_options") or {})}
        try:
            check_model(source, options)
        except (ValueError, FileNotFoundError) as error:
            raise _fail(f"sd_cost.models.{source}", error) from None


def check_config(config: dict, schema: dict | None = None, base: Path | str = ".") -> None:
    """Raise ConfigError for the first problem found; `base` resolves relative files."""
    schema = schema or load_schema()
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        raise ConfigError(_message(error))
    import_plugins(config, base)
    from evals.domains import DOMAINS
    from evals.rewards import reward_options
    from sdo.tasks import TASKS

    for kind, names in (("tasks", config["runs"]["tasks"]), ("models", config["model_options"]),
                        ("variants", config["runs"]["variants"])):
        for name in config.get(kind) or []:
            if name not in names:
                raise ConfigError(f"config key {kind}: {name!r} is not defined; allowed: {', '.join(names)}")
    _check_variants("runs.variants", config["runs"]["variants"])
    _check_variants("bench.variants", config["bench"]["variants"])
    if "sd_cost" in config:
        _check_cost(config["sd_cost"])
    classes = check_models(config)
    for source in config["quality"]["models"] + config["bench"]["models"]:
        if source not in classes:
            raise ConfigError(f"config key quality/bench models: {source!r} has no entry under model_options")
    defined = config["runs"]["variants"]
    for task, block in config["runs"]["tasks"].items():
        key = f"runs.tasks.{task}"
        if task not in TASKS:
            raise ConfigError(f"config key runs.tasks: task {task!r} is not registered; allowed: {', '.join(sorted(TASKS))}")
        for name in block["variants"]:
            if name not in defined:
                raise ConfigError(
                    f"config key {key}.variants: variant {name!r} is not defined; "
                    f"allowed: the names under runs.variants ({', '.join(defined)})"
                )
        try:
            TASKS[task].make_options(block.get("task_options") or {})
        except ValueError as error:
            raise _fail(f"{key}.task_options", error) from None
        _check_file(f"{key}.reward", block["reward"], base)
        for metric in block.get("metrics", []):
            _check_file(f"{key}.metrics", metric, base)
        for source in block["models"]:
            if source not in classes:
                raise ConfigError(
                    f"config key {key}.models: {source!r} is not listed under model_options; "
                    f"allowed: {', '.join(classes)}"
                )
            domain = classes[source].domain
            try:
                reward_options(block["reward"], domain, block.get("reward_options") or {})
                DOMAINS[domain].make_options(block.get("metric_options") or {})
            except ValueError as error:
                raise _fail(f"{key} (model {source}, {domain} images)", error) from None


def _flag_words(key: str, value) -> list[str]:
    """`--key value`; a boolean is a bare flag when true and nothing when false; a list gives
    its values after one flag; None gives nothing."""
    flag = "--" + key.replace("_", "-")
    if value is None:
        return []
    if isinstance(value, bool):
        return [flag] if value else []
    if isinstance(value, list):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def _value(value) -> str:
    """An option's value as `sdo`'s KEY=VALUE reads it back (JSON for booleans, lists, None)."""
    import json

    return value if isinstance(value, str) else json.dumps(value)


def _option_words(flag: str, options: dict) -> list[str]:
    words = []
    for key, value in sorted((options or {}).items()):
        words += [flag, f"{key}={_value(value)}"]
    return words


def _estimator_options(variant: dict) -> dict:
    return {key: value for key, value in variant.items() if key != "method"}


def estimator_arguments(variants: dict, variant: str) -> list[str]:
    """`--method M --variant NAME --option key=value ...` of one named variant."""
    return ["--method", variants[variant]["method"], "--variant", variant,
            *_option_words("--option", _estimator_options(variants[variant]))]


def _embedded_options(config: dict, source: str, options: dict) -> dict:
    """An embedded model's options with the config's weights directory."""
    if source.split(":", 1)[0] in (EMBEDDED_PREFIX, f"{EMBEDDED_PREFIX}-flow") and "weights" not in options:
        return {**options, "weights": config["weights"]}
    return options


def model_arguments(config: dict, source: str) -> list[str]:
    """`--model SOURCE --model-option key=value ...` with the model's configured options."""
    options = _embedded_options(config, source, config["model_options"].get(source) or {})
    return ["--model", source, *_option_words("--model-option", options)]


def run_arguments(config: dict, task: str, source: str, variant: str) -> list[str]:
    """The `sdo run` flags of one model, task and variant, apart from steps, seeds and paths."""
    block = config["runs"]["tasks"][task]
    words = ["--task", task, *model_arguments(config, source), *estimator_arguments(config["runs"]["variants"], variant)]
    words += ["--reward", block["reward"], *_option_words("--reward-option", block.get("reward_options"))]
    words += _option_words("--task-option", block.get("task_options"))
    words += _option_words("--metric-option", block.get("metric_options"))
    words += _flag_words("metrics", block.get("metrics"))
    words += _flag_words("mem_mb", config.get("mem_mb_per_run"))
    words += _flag_words("start_tolerance", config["statistics"].get("start_tolerance"))
    for key in RUN_SETTINGS:
        words += _flag_words(key, block.get(key))
    return words


def guide_arguments(config: dict, source: str) -> list[str]:
    """The `sdo guide` flags: the guidance block's scale and schedule, and the latent task's
    values that say what is sampled and how it is scored (so guidance meets the same reward)."""
    block = config["runs"]["tasks"]["latent"]
    words = [*model_arguments(config, source), "--scale", str(config["guidance"]["scale"]),
             "--schedule", config["guidance"]["schedule"], "--reward", block["reward"]]
    words += _option_words("--reward-option", block.get("reward_options"))
    words += _option_words("--task-option", block.get("task_options"))
    words += _option_words("--metric-option", block.get("metric_options"))
    for key in ("batch", "cfg_scale", "reward_tolerance", "metrics"):
        words += _flag_words(key, block.get(key))
    return words


def bench_arguments(config: dict, source: str, variant: str) -> list[str]:
    """The `sdo bench` flags of one model and variant, apart from wrt, steps and paths."""
    bench = config["bench"]
    words = [*model_arguments(config, source), *estimator_arguments(bench["variants"], variant)]
    for key in ("batch", "seed", "rounds", "mem_mb"):
        words += _flag_words(key, bench.get(key))
    return words


COST_KEYS = ("wrt", "batch", "device", "seed", "rounds", "mem_mb")
COST_ROW = "results/sd_cost/{model}/{denoiser}/{wrt}/T{steps}/{variant}.json"


def _cost_variants(block: dict, source: str) -> list[str]:
    return (block["models"][source] or {}).get("variants", list(block["variants"]))


def cost_rows(block: dict, source: str, denoiser: str = "{denoiser}") -> list[str]:
    """The rows one `sdo cost` job of a model source writes (`denoiser`: plain, checkpointed,
    or the wildcard)."""
    steps = (block["models"][source] or {}).get("steps", block["steps"])
    return [
        COST_ROW.format(model=slug(source), denoiser=denoiser, wrt=wrt, steps=t, variant=variant)
        for wrt in block["wrt"] for t in steps for variant in _cost_variants(block, source)
    ]


def cost_arguments(block: dict, source: str) -> list[str]:
    """The `sdo cost` flags of one model of an `sd_cost` block: every variant as `--variant
    name=method:key=value,...`, its parameter types, step counts, guidance and load options;
    not the denoiser's checkpointing or paths."""
    model = block["models"][source] or {}
    words = ["--model", source]
    words += _option_words("--model-option", {**(block.get("model_options") or {}), **(model.get("model_options") or {})})
    for name in _cost_variants(block, source):
        variant = block["variants"][name]
        options = ",".join(f"{k}={_value(v)}" for k, v in sorted(_estimator_options(variant).items()))
        words += ["--variant", f"{name}={variant['method']}" + (f":{options}" if options else "")]
    words += _flag_words("steps", model.get("steps", block["steps"]))
    words += _flag_words("cfg_scale", model.get("cfg_scale", block.get("cfg_scale")))
    for key in COST_KEYS:
        words += _flag_words(key, block.get(key))
    if model.get("plain_loop", block.get("plain_loop", True)) is False:
        words.append("--no-plain-loop")
    return words


def backward_cost_arguments(config: dict, task: str, source: str) -> list[str]:
    """The `sdo backward-cost` flags of one model and task: the task's parameter type, batch,
    guidance and smallest T, and the statistics' rounds."""
    from sdo.tasks import TASKS

    block = config["runs"]["tasks"][task]
    words = [*model_arguments(config, source), "--wrt", TASKS[task].wrt, "--batch", str(block["batch"]),
             "--steps", str(min(block["steps"])), "--rounds", str(config["statistics"].get("backward_rounds", 15))]
    words += _flag_words("lora_rank", (block.get("task_options") or {}).get("lora_rank"))
    words += _flag_words("cfg_scale", block.get("cfg_scale"))
    return words
