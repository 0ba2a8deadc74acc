"""Every plug-in's options are a dataclass (an estimator, a task, a model's load options, a
reward's, a domain's metrics'): its fields are the option names, their annotations the allowed
types, its `__post_init__` the allowed values. `make_options` builds one from a mapping and
says exactly what is wrong, so the command line and the workflow's config checks refuse bad
options with the same message, from the code and no second copy of it.
"""

from __future__ import annotations

import dataclasses

SIMPLE = {"int": int, "float": float, "str": str, "bool": bool}


def _accepted(annotation: str) -> list[str]:
    """The alternatives of an annotation such as 'int | None' or 'list[str] | None'."""
    return [part.strip() for part in str(annotation).split("|")]


def _fits(value, alternative: str) -> tuple[bool, object]:
    """Whether `value` fits one alternative, and the value to use (numbers given for a text
    option become text: a prompt '3')."""
    if alternative == "None":
        return value is None, value
    if alternative.startswith(("list", "tuple")):
        inner = alternative[alternative.index("[") + 1 : -1] if "[" in alternative else "str"
        if isinstance(value, (list, tuple)) and all(_fits(v, inner.split(",")[0].strip())[0] for v in value):
            return True, list(value) if alternative.startswith("list") else tuple(value)
        return False, value
    expected = SIMPLE.get(alternative)
    if expected is None:  # an annotation this check does not know: leave it to the dataclass
        return True, value
    if expected is bool:
        return isinstance(value, bool), value
    if isinstance(value, bool):
        return False, value
    if expected is float and isinstance(value, (int, float)):
        return True, float(value)
    if expected is str and isinstance(value, (int, float)):
        return True, str(value)
    return isinstance(value, expected), value


def describe(cls) -> dict[str, str]:
    """Option name -> its annotation, for messages and help."""
    return {f.name: str(f.type) for f in dataclasses.fields(cls) if f.init}


def make_options(cls, values: dict | None, owner: str):
    """`cls(**values)` after checking each name and value type; ValueError naming the owner,
    the key, the bad value and what is allowed (the dataclass's own checks add the ranges)."""
    values, allowed = dict(values or {}), describe(cls)
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        listed = ", ".join(f"{name} ({kind})" for name, kind in allowed.items()) or "none"
        raise ValueError(f"unknown option {unknown[0]!r} for {owner}; allowed: {listed}")
    for name, value in values.items():
        fits = [_fits(value, alternative) for alternative in _accepted(allowed[name])]
        good = [converted for ok, converted in fits if ok]
        if not good:
            raise ValueError(f"option {name!r} of {owner}: {value!r} is not a {allowed[name]}")
        values[name] = good[0]
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{owner}: {error}") from None
