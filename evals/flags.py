"""Specs and command lines, both ways, from the specs' fields alone (`evals.specs`): `add_flags`
puts a spec's fields on an argparse parser, `from_args` builds the spec back from the parsed
flags, and `to_flags` writes a spec as the flags that build it again (what the workflow runs),
so flags -> spec -> flags is the identity. Option blocks (`*_options`) are repeatable
`KEY=VALUE` flags, the value read as JSON where it parses (numbers, booleans, lists, quoted
text) and as text otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path

NONE = type(None)


def option(text: str) -> tuple[str, object]:
    """`key=value` with the value read as JSON where it parses (numbers, booleans), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"an option must look like key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def encode(value) -> str:
    """An option's value as `option` reads it back: text stays text unless it would read as
    JSON (then quoted), anything else is JSON."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            return value
        return json.dumps(value)
    return json.dumps(value)


def _flag(spec_field: dataclasses.Field) -> str:
    return spec_field.metadata.get("flag") or "--" + spec_field.name.replace("_", "-")


def _base(annotation):
    """(the type without None, whether None is allowed)."""
    args = typing.get_args(annotation)
    if args and NONE in args:
        rest = [a for a in args if a is not NONE]
        return rest[0], True
    return annotation, False


def _fields(cls) -> list[tuple[dataclasses.Field, object]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.init]


def _default(spec_field: dataclasses.Field):
    if spec_field.default is not dataclasses.MISSING:
        return spec_field.default
    if spec_field.default_factory is not dataclasses.MISSING:
        return spec_field.default_factory()
    return dataclasses.MISSING


def _integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    return value


def add_flags(parser: argparse.ArgumentParser, cls, choices: dict | None = None, known: dict | None = None) -> None:
    """A flag per field of the spec class `cls` (its help, default and type); `choices` maps
    field names to allowed values known only now (the registries' names), `known` to what the
    help should add that is known only now."""
    choices, known = choices or {}, known or {}
    for spec_field, annotation in _fields(cls):
        kind, optional = _base(annotation)
        meta, default = spec_field.metadata, _default(spec_field)
        required = default is dataclasses.MISSING or meta.get("required", False)
        extra = f": {known[spec_field.name]}" if spec_field.name in known else ""
        common = {"dest": spec_field.name, "help": (meta.get("help", "") + extra).replace("%", "%%")}
        allowed = choices.get(spec_field.name) or meta.get("choices")
        if allowed:
            common["choices"] = list(allowed)
        origin = typing.get_origin(kind)
        if meta.get("positional"):
            parser.add_argument(spec_field.name, **{k: v for k, v in common.items() if k != "dest"})
            continue
        flag = _flag(spec_field)
        if kind is bool:
            if default is True:
                parser.add_argument("--no-" + flag[2:], action="store_false", **common)
            else:
                parser.add_argument(flag, action="store_true", **common)
        elif kind is dict:
            parser.add_argument(flag, type=option, action="append", default=[], metavar="KEY=VALUE", **common)
        elif origin is list:
            (inner,) = typing.get_args(kind) or (str,)
            nargs = "+"
            action = "extend" if spec_field.name in ("metrics", "variants") else "store"
            parser.add_argument(
                flag, type=_converter(inner), nargs=nargs, action=action, required=required, default=None, **common
            )
        elif origin is tuple:
            inner = typing.get_args(kind)
            parser.add_argument(flag, type=_converter(inner[0]), nargs=len(inner), default=default, **common)
        elif meta.get("many"):
            parser.add_argument(flag, type=_converter(kind), nargs="+", default=[default], **common)
        else:
            parser.add_argument(
                flag,
                type=_converter(kind),
                required=required,
                default=None if default is dataclasses.MISSING else default,
                **common,
            )


def _converter(kind):
    if kind is int:
        return _integer
    if kind in (float, str, Path):
        return kind
    return str


def from_args(cls, args: argparse.Namespace, **given):
    """The spec `cls` from parsed flags (option lists become dicts, tuples stay tuples), with
    `given` fields set directly (e.g. one of several seeds)."""
    values = {}
    for spec_field, annotation in _fields(cls):
        if not hasattr(args, spec_field.name) or spec_field.name in given:
            continue
        value = getattr(args, spec_field.name)
        kind, _ = _base(annotation)
        if value is None and typing.get_origin(kind) is list and _default(spec_field) is not dataclasses.MISSING:
            value = _default(spec_field)
        if kind is dict:
            value = dict(value)
        elif typing.get_origin(kind) is tuple and value is not None:
            value = tuple(value)
        values[spec_field.name] = value
    return cls(**values, **given)


def to_flags(spec, exclude: tuple[str, ...] = ()) -> list[str]:
    """The flags that build `spec` again through `add_flags` and `from_args` (fields in
    `exclude` left out; None, empty blocks and lists give nothing)."""
    words = []
    for spec_field, annotation in _fields(type(spec)):
        if spec_field.name in exclude:
            continue
        value, default = getattr(spec, spec_field.name), _default(spec_field)
        kind, _ = _base(annotation)
        if spec_field.metadata.get("positional"):
            words.insert(0, str(value))
            continue
        flag = _flag(spec_field)
        if value is None:
            continue
        if kind is bool:
            if value != default:
                words.append("--no-" + flag[2:] if default is True else flag)
        elif kind is dict:
            for key, item in sorted(value.items()):
                words += [flag, f"{key}={encode(item)}"]
        elif isinstance(value, (list, tuple)):
            if value:
                words += [flag, *map(str, value)]
        else:
            words.append(f"{flag}={value}")
    return words
