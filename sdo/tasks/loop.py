"""The optimisation loop every task shares: estimate, step, record."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from sdo.chain import DDIMChain
from sdo.estimators import Estimator, Problem

log = logging.getLogger(__name__)
Reward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Settings:
    """What every task shares: the chain (steps, guidance, eta), the loop (iterations, batch,
    learning rate; None takes the task's own) and the seed of all its noise."""

    steps: int
    iters: int
    batch: int = 8
    guidance: float = 1.0
    eta: float = 0.0
    lr: float | None = None
    seed: int = 0

    def chain(self, net) -> DDIMChain:
        return make_chain(net, self.steps, self.guidance, self.eta)


@dataclass
class TaskResult:
    """One row per iteration, the samples of the optimised parameters, the digit each sample
    was prompted with (None: the null prompt), and for comparison the samples the starting
    parameters give from the same noise."""

    iterations: list[dict]
    samples: torch.Tensor
    prompts: torch.Tensor | None = None
    baseline: torch.Tensor | None = None


def make_chain(net, steps: int, guidance: float = 1.0, eta: float = 0.0) -> DDIMChain:
    """DDIM over `net` (an embedded-style denoiser with `config['scheduler']` and `null`)."""
    null = net.null(1).detach().clone() if guidance != 1.0 else None
    return DDIMChain(net, steps, net.config["scheduler"], guidance=guidance, null_cond=null, eta=eta)


def latent_batch(net, batch: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of standard normal latents shaped for `net`, on its device and in its dtype."""
    param = next(net.parameters())
    size, channels = net.config["unet"]["sample_size"], net.config["unet"]["in_channels"]
    return torch.randn(batch, channels, size, size, generator=generator, dtype=param.dtype).to(param.device)


def optimise(
    estimator: Estimator,
    problem_at: Callable[[int], Problem],
    params: list[torch.Tensor],
    reward: Reward,
    optimizer: torch.optim.Optimizer,
    iters: int,
    after_step: Callable[[], None] | None = None,
) -> list[dict]:
    """Maximise the mean reward for `iters` iterations; `problem_at(i)` builds iteration i's
    problem and `params` are the tensors the optimizer holds (gradients arrive in order)."""
    rows = []
    progress = tqdm(range(iters), desc=estimator.name, mininterval=2, leave=False)
    for i in progress:
        problem = problem_at(i)
        start = time.perf_counter()
        estimate = estimator(problem, lambda x: -reward(x).mean())
        for p, g in zip(params, estimate.grads):
            p.grad = g.to(p.dtype)
        optimizer.step()
        if after_step is not None:
            with torch.no_grad():
                after_step()
        seconds = time.perf_counter() - start
        rows.append(
            {
                "iter": i,
                "loss": estimate.loss,
                "reward": -estimate.loss,
                "seconds": seconds,
                "nfe_forward": estimate.nfe_forward,
                "nfe_backward": estimate.nfe_backward,
                "saved_bytes": estimate.saved_bytes,
                "grad_norm": float(torch.sqrt(sum((g.double() ** 2).sum() for g in estimate.grads))),
            }
        )
        progress.set_postfix(reward=f"{-estimate.loss:.3f}", refresh=False)
        log.debug("iteration %d: %s", i, rows[-1])
    return rows
