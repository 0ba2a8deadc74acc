"""Samplers found by name: each sampler file registers its chain class with `register_sampler`."""

from __future__ import annotations

from sdo.registry import Registry

SAMPLERS = Registry("sampler")


def register_sampler(cls):
    """Class decorator: make the sampler `cls.name` known to `make_chain`, the models, the command
    line and the config checks (its options are its `Options` dataclass)."""
    from sdo.samplers.base import Chain

    if not (isinstance(cls, type) and issubclass(cls, Chain)):
        raise TypeError(f"sampler {cls!r} must be a Chain subclass")
    return SAMPLERS.register(cls.name, cls)
