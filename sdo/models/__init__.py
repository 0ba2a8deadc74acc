"""Model backends, found by the source a user names (`sdo.models.registry`). Each model file
registers itself; importing this package imports the built-in ones."""

from sdo.models import digits, digits_flow, flux, pixel, sd3, sdxl, stable_diffusion  # noqa: F401
from sdo.models.registry import (
    ARCHITECTURES,
    MODELS,
    check_model,
    load_model,
    planned_schedule,
    register_model,
    resolve,
)

__all__ = ["ARCHITECTURES", "MODELS", "check_model", "load_model", "planned_schedule", "register_model", "resolve"]
