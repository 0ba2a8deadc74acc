"""Tiny float64 chains with random weights: small enough for finite differences."""

from __future__ import annotations

import copy

import pytest
import torch

from sdo import Problem
from sdo.models.denoiser import DEFAULT_CONFIG, DigitDenoiser
from sdo.samplers import SAMPLERS as SAMPLER_CLASSES
from sdo.samplers import make_chain

TINY_CONFIG = copy.deepcopy(DEFAULT_CONFIG)
TINY_CONFIG["unet"].update(
    sample_size=8, block_out_channels=[8, 16], cross_attention_dim=8, attention_head_dim=4, norm_num_groups=4
)
TINY_CONFIG["tokens"] = 2
FLOW_SCHEDULE = {"num_train_timesteps": 1000, "shift": 3.0}  # SD3's static shift
SAMPLERS = ["ddim", "flow_euler"]


@pytest.fixture(autouse=True)
def _fresh_measurements(monkeypatch):
    """Each test measures autograd's bytes afresh: the process-wide memo of `measured_once`
    would otherwise carry one test's graphs into the next."""
    import sdo.memory

    monkeypatch.setattr(sdo.memory, "_MEASURED", {})


def tiny_net(seed: int = 0, perturb: float = 0.3) -> DigitDenoiser:
    """Random weights; `perturb` adds noise so the network is far from linear."""
    torch.manual_seed(seed)
    net = DigitDenoiser(TINY_CONFIG).double().eval().requires_grad_(False)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(perturb * torch.randn_like(p))
    return net


def tiny_problem_parts(
    steps: int,
    eta: float = 0.0,
    cfg_scale: float = 2.0,
    batch: int = 2,
    seed: int = 0,
    perturb: float = 0.3,
    sampler: str = "ddim",
    options: dict | None = None,
    schedule: dict | None = None,
):
    """A guided float64 chain of any registered `sampler` (a diffusion sampler on the digits'
    schedule, a flow one on SD3's shift, or `schedule`; ddim's `eta` or the sampler's `options`)
    over a tiny random network on 8x8 images, with its latent and conditioning; a stochastic
    chain's noise is drawn after the latent from the same generator. Exactness does not depend
    on what the network was trained to predict."""
    net = tiny_net(seed, perturb)
    if schedule is None:
        diffusion = SAMPLER_CLASSES.lookup(sampler).process == "diffusion"
        schedule = TINY_CONFIG["scheduler"] if diffusion else FLOW_SCHEDULE
    options = {**({"eta": eta} if eta else {}), **(options or {})}
    chain = make_chain(
        sampler, net, steps, schedule, cfg_scale=cfg_scale, null_cond=net.null(1).clone(), options=options
    )
    generator = torch.Generator().manual_seed(seed + 1)
    latent = torch.randn(batch, 1, 8, 8, generator=generator, dtype=torch.float64)
    cond = net.embed(torch.arange(batch) % 10).detach().clone()
    if not chain.deterministic:
        chain.fix_noise(latent, generator)
    return chain, latent, cond


def smooth_loss(seed: int = 7):
    """A nonlinear scalar loss on samples, fixed by `seed`."""
    weights = {}

    def loss(x: torch.Tensor) -> torch.Tensor:
        if "w" not in weights:
            weights["w"] = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
        return (torch.sin(3 * x) * weights["w"]).sum() + 0.5 * (x**2).mean()

    return loss


def wavy(images: torch.Tensor) -> torch.Tensor:
    """A nonlinear per-image reward with fixed random weights."""
    weights = torch.randn(images.shape[1:], generator=torch.Generator().manual_seed(7), dtype=images.dtype)
    return (torch.sin(3 * images) * weights).flatten(1).sum(1) - 0.5 * (images**2).flatten(1).mean(1)


@pytest.fixture(scope="module")
def one_thread():
    """Networks this small run faster on one thread (and far faster beside other jobs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_problem(wrt: str, steps: int, **options) -> Problem:
    chain, latent, cond = tiny_problem_parts(steps, **options)
    chain.net.requires_grad_(wrt == "weights")
    return Problem(chain, latent, cond, wrt)


def directional_fd(problem, loss, direction: list[torch.Tensor], h: float = 1e-6) -> float:
    """Central difference of the loss of the problem's sample along `direction` in its parameters."""
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, v in zip(problem.params, direction):
                p.add_(sign * h * v)
            values.append(float(loss(problem.chain.sample(problem.latent, problem.cond, graph_from=None))))
            for p, v in zip(problem.params, direction):
                p.sub_(sign * h * v)
    return (values[0] - values[1]) / (2 * h)


def relative_error(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    difference = sum(float(((g - r) ** 2).sum()) for g, r in zip(grads, reference))
    return (difference / sum(float((r**2).sum()) for r in reference)) ** 0.5


def run_settings(**fields):
    """The task loop's settings of a run spec with these fields (the spec's defaults for the rest)."""
    from evals.run import settings_of
    from evals.specs import RunSpec

    return settings_of(RunSpec(**{"method": "full", "iters": 1, "steps": 2, **fields}))


def planned_commands(config: dict) -> list[list[str]]:
    """The flags of every run, guided pass, bench row, backward-cost and quality job the config
    plans, built in process as the rules build them."""
    from evals import jobs
    from evals.flags import to_flags

    commands = [
        ["run", *to_flags(jobs.run_spec(config, job), exclude=("seed", "out")), "--seed", "0", "--out", "r.json"]
        for job in jobs.run_jobs(config)
    ]
    commands += [
        ["guide", *to_flags(spec, exclude=("seed", "out")), "--out", "g.json"] for spec, _ in jobs.guide_specs(config)
    ]
    commands += [
        ["bench", *to_flags(jobs.bench_spec(config, m, w, t, v), exclude=("out",)), "--out", "b.json"]
        for m in config["bench"]["models"]
        for w in config["bench"]["wrt"]
        for t in config["bench"]["steps"]
        for v in config["bench"]["variants"]
    ]
    commands += [
        ["backward-cost", *to_flags(jobs.backward_cost_spec(config, task, m), exclude=("out",)), "--out", "c.json"]
        for task, block in jobs.active_tasks(config).items()
        for m in block["models"]
    ]
    commands += [
        ["quality", *to_flags(jobs.quality_spec(config, m), exclude=("out",)), "--out", "q.json"]
        for m in config["quality"]["models"]
    ]
    return commands


def snakemake_plan(configfile, *targets: str, env: dict | None = None, cwd=None) -> list[list[str]]:
    """The words after `python -m evals.cli` (its global options, such as --plugin, included) of
    every job `snakemake -n -p --forceall` plans for `targets` (none: the default target) with
    `configfile` layered on the defaults (a subprocess: one per config file is enough)."""
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", *targets, "-n", "-p", "--forceall", "--configfile", str(configfile)],
        cwd=cwd or root,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    return [
        shlex.split(line.split("python -m evals.cli", 1)[1].split(" > ")[0])
        for line in done.stdout.splitlines()
        if "python -m evals.cli" in line
    ]
