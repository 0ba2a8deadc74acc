"""What an experiment needs besides the estimator: a model, a reward on its images, what to
track on held-out noise during a run, and the final metrics. One setup per kind of model,
chosen by the spec's `model` field (`embedded`, `sd:<directory or model id>`, or
`sd-random:<version>`: random weights, for cost only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sdo.models.base import DiffusionModel


@dataclass
class Setup:
    model: DiffusionModel
    reward: Callable[[torch.Tensor], torch.Tensor]
    monitor: Callable[[torch.Tensor], dict]
    summarize: Callable[[torch.Tensor, list[str] | None], dict]


def probe_images(model: DiffusionModel, count: int = 4, seed: int = 0) -> torch.Tensor:
    """Images to test a reward's gradient on: a short sampling run of the model, decoded, plus
    a little noise so no pixel sits exactly on a clamp."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        state, _ = model.make_chain(10).trajectory(model.latent_batch(count, generator), model.null_cond())
        images = model.decode(state)
    return images + 0.05 * torch.randn(images.shape, generator=generator).to(images)


def setup_for(spec, device: torch.device) -> Setup:
    """The setup the spec's `model` names."""
    kind = spec.model.split(":", 1)[0]
    if kind == "embedded":
        from evals.embedded import embedded_setup

        return embedded_setup(spec, device)
    if kind in ("sd", "sd-random"):
        from evals.sd_setup import sd_setup

        return sd_setup(spec, device)
    raise ValueError(f"unknown model {spec.model!r}: use 'embedded', 'sd:<directory or model id>' or 'sd-random:<version>'")
