"""An optimisation run as a function: a `RunSpec` in, a record out (`run`). The record holds one
row per iteration, the held-out evaluations, the audits, what a partial chain's warm-up cost
once, the `final` and `start` metrics (the optimised parameters' samples, and the starting
parameters' from the same noise), and the chain it ran; the sample grid goes beside it as PNG."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from evals import records
from evals.chains import chain_of
from evals.domains import probe_images, setup_for
from evals.outcomes import check_writable, new_record, recorded_failures, resolve_device, write_record
from evals.rewards.checks import check_differentiable
from evals.specs import RunSpec
from sdo.estimators import NotApplicable, make_estimator
from sdo.memory import budget_bytes, enforce_budget
from sdo.models import load_model
from sdo.samplers import capabilities, refusal
from sdo.tasks import TASKS, Audit, Settings

log = logging.getLogger(__name__)


def settings_of(spec: RunSpec, device: torch.device | str = "cpu") -> Settings:
    """The task loop's settings from a run's spec (the spec states every default) on `device`."""
    audit = Audit(spec.audit_every, spec.fallback_below, spec.audit_checkpoint) if spec.audit_every else None
    return Settings(
        steps=spec.steps,
        iters=spec.iters,
        batch=spec.batch,
        cfg_scale=spec.cfg_scale,
        sampler=spec.sampler,
        sampler_options=dict(spec.sampler_options),
        lr=spec.lr,
        seed=spec.seed,
        eval_every=spec.eval_every,
        betas=tuple(spec.betas),
        audit=audit,
        budget_bytes=budget_bytes(spec.mem_mb, device),
        start_tolerance=spec.start_tolerance,
        precision=spec.precision,
    )


def task_options_of(spec: RunSpec) -> dict:
    """The task's options as the run uses them: a whole-chain baseline starts from the noise."""
    options = dict(spec.task_options)
    if spec.whole_chain:
        if options.get("init", "sample") != "sample":
            raise ValueError(
                "whole_chain compares with full backpropagation from the initial noise; an inverted "
                "start (init=invert) has no initial noise: compare on the same chain only"
            )
        options["start_step"] = 0
    return options


def check_sampler(model, spec: RunSpec, estimator) -> str:
    """The sampler the run uses; NotApplicable when the estimator's rule does not hold for it."""
    sampler = spec.sampler or model.default_sampler()
    model.check_sampler(sampler)
    reason = refusal(
        estimator.name, estimator.needs, sampler, capabilities(sampler, spec.sampler_options, model.scheduler_config)
    )
    if reason:
        raise NotApplicable(reason)
    return sampler


def run(spec: RunSpec) -> dict:
    """Optimise `spec.task` with one estimator variant and evaluate the result (see the module
    docstring). Whatever stops it becomes the record's status (`evals.outcomes`)."""
    record = new_record(spec)
    record.update(iterations=[], final={}, **chain_of(record["config"]), precision=spec.precision)
    with recorded_failures(record):
        check_writable(spec.out)
        device = resolve_device(spec.device)
        task = TASKS.lookup(spec.task)
        task_options = task.make_options(task_options_of(spec))
        estimator = make_estimator(spec.method, **spec.options)
        settings = settings_of(spec, device)
        with enforce_budget(settings.budget_bytes, device):  # the whole run, its final metrics included
            model = load_model(spec.model, device, seed=spec.seed, **spec.model_options)
            record["sampler"] = check_sampler(model, spec, estimator)
            setup = setup_for(model, spec.reward, spec.reward_options, spec.metrics, spec.metric_options, device)
            record["model_options"] = model.options
            record["reward_check_error"] = check_differentiable(
                setup.reward, probe_images(model), tolerance=spec.reward_tolerance
            )
            result = task.run(model, setup.reward, estimator, settings, task_options, monitor=setup.monitor)
            record.update(result.warmup)
            record["iterations"], record["evaluations"] = result.trace.rows, result.evaluations
            record["audits"], record["saved_bytes"] = result.trace.audits, result.trace.saved_bytes
            record["skipped_steps"] = result.trace.skipped_steps
            record["start_deviation"] = result.start_deviation
            record["final"] = setup.summarize(result.samples, result.prompts)
            record["start"] = setup.summarize(result.start, result.prompts)
        record["final"]["drift"] = float((result.samples - result.start).flatten(1).norm(dim=1).mean())
        if spec.out is not None:
            title = f"{spec.task} · {record['variant']} · {record['chain']} · reward {spec.reward}"
            records.save_grid(Path(spec.out).with_suffix(".png"), result.samples[:32], title)
            record["samples_file"] = str(samples_path(spec.out))
            records.save_tensors(record["samples_file"], final=result.samples, start=result.start)
    return write_record(record, spec.out)


def samples_path(out: Path | str) -> Path:
    """Where a run's final and start images go beside its record (for pooled FID/KID)."""
    return Path(out).with_suffix(".samples.safetensors")


__all__ = ["run", "samples_path", "settings_of"]
