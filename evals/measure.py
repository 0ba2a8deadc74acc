"""Fidelity and cost of one estimator on one problem, measured side by side with a plain
sampling pass in the same process, and the cost of a backward pass and of the loss against a
forward pass (what turns network evaluations into a load-free cost)."""

from __future__ import annotations

import statistics
from functools import partial

import torch

from evals.plain_loop import plain_gradient
from sdo.estimators import Estimator, NotApplicable, Problem, fidelity
from sdo.memory import peak_bytes, reset_peak, saved_bytes, used_bytes
from sdo.models.base import DiffusionModel
from sdo.timing import timed


def bench_problem(
    model: DiffusionModel,
    reward,
    wrt: str,
    steps: int,
    batch: int,
    seed: int,
    cfg_scale: float = 1.0,
    lora_rank: int = 0,
    sampler: str | None = None,
    sampler_options: dict | None = None,
):
    """The benchmark's problem: latents from `seed`, prompts cycling through the model's, loss
    minus the mean reward of the decoded samples; the weights are the trainable ones of
    `model.with_lora(lora_rank)` (rank 0: every weight of the noise network); the chain is
    `sampler` (None: the model's) with its options, its noise (if any) drawn from `seed`."""
    if wrt == "cond" and not model.conditional:
        raise NotApplicable(f"{model.options.get('model')!r} is unconditional: it has no conditioning to differentiate")
    if wrt == "weights":
        model = model.with_lora(lora_rank)
    generator = torch.Generator().manual_seed(seed)
    latent = model.latent_batch(batch, generator)
    prompts = [model.prompts[i % len(model.prompts)] for i in range(batch)] if model.prompts else [""] * batch
    chain = model.make_chain(steps, cfg_scale, sampler, **(sampler_options or {}))
    if not chain.deterministic:
        chain.fix_noise(latent, generator)
    problem = Problem(chain, latent, model.encode(prompts), wrt)
    return problem, lambda x: -reward(model.decode(x)).mean()


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.detach().double().flatten().cpu() for g in grads])


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return q1, median, q3


def sampling_seconds(problem: Problem) -> float:
    """Seconds of one no-graph sampling pass of the problem's chain."""
    return timed(lambda: problem.chain.trajectory(problem.latent, problem.cond), problem.latent.device)[0]


def measure(
    estimator: Estimator,
    problem: Problem,
    loss,
    reference: list[torch.Tensor] | None,
    rounds: int = 5,
    warmup: bool = True,
    sampled: float | None = None,
    plain: str | None = None,
) -> dict:
    """After one warm-up call (`warmup=False`: the caller warmed the problem up), `rounds`
    rounds each timing a no-graph sampling pass, then (given `plain`, 'full' or 'shortcut') the
    plain diffusers loop of that rule (`evals.plain_loop`), then the gradient, interleaved so
    all see the same machine state. Seconds are medians with their interquartile range;
    `seconds_vs_sampling` and `seconds_vs_plain` are medians of the per-round ratios (what
    holds still across reruns). Given `sampled`, the seconds of a sampling pass timed once for
    many rows, the rounds time the gradient only. Also network evaluations, sequential depth,
    peak memory (of the estimator's calls alone) and what of it the gradient added to what was
    resident before (`working_bytes`: comparable between rows whose resident weights differ,
    such as a LoRA copy of the network), gradient norm, cosine and relative error against `reference`, and autograd's
    bytes, counted on a call of their own after the timed rounds."""
    device = problem.latent.device
    if warmup:
        estimator(problem, loss)
        if plain:
            plain_gradient(plain, problem, loss)
    reset_peak(device)
    resident = used_bytes(device)
    sampling, gradient, plain_seconds, estimate = [], [], [], None
    for _ in range(rounds):
        sampling.append(sampling_seconds(problem) if sampled is None else sampled)
        if plain:
            plain_seconds.append(timed(lambda: plain_gradient(plain, problem, loss), device)[0])
        seconds, estimate = timed(lambda: estimator(problem, loss), device)
        gradient.append(seconds)
    if plain:  # the plain loop's own peak is not the estimator's: one untimed call alone
        estimate = None
        reset_peak(device)
        estimate = estimator(problem, loss)
    peak = peak_bytes(device)
    grad = _flat(estimate.grads)
    q1, median, q3 = _quartiles(gradient)
    r1, ratio, r3 = _quartiles([g / s for g, s in zip(gradient, sampling)])
    row = {
        "seconds": median,
        "seconds_iqr": q3 - q1,
        "sample_seconds": statistics.median(sampling),
        "seconds_vs_sampling": ratio,
        "seconds_vs_sampling_iqr": r3 - r1,
        "rounds": rounds,
        "nfe_forward": estimate.nfe_forward,
        "nfe_backward": estimate.nfe_backward,
        "depth": estimator.depth(estimate, problem.chain.steps),
        "saved_bytes": saved_bytes(estimator, problem, loss),
        "peak_bytes": peak,
        "resident_bytes": resident,
        "working_bytes": max(peak - resident, 0),
        "grad_norm": float(grad.norm()),
        "loss": estimate.loss,
    }
    if plain:
        p1, versus, p3 = _quartiles([g / p for g, p in zip(gradient, plain_seconds)])
        plain_grad = _flat(plain_gradient(plain, problem, loss))
        row.update(
            plain=plain,
            plain_seconds=statistics.median(plain_seconds),
            seconds_vs_plain=versus,
            seconds_vs_plain_iqr=p3 - p1,
            plain_rel_error=float((grad - plain_grad).norm() / plain_grad.norm()),
        )
    if reference is not None:
        row.update(fidelity(estimate.grads, reference))
    return row


