"""The optimisation loop every task shares: estimate, audit, step, record; stop on divergence or
instability.

Precision: `fp32`, or the estimate under `torch.autocast` in float16 with a gradient scaler
(`fp16-autocast`, as the SDO authors' scripts run on CUDA: the loss is scaled, the update
unscales, and a step whose gradient is not finite is skipped and counted, not a divergence) or
in bfloat16 (`bf16-autocast`, no scaler). Instability: a run whose held-out reward falls more
than `UNSTABLE_SPREADS` times its starting spread over samples (at least 1% of the reward's
size) below its start is stopped as `Unstable` (the update has left any sane range; like a
divergence, it gets no verdict)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from tqdm import tqdm

from sdo import conditioning
from sdo.estimators import Estimator, Problem, fidelity, make_estimator
from sdo.memory import check_budget, measured_once, predicted_saved_bytes, saved_bytes
from sdo.models.base import DiffusionModel
from sdo.samplers import Chain
from sdo.timing import timed

log = logging.getLogger(__name__)
Reward = Callable[[torch.Tensor], torch.Tensor]
Monitor = Callable[[torch.Tensor], dict]
PRECISIONS = {"fp32": None, "fp16-autocast": torch.float16, "bf16-autocast": torch.bfloat16}
UNSTABLE_SPREADS = 100
SPREAD_FLOOR = 0.01  # a spread of at least 1% of the reward's size: samples that all score alike set no scale


@dataclass(frozen=True)
class Audit:
    """The online fidelity audit: every `every` iterations the exact gradient (`full`,
    checkpointed per step when `checkpoint`) is computed on the same problem, untimed, and
    compared with the estimate (cosine, relative error, norm ratio). When the cosine falls below
    `fallback_below` the update uses the exact gradient instead, and its seconds and network
    evaluations count as that iteration's training cost. An estimator whose gradient is the exact
    one (`full`) is not audited: it would be compared with itself."""

    every: int
    fallback_below: float | None = None
    checkpoint: bool = False

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"audit_every must be >= 1, got {self.every}")
        if self.fallback_below is not None and not -1 <= self.fallback_below <= 1:
            raise ValueError(f"fallback_below is a cosine threshold in [-1, 1], got {self.fallback_below}")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """What every task shares: the chain (steps T, classifier-free guidance scale `cfg_scale`,
    the `sampler` (None: the model's own) and its `sampler_options`), the loop (iterations,
    batch, learning rate, None taking the task's own; Adam's betas), the seed of all its noise,
    how often the parameters are evaluated on held-out noise (`eval_every` iterations, 0: only at
    the start and the end), the online fidelity `audit` (None: off), the memory budget in bytes
    (None: none) a gradient must fit, how far an estimator's own sampler may start from the
    chain's (`start_tolerance`, None: any distance) and the arithmetic (`precision`). Every value
    is given: the experiment's spec states the defaults."""

    steps: int
    iters: int
    batch: int
    cfg_scale: float
    sampler: str | None
    sampler_options: dict
    lr: float | None
    seed: int
    eval_every: int
    betas: tuple[float, float]
    audit: Audit | None
    budget_bytes: int | None
    start_tolerance: float | None
    precision: str

    def chain(self, model: DiffusionModel) -> Chain:
        return model.make_chain(self.steps, self.cfg_scale, self.sampler, **self.sampler_options)


@dataclass
class Trace:
    """What an optimisation recorded: one row per iteration, one per audit, the peak bytes
    autograd held during one gradient (measured once, untimed, before the first iteration) and
    the updates a gradient scaler skipped."""

    rows: list[dict] = field(default_factory=list)
    audits: list[dict] = field(default_factory=list)
    saved_bytes: int | None = None
    skipped_steps: int = 0


@dataclass
class TaskResult:
    """The optimisation's trace, the images of the optimised parameters, the prompt of each
    image (None: the null prompt throughout), for comparison the images the starting
    parameters give from the same noise (`start`), the held-out evaluations, how far the
    estimator's own sampler starts from the chain's (`start_deviation`), and what was paid once
    before the first iteration (`warmup`: a partial chain's warm-up steps or inversion)."""

    trace: Trace
    samples: torch.Tensor
    prompts: list[str] | None = None
    start: torch.Tensor | None = None
    evaluations: list[dict] = field(default_factory=list)
    start_deviation: float = 0.0
    warmup: dict = field(default_factory=dict)


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


class Unstable(Diverged):
    """The held-out reward fell out of any sane range (see the module docstring)."""


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
    if not chain.deterministic:
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
            f"{estimator.name}'s own sampler starts {deviation:.3g} (relative distance) from the {chain.name} "
            f"sampler's samples at T={chain.steps}, past the tolerance {settings.start_tolerance}: "
            "it is no baseline here",
            deviation,
        )
    return deviation


