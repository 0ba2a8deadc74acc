"""Gradient estimators found by name: `make_estimator("shortcut", at="all")`. Each estimator
file registers itself; importing this package imports them all."""

from __future__ import annotations

from sdo.estimators import adjoint, doodl, drtune, full, refl, shortcut, truncated, warm_shortcut  # noqa: F401
from sdo.estimators.base import PARAMETER_KINDS, Estimate, Estimator, NotApplicable, Problem, fidelity
from sdo.estimators.registry import ESTIMATORS, register_estimator
from sdo.options import make_options


def make_estimator(name: str, **options) -> Estimator:
    """The estimator `name` configured with `options` (its dataclass fields)."""
    return make_options(ESTIMATORS.lookup(name), options, f"estimator {name!r}")


__all__ = [
    "ESTIMATORS",
    "PARAMETER_KINDS",
    "Estimate",
    "Estimator",
    "NotApplicable",
    "Problem",
    "fidelity",
    "make_estimator",
    "register_estimator",
]
