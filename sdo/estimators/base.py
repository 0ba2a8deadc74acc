"""The estimator interface: a problem (chain, parameters, what to differentiate) in, an estimate out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar

import torch

from sdo.chain import DDIMChain, Meter

PARAMETER_KINDS = ("latent", "cond", "weights")
Loss = Callable[[torch.Tensor], torch.Tensor]


class NotApplicable(ValueError):
    """The estimator's rule cannot reach the requested parameter; record the pair, do not fail the sweep."""


@dataclass
class Problem:
    """What to differentiate: the initial latent, the conditioning, or the network weights
    (those of `chain.net` with requires_grad set, e.g. LoRA adapters)."""

    chain: DDIMChain
    latent: torch.Tensor
    cond: torch.Tensor
    wrt: str

    def __post_init__(self):
        if self.wrt not in PARAMETER_KINDS:
            raise ValueError(f"wrt must be one of {PARAMETER_KINDS}, got {self.wrt!r}")
        self.latent = self.latent.detach().requires_grad_(self.wrt == "latent")
        self.cond = self.cond.detach().requires_grad_(self.wrt == "cond")
        if self.wrt == "weights" and not self.params:
            raise ValueError("wrt='weights' but no parameter of chain.net requires grad")

    @property
    def params(self) -> list[torch.Tensor]:
        if self.wrt == "latent":
            return [self.latent]
        if self.wrt == "cond":
            return [self.cond]
        return [p for p in self.chain.net.parameters() if p.requires_grad]


@dataclass
class Estimate:
    """The sample z_T, the loss on it, one gradient per parameter, and what they cost:
    guided-denoiser calls forward and backward and the steps that ran with a graph (autograd's
    bytes are measured apart, untimed: `sdo.memory.saved_bytes`)."""

    sample: torch.Tensor
    loss: float
    grads: list[torch.Tensor]
    nfe_forward: int
    nfe_backward: int
    graph_steps: list[int] = field(default_factory=list)


class Estimator:
    """Subclasses implement `gradient(problem, loss) -> (sample, loss, grads)`; calling the
    estimator runs it and counts its network evaluations (integer counters and one identity
    autograd node per graph step: microseconds against a network call)."""

    name: ClassVar[str]

    def gradient(self, problem: Problem, loss: Loss) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError

    def sample(self, chain: DDIMChain, latent: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The sample this estimator's rule differentiates, without a graph: the chain's (DOODL
        overrides it with its own sampler). Evaluations use it, so every method is judged on
        the samples it optimised."""
        return chain.trajectory(latent, cond)[0]

    def depth(self, estimate: Estimate, steps: int) -> int:
        """Network evaluations that must run one after another (all of them, unless a rule
        makes some independent)."""
        return estimate.nfe_forward + estimate.nfe_backward

    def __call__(self, problem: Problem, loss: Loss) -> Estimate:
        meter = problem.chain.meter = Meter()
        sample, value, grads = self.gradient(problem, loss)
        return Estimate(
            sample=sample.detach(),
            loss=float(value.detach()),
            grads=[g.detach() for g in grads],
            nfe_forward=meter.forward,
            nfe_backward=meter.backward,
            graph_steps=sorted(set(meter.graph_steps)),
        )


def backprop(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Gradients of `loss` by `loss.backward()` (which reentrant checkpointing requires),
    leaving every `.grad` as it was."""
    before = [p.grad for p in params]
    for p in params:
        p.grad = None
    loss.backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    for p, g in zip(params, before):
        p.grad = g
    return grads
