"""The workflow's configuration: checked before any job runs, and turned into `sdo` arguments.

`check_config` validates against `config/schema.yaml` (unknown keys, methods, tasks, rewards,
estimator options and out-of-range values) and then what a schema cannot say (a task naming a
variant that is not defined, a reward file that does not exist); it raises `ConfigError` with
one message naming the key, the bad value and what is allowed. The `*_arguments` functions
build the command line of each job from only the values that job uses, so a job reruns only
when one of those changes.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"
TASK_KEYS_NOT_FLAGS = ("variants", "steps", "seeds")


class ConfigError(ValueError):
    """A configuration value the workflow cannot run."""


def load_schema(path: Path | str = SCHEMA) -> dict:
    return yaml.safe_load(Path(path).read_text())


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


def check_config(config: dict, schema: dict | None = None, base: Path | str = ".") -> None:
    """Raise ConfigError for the first problem found; `base` resolves relative reward files."""
    schema = schema or load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ConfigError(_message(error))
    defined = config["runs"]["variants"]
    for task, spec in config["runs"]["tasks"].items():
        for name in spec["variants"]:
            if name not in defined:
                raise ConfigError(
                    f"config key runs.tasks.{task}.variants: variant {name!r} is not defined; "
                    f"allowed: the names under runs.variants ({', '.join(defined)})"
                )
        for key in ("reward", "metrics"):
            for callable_spec in spec.get(key, []) if key == "metrics" else [spec[key]]:
                source = callable_spec.rpartition(":")[0]
                if source.endswith(".py") and not (Path(base) / source).is_file():
                    raise ConfigError(
                        f"config key runs.tasks.{task}.{key}: file {source!r} of {callable_spec!r} does not exist; "
                        "allowed: an existing file.py:function or package.module:function"
                    )


def _flag_words(key: str, value) -> list[str]:
    """`--key value`; a boolean is a bare flag when true and nothing when false; a list gives
    its values after one flag."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else []
    if isinstance(value, list):
        return [flag, *map(str, value)]
    return [flag, str(value)]


def _options(spec: dict) -> list[str]:
    """An estimator variant's options, `key=value` each, booleans as JSON writes them."""
    return [f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in sorted(spec.items()) if key != "method"]


def estimator_arguments(variants: dict, variant: str) -> list[str]:
    """`--method M --variant NAME --option key=value ...` of one named variant."""
    words = ["--method", variants[variant]["method"], "--variant", variant]
    for option in _options(variants[variant]):
        words += ["--option", option]
    return words


COST_KEYS = ("wrt", "steps", "model", "resolution", "batch", "guidance", "dtype", "device", "seed", "rounds")


def cost_arguments(block: dict) -> list[str]:
    """The `sdo cost` flags of an `sd_cost` block: every variant as `--variant
    name=method:key=value,...`, its parameter types, step counts and model; not UNet
    checkpointing or paths."""
    words = []
    for name, spec in block["variants"].items():
        options = ",".join(_options(spec))
        words += ["--variant", f"{name}={spec['method']}" + (f":{options}" if options else "")]
    for key in COST_KEYS:
        if key in block:
            words += _flag_words(key, block[key])
    return words


def run_arguments(config: dict, task: str, variant: str) -> list[str]:
    """The `sdo run` flags of one task and variant, apart from steps, seed and paths."""
    words = ["--task", task, *estimator_arguments(config["runs"]["variants"], variant)]
    for key, value in config["runs"]["tasks"][task].items():
        if key not in TASK_KEYS_NOT_FLAGS:
            words += _flag_words(key, value)
    return words


def bench_arguments(config: dict, variant: str) -> list[str]:
    """The `sdo bench` flags of one variant, apart from wrt, steps and paths."""
    bench = config["bench"]
    words = estimator_arguments(bench["variants"], variant)
    for key in ("batch", "seed", "rounds"):
        words += _flag_words(key, bench[key])
    return words


GUIDE_KEYS = ("model", "batch", "reward", "target", "reference_index", "metrics", "prompt", "guidance", "reward_tolerance",
              "clip_model", "aesthetic_head", "style_image", "reward_prompt", "resolution", "dtype")


def guide_arguments(config: dict) -> list[str]:
    """The `sdo guide` flags: the guidance block's scale and schedule, and the latent task's
    values that say what is sampled and how it is scored (so guidance meets the same reward)."""
    words = []
    for key in ("scale", "schedule"):
        words += _flag_words(key, config["guidance"][key])
    for key, value in config["runs"]["tasks"]["latent"].items():
        if key in GUIDE_KEYS:
            words += _flag_words(key, value)
    return words
