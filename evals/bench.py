"""Fidelity and cost of one estimator on one problem, measured side by side with a plain
sampling pass in the same process."""

from __future__ import annotations

import statistics
import time

import torch

from evals.meters import peak_bytes, reset_peak, synchronize
from evals.rewards import ClassifierLogProb
from sdo.estimators import Estimator, Problem
from sdo.tasks.loop import latent_batch, make_chain


def bench_problem(net, classifier, wrt: str, steps: int, batch: int, seed: int, target: int = 3, guidance: float = 1.0):
    """The benchmark's problem: latents from `seed`, prompts cycling through the digits, loss
    -mean log p(target) under the classifier; weights are the UNet's (not the label embeddings)."""
    net.requires_grad_(False)
    if wrt == "weights":
        net.unet.requires_grad_(True)
    latent = latent_batch(net, batch, torch.Generator().manual_seed(seed))
    cond = net.embed(torch.arange(batch, device=latent.device) % 10)
    reward = ClassifierLogProb(classifier, target)
    problem = Problem(make_chain(net, steps, guidance), latent, cond, wrt)
    return problem, lambda x: -reward(x).mean()


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.detach().double().flatten().cpu() for g in grads])


def _timed(call, device) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    result = call()
    synchronize(device)
    return time.perf_counter() - start, result


def measure(estimator: Estimator, problem: Problem, loss, reference: list[torch.Tensor] | None, repeats: int = 2) -> dict:
    """Seconds per gradient (median of `repeats` after one warm-up), a no-graph sampling pass
    timed the same way, network evaluations, sequential depth, autograd bytes, peak memory,
    gradient norm, and cosine and relative error against `reference`."""
    device = problem.latent.device
    estimator(problem, loss)  # warm-up
    sample_seconds = statistics.median(
        _timed(lambda: problem.chain.trajectory(problem.latent, problem.cond), device)[0] for _ in range(repeats)
    )
    reset_peak(device)
    timings, estimate = [], None
    for _ in range(repeats):
        seconds, estimate = _timed(lambda: estimator(problem, loss), device)
        timings.append(seconds)
    grad = _flat(estimate.grads)
    row = {
        "seconds": statistics.median(timings),
        "sample_seconds": sample_seconds,
        "seconds_vs_sampling": statistics.median(timings) / sample_seconds,
        "nfe_forward": estimate.nfe_forward,
        "nfe_backward": estimate.nfe_backward,
        "depth": estimator.depth(estimate, problem.chain.steps),
        "saved_bytes": estimate.saved_bytes,
        "peak_bytes": peak_bytes(device),
        "grad_norm": float(grad.norm()),
        "loss": estimate.loss,
    }
    if reference is not None:
        ref = _flat(reference)
        row["cosine"] = float(torch.nn.functional.cosine_similarity(grad, ref, dim=0))
        row["rel_error"] = float((grad - ref).norm() / ref.norm())
    return row
