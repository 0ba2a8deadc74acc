"""Training-free guidance as an experiment: one guided pass over the latents the latent task
would optimise (the same seed, batch, chain and starting state, a partial chain's included),
timed as the runs are, and judged with the same metrics, so guidance and latent optimisation
can be compared at equal budgets (`evals.tables.guidance_table`)."""

from __future__ import annotations

import torch

from evals.domains import setup_for
from evals.outcomes import check_writable, new_record, recorded_failures, resolve_device, write_record
from evals.specs import GuideSpec
from sdo.guidance import guided_sample
from sdo.memory import budget_bytes, enforce_budget
from sdo.models import load_model
from sdo.tasks import TASKS
from sdo.tasks.latent import starting_state
from sdo.timing import timed


def guide(spec: GuideSpec) -> dict:
    """The record: seconds (on the device's clock) and network evaluations of the guided pass,
    and `final` (guided) and `start` (the plain chain from the same state) metrics."""
    if spec.variant is None:
        spec.variant = f"guidance_r{spec.repeats}"
    record = new_record(spec)
    record["final"] = {}
    with recorded_failures(record):
        check_writable(spec.out)
        device = resolve_device(spec.device)
        options = TASKS.lookup("latent").make_options(spec.task_options)
        with enforce_budget(budget_bytes(spec.mem_mb, device), device):
            model = load_model(spec.model, device, seed=spec.seed, **spec.model_options)
            setup = setup_for(model, spec.reward, spec.reward_options, spec.metrics, spec.metric_options, device)
            generator = torch.Generator().manual_seed(spec.seed)
            noise = model.latent_batch(spec.batch, generator)
            cond = model.encode([options.prompt])
            chain = model.make_chain(spec.steps, spec.cfg_scale, spec.sampler, **spec.sampler_options)
            if not chain.deterministic:
                chain.fix_noise(noise, generator)
            chain, state, warmup = starting_state(model, chain, cond, noise, options, spec.seed)
            record.update(warmup, sampler=chain.name)
            seconds, (guided, stats) = timed(
                lambda: guided_sample(
                    chain,
                    state,
                    cond,
                    lambda x0: -setup.reward(model.decode(x0)).sum(),
                    scale=spec.scale,
                    schedule=spec.schedule,
                    repeats=spec.repeats,
                    generator=generator,
                ),
                device,
            )
            record.update(seconds=seconds, nfe_forward=stats["nfe_forward"], nfe_backward=stats["nfe_backward"])
            prompts = [options.prompt] * spec.batch
            with torch.no_grad():
                start = model.decode(chain.trajectory(state, cond)[0])
                record["final"] = setup.summarize(model.decode(guided.detach()), prompts)
                record["start"] = setup.summarize(start, prompts)
    return write_record(record, spec.out)
