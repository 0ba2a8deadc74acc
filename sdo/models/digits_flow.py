"""The embedded flow-matching model: a rectified-flow digits network (velocity prediction,
sampled with flow matching's Euler step) behind the model interface, the same size class as
the DDIM digits model. Source: `embedded-flow`; option `weights` as for `embedded`."""

from __future__ import annotations

from typing import ClassVar

from sdo.models.digits import EmbeddedDigits
from sdo.models.registry import register_model


@register_model
class EmbeddedFlowDigits(EmbeddedDigits):
    """16x16 pixel rectified flow over handwritten digits: z_sigma = (1 - sigma) x_0 + sigma
    noise, the network predicts v = noise - x_0 at timestep 1000 sigma; prompts as the DDIM
    model's."""

    prefix: ClassVar[str] = "embedded-flow"
    kind: ClassVar[str] = "flow_denoiser"
    weight_files: ClassVar[tuple[str, ...]] = ("flow_denoiser", "classifier")
    sampler: ClassVar[str] = "flow_euler"
    process: ClassVar[str] = "flow"