def backward_cost(problem: Problem, loss, rounds: int = 15, calls: int = 8) -> dict:
    """The cost of one backward pass of the (guided) network and of the loss's own work against
    one forward pass, at the middle step's state. Each round times, `calls` times over and
    interleaved, a forward without a graph (t_f), a forward with a graph to the problem's
    parameters (t_g), alone the backward of that graph (t_b), and the loss on the sample
    (decode and reward) forward and backward to the sample (t_l). `backward_vs_forward` is the
    median over rounds of t_b / t_f: the weight w that makes network evaluations a cost machine
    load cannot move, nfe_forward + w nfe_backward, in forward passes (`graph_vs_forward` says
    how much more a forward with a graph costs, `loss_vs_forward` what one loss evaluation with
    its backward costs, in the same unit). `backward_vs_forward_low` and `_high` are the
    distribution-free 95% interval of that median (order statistics of the rounds), which the
    verdicts carry into their intervals. Cost: rounds x calls x (two forwards, one backward, one
    loss with its backward)."""
    from scipy import stats

    chain, device = problem.chain, problem.latent.device
    k = chain.steps // 2
    with torch.no_grad():
        sample, kept = chain.trajectory(problem.latent, problem.cond, keep=[k])
        state = kept[k]
    z = state.detach().requires_grad_() if problem.wrt == "latent" else state
    params = [z] if problem.wrt == "latent" else problem.params
    sample = sample.detach().requires_grad_()

    def forward():
        with torch.no_grad():
            return chain.predict(state, k, problem.cond)

    def graph():
        return chain.predict(z, k, problem.cond)

    def backward(out):
        return torch.autograd.grad(out, params, torch.ones_like(out), allow_unused=True)

    def loss_work():
        return torch.autograd.grad(loss(sample), sample)

    def one_call() -> tuple[float, float, float, float]:
        forward_seconds = timed(forward, device)[0]
        graph_seconds, out = timed(graph, device)
        return forward_seconds, graph_seconds, timed(partial(backward, out), device)[0], timed(loss_work, device)[0]

    def one_round() -> tuple[float, float, float, float]:
        return tuple(map(sum, zip(*(one_call() for _ in range(calls)))))

    one_round()  # warm-up
    rows = [one_round() for _ in range(rounds)]
    ratios = sorted(b / f for f, _, b, _ in rows)
    q1, median, q3 = _quartiles(ratios)
    # the median lies between the j-th and (n+1-j)-th order statistics with >= 95% probability
    j = max(1, int(stats.binom.ppf(0.025, rounds, 0.5)))
    return {
        "backward_vs_forward": median,
        "backward_vs_forward_low": ratios[j - 1],
        "backward_vs_forward_high": ratios[rounds - j],
        "backward_vs_forward_iqr": q3 - q1,
        "graph_vs_forward": statistics.median(g / f for f, g, _, _ in rows),
        "loss_vs_forward": statistics.median(ell / f for f, _, _, ell in rows),
        "forward_seconds": statistics.median(f / calls for f, _, _, _ in rows),
        "rounds": rounds,
        "calls": calls,
        "step": k,
    }
