"""The optimisation loop every task shares: estimate, step, record; stop on divergence."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from sdo.chain import DDIMChain
from sdo.estimators import Estimator, Problem
from sdo.memory import saved_bytes
from sdo.models.base import DiffusionModel

log = logging.getLogger(__name__)
Reward = Callable[[torch.Tensor], torch.Tensor]


Monitor = Callable[[torch.Tensor], dict]


@dataclass(frozen=True)
class Settings:
    """What every task shares: the chain (steps, guidance, eta), the loop (iterations, batch,
    learning rate; None takes the task's own; Adam's betas), the seed of all its noise, and how often the
    parameters are evaluated on held-out noise (`eval_every` iterations, 0: only at the start
    and the end; `monitor_samples` images each time)."""

    steps: int
    iters: int
    batch: int = 8
    guidance: float = 1.0
    eta: float = 0.0
    lr: float | None = None
    seed: int = 0
    eval_every: int = 0
    monitor_samples: int = 32
    betas: tuple[float, float] = (0.9, 0.999)

    def chain(self, model: DiffusionModel) -> DDIMChain:
        return model.make_chain(self.steps, self.guidance, self.eta)


@dataclass
class Trace:
    """What an optimisation recorded: one row per iteration, and the peak bytes autograd held
    during one gradient (measured once, untimed, on the first iteration's problem)."""

    rows: list[dict]
    saved_bytes: int | None = None


@dataclass
class TaskResult:
    """The optimisation's trace, the images of the optimised parameters, the prompt of each
    image (None: the null prompt throughout), and for comparison the images the starting
    parameters give from the same noise."""

    trace: Trace
    samples: torch.Tensor
    prompts: list[str] | None = None
    baseline: torch.Tensor | None = None
    evaluations: list[dict] = field(default_factory=list)


class Diverged(RuntimeError):
    """The loss, a gradient or a parameter became NaN or infinite; `iterations` holds the rows
    recorded up to and including the iteration where it happened."""

    def __init__(self, reason: str, iterations: list[dict]):
        super().__init__(reason)
        self.iterations = iterations


def image_loss(model: DiffusionModel, reward: Reward) -> Callable[[torch.Tensor], torch.Tensor]:
    """Minus the mean reward of the decoded states: the decode stays inside the gradient path."""
    return lambda state: -reward(model.decode(state)).mean()


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def held_out(model: DiffusionModel, settings: Settings, count: int, offset: int) -> tuple[torch.Tensor, DDIMChain]:
    """`count` initial latents never used in training (seed + `offset`) and a chain over the
    model's network whose stochastic-DDIM noise, if any, is drawn for them."""
    generator = torch.Generator().manual_seed(settings.seed + offset)
    latent = model.latent_batch(count, generator)
    chain = settings.chain(model)
    if settings.eta:
        chain.fix_noise(latent, generator)
    return latent, chain


def reward_monitor(reward: Reward) -> Monitor:
    """The default monitor: the mean reward of the evaluation images."""
    return lambda images: {"reward": float(reward(images).mean())}


class Evaluator:
    """Scores the current parameters on fixed held-out noise: `images()` samples them without
    a graph, `monitor` turns the images into numbers. Calls are not timed as training."""

    def __init__(self, images: Callable[[], torch.Tensor], monitor: Monitor, every: int, iters: int):
        self.images, self.monitor, self.every, self.iters = images, monitor, every, iters
        self.rows: list[dict] = []

    def __call__(self, done: int, seconds: float, nfe: int) -> None:
        """Evaluate after `done` updates if it is the start, the end, or every `every`-th."""
        if done in (0, self.iters) or (self.every and done % self.every == 0):
            with torch.no_grad():
                scores = self.monitor(self.images())
            self.rows.append({"iter": done, "seconds": seconds, "nfe": nfe, **scores})


def optimise(
    estimator: Estimator,
    problem_at: Callable[[int], Problem],
    params: list[torch.Tensor],
    loss: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    iters: int,
    after_step: Callable[[], None] | None = None,
    evaluate: Evaluator | None = None,
) -> Trace:
    """Minimise `loss` for `iters` iterations; `problem_at(i)` builds iteration i's problem and
    `params` are the tensors the optimizer holds (gradients arrive in order). `evaluate` is
    called with the updates done, the training seconds and the network evaluations so far.
    Only the estimate and the update are timed; autograd's bytes are measured before the first
    one on a copy of the estimator, outside the timer. Raises `Diverged` with the rows so far
    when the loss, the gradient or the updated parameters are not finite."""
    trace, seconds_so_far, nfe_so_far = Trace([]), 0.0, 0
    rows = trace.rows
    if evaluate is not None:
        evaluate(0, 0.0, 0)
    progress = tqdm(range(iters), desc=estimator.name, mininterval=2, leave=False)
    for i in progress:
        problem = problem_at(i)
        if i == 0:
            trace.saved_bytes = saved_bytes(estimator, problem, loss)
        start = time.perf_counter()
        estimate = estimator(problem, loss)
        for p, g in zip(params, estimate.grads):
            p.grad = g.to(p.dtype)
        finite_gradient = math.isfinite(estimate.loss) and _all_finite(estimate.grads)
        if finite_gradient:
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
                "grad_norm": float(torch.sqrt(sum((g.double() ** 2).sum() for g in estimate.grads))),
            }
        )
        progress.set_postfix(reward=f"{-estimate.loss:.3f}", refresh=False)
        log.debug("iteration %d: %s", i, rows[-1])
        if not finite_gradient:
            raise Diverged(f"non-finite loss or gradient at iteration {i} (loss {estimate.loss})", rows)
        if not _all_finite(params):
            raise Diverged(f"non-finite parameters after the update of iteration {i}", rows)
        seconds_so_far += seconds
        nfe_so_far += estimate.nfe_forward + estimate.nfe_backward
        if evaluate is not None:
            evaluate(i + 1, seconds_so_far, nfe_so_far)
    return trace
