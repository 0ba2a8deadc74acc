"""Estimators found by name: each estimator file registers its class with `register_estimator`."""

from __future__ import annotations

ESTIMATORS: dict[str, type] = {}


def register_estimator(cls):
    """Class decorator: make the estimator `cls.name` known to `make_estimator`, the command
    line and the config checks (its options are its dataclass fields)."""
    if cls.name in ESTIMATORS and ESTIMATORS[cls.name] is not cls:
        raise ValueError(f"estimator {cls.name!r} is registered twice")
    ESTIMATORS[cls.name] = cls
    return cls
