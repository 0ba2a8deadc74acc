"""Estimators found by name: each estimator file registers its class with `register_estimator`."""

from __future__ import annotations

from sdo.registry import Registry

ESTIMATORS = Registry("estimator")


def register_estimator(cls):
    """Class decorator: make the estimator `cls.name` known to `make_estimator`, the command
    line and the config checks (its options are its dataclass fields)."""
    from sdo.estimators.base import Estimator

    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        raise TypeError(f"estimator {cls!r} must be an Estimator subclass")
    return ESTIMATORS.register(cls.name, cls)
