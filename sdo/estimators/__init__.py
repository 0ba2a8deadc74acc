"""Gradient estimators found by name: `make_estimator("shortcut", at="all")`."""

from __future__ import annotations

from sdo.estimators.base import PARAMETER_KINDS, Estimate, Estimator, NotApplicable, Problem
from sdo.estimators.adjoint import Adjoint
from sdo.estimators.doodl import Doodl
from sdo.estimators.drtune import DRTune
from sdo.estimators.full import Full
from sdo.estimators.refl import ReFL
from sdo.estimators.shortcut import Shortcut
from sdo.estimators.truncated import Truncated
from sdo.estimators.warm_shortcut import WarmShortcut

ESTIMATORS: dict[str, type[Estimator]] = {
    cls.name: cls for cls in (Full, Truncated, Adjoint, Doodl, Shortcut, WarmShortcut, DRTune, ReFL)
}


def make_estimator(name: str, **options) -> Estimator:
    """The estimator `name` configured with `options` (its dataclass fields)."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; known: {sorted(ESTIMATORS)}")
    try:
        return ESTIMATORS[name](**options)
    except TypeError as error:
        raise ValueError(f"bad options {options} for estimator {name!r}: {error}") from None


__all__ = ["ESTIMATORS", "PARAMETER_KINDS", "Estimate", "Estimator", "NotApplicable", "Problem", "make_estimator"]
