"""Models found by the source a user names: each model file registers its class.

A source is `<prefix>` or `<prefix>:<location>` (`embedded`, `embedded:results/models`,
`sd:path/or/model-id`, `sdxl:...`, `sd3:...`, `flux:...`), `random:<architecture>` (a published
architecture with random weights, for time and memory only: `random:sd1.5`, `random:sdxl`, ...),
or a bare diffusers directory or Hugging Face model id whose `model_index.json` names a
pipeline class a registered model takes (`_class_name`). Each model class declares its
`prefix`, the `pipelines` it recognises, its random `architectures` and its load `Options`
(a dataclass: the model's own options block), and implements `load(location, device=...,
**options)`, `random(architecture, device=..., seed=..., **options)` and `check(location)`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from sdo.options import make_options
from sdo.registry import Registry

MODELS = Registry("model prefix")
ARCHITECTURES = Registry("architecture")


def register_model(cls):
    """Class decorator: make a model family known by its prefix, pipelines and architectures."""
    from sdo.models.base import DiffusionModel

    if not (isinstance(cls, type) and issubclass(cls, DiffusionModel)):
        raise TypeError(f"model {cls!r} must be a DiffusionModel subclass")
    MODELS.register(cls.prefix, cls)
    for name in getattr(cls, "architectures", {}):
        ARCHITECTURES.register(name, cls)
    return cls


@dataclass(frozen=True)
class Source:
    """A resolved source: the model class, and where its weights are (None: the class's
    default) or which architecture to draw at random."""

    cls: type
    location: str | None = None
    architecture: str | None = None


def pipeline_class(location: str) -> str | None:
    """The `_class_name` of a diffusers directory's or cached model id's `model_index.json`."""
    index = Path(location).expanduser() / "model_index.json"
    if not index.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(location, "model_index.json")
        except Exception:  # not a valid repository id
            cached = None
        if not isinstance(cached, str):
            return None
        index = Path(cached)
    try:
        index_json = json.loads(index.read_text())
    except OSError:
        return None
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{index} is not valid JSON ({error}): a diffusers model_index.json names the pipeline "
            "class and its components"
        ) from None
    if not isinstance(index_json, dict) or "_class_name" not in index_json:
        raise ValueError(f"{index} names no pipeline class (_class_name): not a diffusers model_index.json")
    return index_json["_class_name"]


def known_sources() -> str:
    """The sources a user may name, from the registered families and architectures."""
    prefixes = ", ".join(f"{p}:<...>" for p in sorted(MODELS))
    return (
        f"use one of {prefixes}, random:<architecture> ({', '.join(sorted(ARCHITECTURES))}), "
        "or a diffusers directory or cached model id"
    )


def resolve(source: str) -> Source:
    """The model class and location `source` names; ValueError naming what is allowed."""
    prefix, sep, rest = source.partition(":")
    if prefix == "random" and sep:
        if rest not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {rest!r} in model {source!r}; known: {sorted(ARCHITECTURES)}")
        return Source(ARCHITECTURES[rest], architecture=rest)
    if prefix in MODELS and (sep or prefix == source):
        if sep and not rest:
            raise ValueError(
                f"model {source!r} names no location after the colon; give {prefix}:<directory or "
                f"model id>, or {prefix} alone where the family has a default"
            )
        return Source(MODELS[prefix], rest or None)
    name = pipeline_class(source)
    for cls in MODELS.values():
        if name is not None and name in getattr(cls, "pipelines", ()):
            return Source(cls, source)
    if name is not None:
        raise ValueError(f"model {source!r} is a {name}, which no registered model takes; {known_sources()}")
    raise ValueError(
        f"unknown model {source!r}: no directory or cached model id with a model_index.json; {known_sources()}"
    )


def model_options(cls, options: dict | None) -> dict:
    """The load options of a model class checked against its `Options` dataclass, as keyword
    arguments; ValueError naming what is wrong and what is allowed."""
    return dataclasses.asdict(make_options(cls.Options, options, f"model {cls.prefix!r}"))


def check_model(source: str, options: dict | None = None) -> Source:
    """Resolve `source` and check, without loading anything, that its weights are there and its
    options are known: FileNotFoundError or ValueError naming what is wrong."""
    resolved = resolve(source)
    checked = model_options(resolved.cls, options)
    if resolved.architecture is None:
        resolved.cls.check(resolved.location, **checked)
    return resolved


def planned_schedule(source: str, options: dict | None = None) -> tuple[type, dict]:
    """(the model class, the scheduler configuration a run would sample with), checked and
    read without loading a network (what the plan checks samplers and T against)."""
    resolved = check_model(source, options)
    checked = model_options(resolved.cls, options)
    return resolved.cls, resolved.cls.planned_schedule(resolved.location, resolved.architecture, **checked)


def load_model(source: str, device="cpu", seed: int = 0, **options):
    """The model `source` names with its load `options`; random weights are drawn from `seed`."""
    resolved = resolve(source)
    options = model_options(resolved.cls, options)
    if resolved.architecture is not None:
        return resolved.cls.random(resolved.architecture, device=device, seed=seed, **options)
    return resolved.cls.load(resolved.location, device=device, **options)
