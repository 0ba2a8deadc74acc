"""Samplers: chains of affine steps over a network's prediction, one file each, found by name."""

from sdo.options import make_options
from sdo.samplers import ddim, dpmpp_2m, euler, euler_ancestral, flow_euler, flow_sde, unipc  # noqa: F401 (register)
from sdo.samplers.base import Capabilities, Chain, Meter, Step, refusal
from sdo.samplers.registry import SAMPLERS, register_sampler


def sampler_options(sampler: str, values: dict | None):
    """The sampler's options (its `Options` dataclass) from `values`; ValueError naming what is
    wrong and what is allowed."""
    return make_options(SAMPLERS.lookup(sampler).Options, values, f"sampler {sampler!r}")


def make_chain(
    sampler: str,
    net,
    steps: int,
    scheduler_config: dict,
    *,
    cfg_scale: float = 1.0,
    null_cond=None,
    options: dict | None = None,
    schedule: dict | None = None,
) -> Chain:
    """The chain of sampler `sampler` over `net` with T = `steps`: classifier-free guidance at
    `cfg_scale` with `null_cond`, the sampler's own `options` (e.g. ddim's eta) and what the
    model adds to the schedule (`schedule`: flow matching's mu and sigmas)."""
    cls = SAMPLERS.lookup(sampler)
    return cls(
        net,
        steps,
        scheduler_config,
        cfg_scale=cfg_scale,
        null_cond=null_cond,
        options=sampler_options(sampler, options),
        schedule=schedule or {},
    )


def capabilities(sampler: str, options: dict | None, scheduler_config: dict) -> Capabilities:
    """What `sampler` with `options` can do on a schedule, without building a chain."""
    return SAMPLERS.lookup(sampler).capabilities_for(sampler_options(sampler, options), scheduler_config)


__all__ = [
    "Capabilities",
    "Chain",
    "Meter",
    "SAMPLERS",
    "Step",
    "capabilities",
    "make_chain",
    "refusal",
    "register_sampler",
    "sampler_options",
]
