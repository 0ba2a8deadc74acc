"""The optimisation loop every task shares: estimate, audit, step, record; stop on divergence."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from sdo.estimators import Estimator, Problem, fidelity, make_estimator
from sdo.memory import check_budget, saved_bytes
from sdo.models.base import DiffusionModel
from sdo.samplers import Chain
from sdo.timing import timed

log = logging.getLogger(__name__)
Reward = Callable[[torch.Tensor], torch.Tensor]
Monitor = Callable[[torch.Tensor], dict]


@dataclass(frozen=True)
class Audit:
    """The online fidelity audit: every `every` iterations the exact gradient (`full`,
    checkpointed per step when `checkpoint`) is computed on the same problem, untimed, and
    compared with the estimate (cosine, relative error, norm ratio). When the cosine falls below
    `fallback_below` the update uses the exact gradient instead, and its seconds and network
    evaluations count as that iteration's training cost."""

    every: int
    fallback_below: float | None = None
    checkpoint: bool = False

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"audit_every must be >= 1, got {self.every}")
        if self.fallback_below is not None and not -1 <= self.fallback_below <= 1:
            raise ValueError(f"fallback_below is a cosine threshold in [-1, 1], got {self.fallback_below}")


@dataclass(frozen=True)
class Settings:
    """What every task shares: the chain (steps, classifier-free guidance scale `cfg_scale`,
    eta), the loop (iterations, batch, learning rate, None taking the task's own; Adam's betas),
    the seed of all its noise, how often the parameters are evaluated on held-out noise
    (`eval_every` iterations, 0: only at the start and the end), the online fidelity `audit`,
    the memory budget in bytes (None: none) a gradient must fit, and how far an estimator's
    own sampler may start from the chain's (`start_tolerance`, None: any distance)."""

    steps: int
    iters: int
    batch: int = 8
    cfg_scale: float = 1.0
    eta: float = 0.0
    lr: float | None = None
    seed: int = 0
    eval_every: int = 0
    betas: tuple[float, float] = (0.9, 0.999)
    audit: Audit | None = None
    budget_bytes: int | None = None
    start_tolerance: float | None = None

    def chain(self, model: DiffusionModel) -> Chain:
        return model.make_chain(self.steps, self.cfg_scale, self.eta)


@dataclass
class Trace:
    """What an optimisation recorded: one row per iteration, one per audit, and the peak bytes
    autograd held during one gradient (measured once, untimed, before the first iteration)."""

    rows: list[dict] = field(default_factory=list)
    audits: list[dict] = field(default_factory=list)
    saved_bytes: int | None = None


@dataclass
class TaskResult:
    """The optimisation's trace, the images of the optimised parameters, the prompt of each
    image (None: the null prompt throughout), for comparison the images the starting
    parameters give from the same noise, the held-out evaluations, and how far the estimator's
    own sampler starts from the chain's (`start_deviation`)."""

    trace: Trace
    samples: torch.Tensor
    prompts: list[str] | None = None
    baseline: torch.Tensor | None = None
    evaluations: list[dict] = field(default_factory=list)
    start_deviation: float = 0.0


class InvalidStart(RuntimeError):
    """The estimator's own sampler does not start where the chain does: it would optimise other
    samples than the base sampler's, so it is no baseline; the run stops before optimising."""

    def __init__(self, reason: str, deviation: float):
        super().__init__(reason)
        self.deviation = deviation


class Diverged(RuntimeError):
    """The loss, a gradient or a parameter became NaN or infinite; `trace` holds the rows up to
    and including the iteration where it happened, `evaluations` the held-out ones made before."""

    def __init__(self, reason: str, trace: Trace, evaluations: list[dict]):
        super().__init__(reason)
        self.trace, self.evaluations = trace, evaluations


def image_loss(model: DiffusionModel, reward: Reward) -> Callable[[torch.Tensor], torch.Tensor]:
    """Minus the mean reward of the decoded states: the decode stays inside the gradient path."""
    return lambda state: -reward(model.decode(state)).mean()


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def held_out(model: DiffusionModel, settings: Settings, count: int, offset: int) -> tuple[torch.Tensor, Chain]:
    """`count` initial latents never used in training (seed + `offset`) and a chain over the
    model's network whose stochastic noise, if any, is drawn for them."""
    generator = torch.Generator().manual_seed(settings.seed + offset)
    latent = model.latent_batch(count, generator)
    chain = settings.chain(model)
    if settings.eta:
        chain.fix_noise(latent, generator)
    return latent, chain


def start_deviation(estimator: Estimator, chain: Chain, latent: torch.Tensor, cond) -> float:
    """Mean over samples of |x - x_chain| / |x_chain| between the sample the estimator's own
    sampler draws (DOODL's EDICT) and the chain's, from the same latents and the starting
    parameters: 0 for every estimator that samples with the chain. A baseline that does not
    start where the base sampler does is not comparing like with like."""
    if type(estimator).sample is Estimator.sample:
        return 0.0
    with torch.no_grad():
        own, base = estimator.sample(chain, latent, cond), chain.trajectory(latent, cond)[0]
    return float(((own - base).flatten(1).norm(dim=1) / base.flatten(1).norm(dim=1)).mean())


