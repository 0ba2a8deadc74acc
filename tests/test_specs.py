"""Every setting is stated once, in a spec: the command line's flags are generated from the
specs, and flags -> spec -> flags is the identity for every field of every command."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from evals import specs
from evals.cli import COMMANDS, build_parser
from evals.flags import from_args, to_flags


def _unusual(spec_field: dataclasses.Field, annotation):
    """A value for `spec_field` other than its default, of its type."""
    kind = typing.get_args(annotation)[0] if type(None) in typing.get_args(annotation) else annotation
    choices = spec_field.metadata.get("choices")
    if choices:
        return choices[-1]
    if spec_field.name in ("method",):
        return "shortcut"
    if spec_field.name == "task":
        return "finetune"
    if spec_field.name == "wrt" and typing.get_origin(kind) is not list:
        return "weights"
    if spec_field.name == "sampler":
        return "ddim"
    if spec_field.name == "variants":
        return ["a=shortcut:at=all", "b=full"]
    if spec_field.name == "wrt" and typing.get_origin(kind) is list:
        return ["weights", "latent"]
    if kind is bool:
        return not spec_field.default
    if kind is int:
        return 7
    if kind is float:
        return 0.375
    if kind is str:
        return "odd value; $(touch x) 'quoted' 3"
    if kind is Path:
        return Path("some dir/with space/out.json")
    if kind is dict:
        return {"text": 'a prompt, with = and "quotes"', "number": 3, "flag": True, "digit": "3", "items": [1, 2]}
    origin = typing.get_origin(kind)
    if origin is list:
        inner = typing.get_args(kind)[0]
        if inner is Path:
            return [Path("a dir/one.yaml"), Path("two $(x).yaml")]
        return [3, 5] if inner is int else [1.5, 2.5] if inner is float else ["pkg.mod:fn", "pickscore"]
    if origin is tuple:
        return (0.5, 0.75)
    raise AssertionError(f"no unusual value for {spec_field.name}: {annotation}")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_flags_to_spec_to_flags_is_the_identity(command):
    cls = COMMANDS[command][0]
    hints = typing.get_type_hints(cls)
    values = {f.name: _unusual(f, hints[f.name]) for f in dataclasses.fields(cls)}
    spec = cls(**values)
    words = [command, *to_flags(spec)]
    args = build_parser().parse_args(words)
    many = {"seed": args.seed[0]} if isinstance(getattr(args, "seed", None), list) else {}
    again = from_args(cls, args, **many)
    assert again == spec
    assert to_flags(again) == to_flags(spec)


def test_defaults_are_stated_once():
    """A spec's default is the command line's default: parsing only the required flags gives the
    spec built from only the required fields."""
    spec = specs.RunSpec(method="full", steps=3, iters=2, out=Path("r.json"))
    args = build_parser().parse_args(["run", "--method", "full", "--steps", "3", "--iters", "2", "--out", "r.json"])
    assert from_args(specs.RunSpec, args, seed=args.seed[0]) == spec


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("iters", 0, ["iters", "positive"]),
        ("precision", "fp8", ["precision", "fp16-autocast"]),
        ("betas", (0.9, 1.5), ["betas", "[0, 1)"]),
        ("fallback_below", 2.0, ["fallback_below", "[-1, 1]"]),
        ("seed", -1, ["seed", ">= 0"]),
        ("mem_mb", 0, ["mem_mb", "positive"]),
    ],
)
def test_a_spec_refuses_a_bad_value_naming_it(field, value, words):
    with pytest.raises(specs.SettingError) as caught:
        specs.RunSpec(**{"method": "full", "steps": 3, "iters": 2, field: value})
    assert caught.value.field == field and all(word in str(caught.value) for word in words)
