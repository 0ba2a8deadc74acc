"""Samplers: chains of affine steps over a network's prediction, one file each, found by name."""

from sdo.samplers import ddim, flow_euler  # noqa: F401  (each registers itself)
from sdo.samplers.base import Chain, Meter, Step
from sdo.samplers.registry import SAMPLERS, register_sampler


def make_chain(sampler: str, net, steps: int, scheduler_config: dict, **options) -> Chain:
    """The chain of sampler `sampler` over `net` with T = `steps` (options: cfg_scale,
    null_cond, and the sampler's own, e.g. eta for ddim or mu for flow_euler)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; known: {sorted(SAMPLERS)}")
    return SAMPLERS[sampler](net, steps, scheduler_config, **options)


__all__ = ["Chain", "Meter", "SAMPLERS", "Step", "make_chain", "register_sampler"]