def checked_start(estimator: Estimator, chain: Chain, latent: torch.Tensor, cond, settings: Settings) -> float:
    """The start deviation (`start_deviation`); InvalidStart past `settings.start_tolerance`."""
    deviation = start_deviation(estimator, chain, latent, cond)
    if settings.start_tolerance is not None and deviation > settings.start_tolerance:
        raise InvalidStart(
            f"{estimator.name}'s own sampler starts {deviation:.3g} (relative distance) from the {chain.name} sampler's "
            f"samples at T={chain.steps}, past the tolerance {settings.start_tolerance}: it is no baseline here", deviation
        )
    return deviation


def reward_monitor(reward: Reward) -> Monitor:
    """The default monitor: the mean reward of the evaluation images."""
    return lambda images: {"reward": float(reward(images).mean())}


class Evaluator:
    """Scores the current parameters on fixed held-out noise: `images()` samples them without
    a graph, `monitor` turns the images into numbers. Calls are not timed as training."""

    def __init__(self, images: Callable[[], torch.Tensor], monitor: Monitor, every: int, iters: int):
        self.images, self.monitor, self.every, self.iters = images, monitor, every, iters
        self.rows: list[dict] = []

    def __call__(self, done: int, cost: dict) -> None:
        """Evaluate after `done` updates if it is the start, the end, or every `every`-th;
        `cost` is the training cost so far (seconds and network evaluations)."""
        if done in (0, self.iters) or (self.every and done % self.every == 0):
            with torch.no_grad():
                scores = self.monitor(self.images())
            self.rows.append({"iter": done, **cost, **scores})


def optimise(
    estimator: Estimator,
    problem_at: Callable[[int], Problem],
    params: list[torch.Tensor],
    loss: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    iters: int,
    after_step: Callable[[], None] | None = None,
    evaluate: Evaluator | None = None,
    audit: Audit | None = None,
    budget_bytes: int | None = None,
) -> Trace:
    """Minimise `loss` for `iters` iterations; `problem_at(i)` builds iteration i's problem and
    `params` are the tensors the optimizer holds (gradients arrive in order). `evaluate` is
    called with the updates done and the training cost so far. Only the estimate and the update
    are timed (and an audit's exact gradient when the update falls back to it). Before the first
    iteration, untimed: the memory `budget_bytes` is checked against a prediction from batches 1
    and 2 (`sdo.memory.OverBudget`), and autograd's bytes are measured on a copy of the
    estimator. Raises `Diverged` with the trace and evaluations so far when the loss, the
    gradient or the updated parameters are not finite."""
    trace, cost = Trace(), {"seconds": 0.0, "nfe": 0, "nfe_forward": 0, "nfe_backward": 0}
    exact = make_estimator("full", checkpoint=audit.checkpoint) if audit else None
    problem = problem_at(0)
    if budget_bytes is not None:
        check_budget(estimator, problem, loss, budget_bytes)
    trace.saved_bytes = saved_bytes(estimator, problem, loss)
    if evaluate is not None:
        evaluate(0, dict(cost))
    progress = tqdm(range(iters), desc=estimator.name, mininterval=2, leave=False)
    for i in progress:
        problem = problem if i == 0 else problem_at(i)
        device = problem.latent.device
        seconds, estimate = timed(lambda: estimator(problem, loss), device)
        grads, nfe = estimate.grads, (estimate.nfe_forward, estimate.nfe_backward)
        if exact is not None and i % audit.every == 0:
            audit_seconds, reference = timed(lambda: exact(problem, loss), device)
            row = {"iter": i, **fidelity(estimate.grads, reference.grads), "audit_seconds": audit_seconds}
            row["fallback"] = audit.fallback_below is not None and not row["cosine"] >= audit.fallback_below
            trace.audits.append(row)
            if row["fallback"]:
                grads, seconds = reference.grads, seconds + audit_seconds
                nfe = (nfe[0] + reference.nfe_forward, nfe[1] + reference.nfe_backward)
        finite_gradient = math.isfinite(estimate.loss) and _all_finite(grads)
        step_seconds, _ = timed(lambda: _update(params, grads, optimizer, after_step) if finite_gradient else None, device)
        seconds += step_seconds
        trace.rows.append({
            "iter": i,
            "loss": estimate.loss,
            "reward": -estimate.loss,
            "seconds": seconds,
            "nfe_forward": nfe[0],
            "nfe_backward": nfe[1],
            "grad_norm": float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))),
        })
        progress.set_postfix(reward=f"{-estimate.loss:.3f}", refresh=False)
        log.debug("iteration %d: %s", i, trace.rows[-1])
        rows_so_far = evaluate.rows if evaluate is not None else []
        if not finite_gradient:
            raise Diverged(f"non-finite loss or gradient at iteration {i} (loss {estimate.loss})", trace, rows_so_far)
        if not _all_finite(params):
            raise Diverged(f"non-finite parameters after the update of iteration {i}", trace, rows_so_far)
        cost["seconds"] += seconds
        cost["nfe_forward"] += nfe[0]
        cost["nfe_backward"] += nfe[1]
        cost["nfe"] = cost["nfe_forward"] + cost["nfe_backward"]
        if evaluate is not None:
            evaluate(i + 1, dict(cost))
    return trace


def _update(params, grads, optimizer, after_step) -> None:
    for p, g in zip(params, grads):
        p.grad = g.to(p.dtype)
    optimizer.step()
    if after_step is not None:
        with torch.no_grad():
            after_step()
