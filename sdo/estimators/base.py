"""The estimator interface: a problem (chain, parameters, what to differentiate) in, an estimate out."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from sdo import conditioning
from sdo.conditioning import Cond
from sdo.samplers import Chain, Meter, refusal

PARAMETER_KINDS = ("latent", "cond", "weights")
Loss = Callable[[torch.Tensor], torch.Tensor]


class NotApplicable(ValueError):
    """The estimator's rule cannot reach the requested parameter or does not hold for the
    chain's sampler; record the pair, do not fail the sweep."""


@dataclass
class Problem:
    """What to differentiate: the initial latent, the conditioning's prompt embeddings, or the
    network weights (those of `chain.net` with requires_grad set, e.g. LoRA adapters)."""

    chain: Chain
    latent: torch.Tensor
    cond: Cond
    wrt: str

    def __post_init__(self):
        if self.wrt not in PARAMETER_KINDS:
            raise ValueError(f"wrt must be one of {PARAMETER_KINDS}, got {self.wrt!r}")
        self.latent = self.latent.detach().requires_grad_(self.wrt == "latent")
        self.cond = conditioning.detach(self.cond, differentiate=self.wrt == "cond")
        if self.wrt == "weights" and not self.params:
            raise ValueError("wrt='weights' but no parameter of chain.net requires grad")

    @property
    def params(self) -> list[torch.Tensor]:
        if self.wrt == "latent":
            return [self.latent]
        if self.wrt == "cond":
            return [conditioning.primary(self.cond)]
        return [p for p in self.chain.net.parameters() if p.requires_grad]

    def subset(self, batch: int) -> Problem:
        """The problem of the first `batch` samples (the chain's drawn noise sliced alike)."""
        chain = copy.copy(self.chain)
        if chain.noise is not None:
            chain.noise = [noise[:batch] for noise in chain.noise]
        chain.past = tuple((z[:batch], out[:batch]) for z, out in chain.past)
        return Problem(chain, self.latent[:batch], conditioning.select(self.cond, slice(0, batch)), self.wrt)

    def input_at(self, k: int, state: torch.Tensor) -> torch.Tensor:
        """The state step k's network call sees when only the parameter keeps a graph: z_0 from
        the latent, with its graph, at step 0 when the latent is differentiated, else the state
        held fixed."""
        return self.chain.start(self.latent) if self.wrt == "latent" and k == 0 else state


@dataclass
class Estimate:
    """The sample z_T, the loss on it, one gradient per parameter, and what they cost:
    network calls forward (`nfe_graph` of them with a graph) and backward, and the steps that
    ran with a graph (autograd's bytes are measured apart, untimed: `sdo.memory.saved_bytes`)."""

    sample: torch.Tensor
    loss: float
    grads: list[torch.Tensor]
    nfe_forward: int
    nfe_backward: int
    graph_steps: list[int] = field(default_factory=list)
    nfe_graph: int = 0  # the forward calls that kept a graph (part of nfe_forward)


class Estimator:
    """Subclasses implement `gradient(problem, loss) -> (sample, loss, grads)` and declare what
    their rule needs of the sampler (`needs`: names in `sdo.samplers.base.NEEDS`, such as
    "deterministic" or "single_step"); calling the estimator checks the sampler's capabilities,
    runs the rule and counts its network evaluations."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()
    caveat: ClassVar[str] = ""  # what a reader of its curves must know (figures print it)
    exact: ClassVar[bool] = False  # its gradient is the exact one (an audit would compare it with itself)

    def gradient(self, problem: Problem, loss: Loss) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError

    def sample(self, chain: Chain, latent: torch.Tensor, cond: Cond) -> torch.Tensor:
        """The sample this estimator's rule differentiates, without a graph: the chain's (DOODL
        overrides it with its own sampler). Evaluations use it, so every method is judged on
        the samples it optimised."""
        return chain.trajectory(latent, cond)[0]

    def depth(self, estimate: Estimate, steps: int) -> int:
        """Network evaluations that must run one after another (all of them, unless a rule
        makes some independent)."""
        return estimate.nfe_forward + estimate.nfe_backward

    def __call__(self, problem: Problem, loss: Loss) -> Estimate:
        reason = refusal(self.name, self.needs, problem.chain.name, problem.chain.capabilities)
        if reason:
            raise NotApplicable(reason)
        meter = problem.chain.meter = Meter()
        sample, value, grads = self.gradient(problem, loss)
        return Estimate(
            sample=sample.detach(),
            loss=float(value.detach()),
            grads=[g.detach() for g in grads],
            nfe_forward=meter.forward,
            nfe_backward=meter.backward,
            graph_steps=sorted(set(meter.graph_steps)),
            nfe_graph=len(meter.graph_steps),
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


def accumulate(totals: list[torch.Tensor], parts, scale: float = 1.0) -> None:
    """totals += scale * parts, skipping parts autograd left out (None)."""
    for total, part in zip(totals, parts):
        if part is not None:
            total += scale * part


def fidelity(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> dict[str, float]:
    """How a gradient tracks a reference one, over all parameters flattened, in float64: the
    cosine, the relative error |g - r| / |r| and the norm ratio |g| / |r|."""
    g = torch.cat([x.detach().double().flatten().cpu() for x in grads])
    r = torch.cat([x.detach().double().flatten().cpu() for x in reference])
    norm = float(r.norm())
    return {
        "cosine": float(torch.nn.functional.cosine_similarity(g, r, dim=0)),
        "rel_error": float((g - r).norm()) / norm if norm else float("inf"),
        "norm_ratio": float(g.norm()) / norm if norm else float("inf"),
    }
