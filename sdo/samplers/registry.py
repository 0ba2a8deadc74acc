"""Samplers found by name: each sampler file registers its chain class with `register_sampler`."""

from __future__ import annotations

SAMPLERS: dict[str, type] = {}


def register_sampler(cls):
    """Class decorator: make the sampler `cls.name` known to `make_chain` and the models."""
    if cls.name in SAMPLERS and SAMPLERS[cls.name] is not cls:
        raise ValueError(f"sampler {cls.name!r} is registered twice")
    SAMPLERS[cls.name] = cls
    return cls