def reward_monitor(reward: Reward) -> Monitor:
    """The default monitor: the mean reward of the evaluation images and its spread."""

    def monitor(images: torch.Tensor) -> dict:
        scores = reward(images).double()
        return {"reward": float(scores.mean()), "reward_std": float(scores.std()) if len(scores) > 1 else 0.0}

    return monitor


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

    def unstable(self) -> str | None:
        """Why the last evaluation is out of any sane range, or None."""
        if len(self.rows) < 2 or "reward" not in self.rows[0]:
            return None
        start, last = self.rows[0], self.rows[-1]
        spread = max(float(start.get("reward_std") or 0.0), SPREAD_FLOOR * max(abs(start["reward"]), 0.1))
        if math.isfinite(last["reward"]) and last["reward"] < start["reward"] - UNSTABLE_SPREADS * spread:
            return (
                f"the held-out reward fell from {start['reward']:.4g} to {last['reward']:.4g}, more than "
                f"{UNSTABLE_SPREADS} times its starting spread ({spread:.3g}) below its start"
            )
        return None


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
    precision: str = "fp32",
    on_iteration: Callable[[int], None] | None = None,
) -> Trace:
    """Minimise `loss` for `iters` iterations; `problem_at(i)` builds iteration i's problem and
    `params` are the tensors the optimizer holds (gradients arrive in order). `on_iteration(i)`
    is told each iteration before its gradient (a reward whose terms change along a run).
    `evaluate` is called with the updates done and the training cost so far. Only the estimate
    and the update are timed (and an audit's exact gradient when the update falls back to it).
    Before the first iteration, untimed: the memory `budget_bytes` is checked against a
    prediction from batches 1 and 2 (`sdo.memory.OverBudget`), and autograd's bytes are measured
    on a copy of the estimator. Raises `Diverged` with the trace and evaluations so far when the
    loss, the gradient or the updated parameters are not finite (a step the fp16 scaler skips is
    not), `Unstable` when the held-out reward leaves any sane range."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    trace, cost = Trace(), {"seconds": 0.0, "nfe": 0, "nfe_forward": 0, "nfe_backward": 0, "nfe_graph": 0, "losses": 0}
    exact = make_estimator("full", checkpoint=audit.checkpoint) if audit and not estimator.exact else None
    if on_iteration is not None:
        on_iteration(0)
    problem = problem_at(0)
    device = problem.latent.device
    if precision == "bf16-autocast" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(
            f"precision bf16-autocast is not supported on {torch.cuda.get_device_name(device)}; "
            "use fp16-autocast or fp32"
        )
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16-autocast" else None
    arithmetic = _autocast(device, PRECISIONS[precision])
    scaled = loss if scaler is None else (lambda x: scaler.scale(loss(x)))
    key = _graph_key(estimator, problem, precision)
    with arithmetic():
        if budget_bytes is not None:
            predicted = measured_once(("predicted", *key), partial(predicted_saved_bytes, estimator, problem, scaled))
            check_budget(estimator, problem, scaled, budget_bytes, predicted)
        trace.saved_bytes = measured_once(("saved", *key), partial(saved_bytes, estimator, problem, scaled))
    if evaluate is not None:
        evaluate(0, dict(cost))
    progress = tqdm(range(iters), desc=estimator.name, mininterval=2, leave=False)
    for i in progress:
        if i and on_iteration is not None:
            on_iteration(i)
        problem = problem if i == 0 else problem_at(i)
        scale = 1.0 if scaler is None else float(scaler.get_scale())

        seconds, estimate = timed(partial(_estimate, estimator, problem, scaled, arithmetic), device)
        grads, nfe = estimate.grads, (estimate.nfe_forward, estimate.nfe_backward, estimate.nfe_graph, 1)
        if exact is not None and i % audit.every == 0:
            audit_seconds, reference = timed(partial(exact, problem, scaled), device)
            row = {"iter": i, **fidelity(estimate.grads, reference.grads), "audit_seconds": audit_seconds}
            row["fallback"] = audit.fallback_below is not None and not row["cosine"] >= audit.fallback_below
            trace.audits.append(row)
            if row["fallback"]:
                grads, seconds = reference.grads, seconds + audit_seconds
                nfe = (
                    nfe[0] + reference.nfe_forward,
                    nfe[1] + reference.nfe_backward,
                    nfe[2] + reference.nfe_graph,
                    nfe[3] + 1,
                )
        value = estimate.loss / scale
        grad_norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads))) / scale  # before the scaler unscales
        finite = math.isfinite(value) and _all_finite(grads)
        skipped = scaler is not None and not finite
        update = partial(_update, params, grads, optimizer, after_step, scaler) if finite or skipped else _no_update
        step_seconds, _ = timed(update, device)
        seconds += step_seconds
        trace.skipped_steps += skipped
        trace.rows.append(
            {
                "iter": i,
                "loss": value,
                "reward": -value,
                "seconds": seconds,
                "nfe_forward": nfe[0],
                "nfe_backward": nfe[1],
                "nfe_graph": nfe[2],
                "losses": nfe[3],
                "grad_norm": grad_norm,
                "skipped": skipped,
            }
        )
        progress.set_postfix(reward=f"{-value:.3f}", refresh=False)
        log.debug("iteration %d: %s", i, trace.rows[-1])
        rows_so_far = evaluate.rows if evaluate is not None else []
        if not finite and not skipped:
            raise Diverged(f"non-finite loss or gradient at iteration {i} (loss {value})", trace, rows_so_far)
        if not _all_finite(params):
            raise Diverged(f"non-finite parameters after the update of iteration {i}", trace, rows_so_far)
        cost["seconds"] += seconds
        cost["nfe_forward"] += nfe[0]
        cost["nfe_backward"] += nfe[1]
        cost["nfe_graph"] += nfe[2]
        cost["losses"] += nfe[3]
        cost["nfe"] = cost["nfe_forward"] + cost["nfe_backward"]
        if evaluate is not None:
            evaluate(i + 1, dict(cost))
            reason = evaluate.unstable()
            if reason:
                raise Unstable(reason, trace, evaluate.rows)
    return trace


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """A context factory: autocast to `dtype` on the device (None: no autocast)."""
    import contextlib

    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def _graph_key(estimator: Estimator, problem: Problem, precision: str) -> tuple:
    """What autograd's bytes for one gradient depend on: the estimator and its options, the
    chain's steps and guidance, the network's kind and size, the parameters' and the state's
    shapes, dtype, device and precision (not the values, not the seed)."""
    chain = problem.chain
    net = chain.net
    return (
        repr(estimator),
        type(chain).__name__,
        tuple(chain.timesteps),
        chain.cfg_scale,
        type(net).__name__,
        sum(p.numel() for p in net.parameters()),
        problem.wrt,
        tuple(tuple(p.shape) for p in problem.params),
        tuple(problem.latent.shape),
        tuple(conditioning.primary(problem.cond).shape),
        str(problem.latent.dtype),
        str(problem.latent.device),
        precision,
    )


def _estimate(estimator, problem, loss, arithmetic):
    """One gradient of `estimator` under the run's precision (`arithmetic`: autocast or none)."""
    with arithmetic():
        return estimator(problem, loss)


def _no_update() -> None:
    """What a diverged iteration's optimiser step does: nothing."""


def _update(params, grads, optimizer, after_step, scaler=None) -> None:
    for p, g in zip(params, grads):
        p.grad = g.to(p.dtype)
    if scaler is None:
        optimizer.step()
    else:  # unscales, skips the step when the gradient is not finite, and adapts the scale
        scaler.step(optimizer)
        scaler.update()
    if after_step is not None:
        with torch.no_grad():
            after_step()
