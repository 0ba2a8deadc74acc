"""Benchmark rows as functions: one estimator variant measured on the benchmark problem
(`bench`), many variants x parameter types x T in one process at a model's true shapes
(`profile`), and the cost of a backward pass and of the loss against a forward pass
(`backward_cost`). The measuring itself is `evals.measure`."""

from __future__ import annotations

import contextlib
import gc

import torch

from evals import records
from evals.domains import domain_of
from evals.flags import option
from evals.measure import backward_cost as measure_backward_cost
from evals.measure import bench_problem, measure, sampling_seconds
from evals.outcomes import new_record, recorded_failures, resolve_device, write_record
from evals.plain_loop import plain_rule_for
from evals.rewards import build_reward
from evals.specs import BackwardCostSpec, BenchSpec, ProfileSpec
from sdo.estimators import ESTIMATORS, make_estimator
from sdo.memory import budget_bytes, enforce_budget
from sdo.models import load_model


def bench(spec: BenchSpec) -> dict:
    """Seconds, network evaluations, depth, autograd bytes, peak memory and (given the exact
    gradient) fidelity of one estimator variant on the benchmark problem, after a warm-up call
    of the same estimator. Random-weight rows (`random:<architecture>`) are `cost_only`: only
    time and memory mean anything."""
    record = _record(spec)
    with recorded_failures(record):
        device = resolve_device(spec.device)
        with enforce_budget(budget_bytes(spec.mem_mb, device), device):
            model, reward, rank, facts = _model(spec, device)
            record.update(facts)
            problem, loss = _problem(spec, model, reward, rank)
            _measure_row(spec, problem, loss, record, warmup=True)
    return write_record(record, spec.out)


def variant(text: str) -> tuple[str, str, dict]:
    """`name=method[:key=value,...]` as (name, method, options); ValueError naming what is allowed."""
    name, sep, rest = text.partition("=")
    method, _, options = rest.partition(":")
    if not sep or not name or method not in ESTIMATORS:
        raise ValueError(
            f"a variant must look like NAME=METHOD[:KEY=VALUE,...] with METHOD one of "
            f"{', '.join(sorted(ESTIMATORS))}, got {text!r}"
        )
    return name, method, dict(option(item) for item in options.split(",") if item)


def profile_rows(spec: ProfileSpec) -> list[BenchSpec]:
    """The bench rows of a profile: every variant x parameter type x T."""
    shared = {
        name: getattr(spec, name)
        for name in (
            "model",
            "model_options",
            "device",
            "mem_mb",
            "sampler",
            "sampler_options",
            "cfg_scale",
            "batch",
            "seed",
            "reward",
            "reward_options",
            "lora_rank",
            "rounds",
            "plain_loop",
        )
    }
    return [
        BenchSpec(
            **shared,
            wrt=wrt,
            steps=steps,
            method=method,
            options=options,
            variant=name,
            out=spec.out_dir / wrt / f"T{steps}" / f"{name}.json",
        )
        for wrt in spec.wrt
        for steps in spec.steps
        for name, method, options in map(variant, spec.variants)
    ]


def profile(spec: ProfileSpec) -> list[dict]:
    """`bench` of many rows in one process, for a model that is slow to build: the model and the
    reward are built once, each (wrt, T) problem once, warmed up once by a `shortcut` gradient
    (every network once forward and backward) and its sampling pass timed once; each row then
    times its gradient alone, its peak memory reset before it, all under the spec's memory
    budget. A row that fails, runs out of memory or does not apply is written with that status
    and the others go on."""
    rows = profile_rows(spec)
    loading, device, loaded = {"status": "ok"}, None, None
    with contextlib.ExitStack() as budget:
        with recorded_failures(loading):
            device = resolve_device(spec.device)
            budget.enter_context(enforce_budget(budget_bytes(spec.mem_mb, device), device))
            loaded = _model(rows[0], device)
        return [record for group in _groups(rows) for record in _rows(group, loading, loaded, device)]


def _groups(specs: list[BenchSpec]) -> list[list[BenchSpec]]:
    """The rows of each (wrt, T) problem, in the order given."""
    problems: dict[tuple[str, int], list[BenchSpec]] = {}
    for spec in specs:
        problems.setdefault((spec.wrt, spec.steps), []).append(spec)
    return list(problems.values())


def _rows(group: list[BenchSpec], loading: dict, loaded, device) -> list[dict]:
    """The records of one problem's rows (see `profile`)."""
    first, setup, rows = group[0], dict(loading), []
    if setup["status"] == "ok":
        model, reward, rank, facts = loaded
        with recorded_failures(setup):
            problem, loss = _problem(first, model, reward, rank)
            make_estimator("shortcut")(problem, loss)
            sampled = sampling_seconds(problem)
    for spec in group:
        record = _record(spec)
        if setup["status"] != "ok":
            record.update(status=setup["status"], reason=setup["reason"])
        else:
            record.update(facts)
            with recorded_failures(record):
                _measure_row(spec, problem, loss, record, warmup=False, sampled=sampled)
        rows.append(write_record(record, spec.out))
        _release(device, emptied=record["status"] != "ok")
    return rows


def _record(spec: BenchSpec) -> dict:
    record = new_record(spec)
    record.update(method=spec.method, wrt=spec.wrt, steps=spec.steps, batch=spec.batch, seed=spec.seed)
    return record


def _model(spec, device: torch.device):
    """The model, the reward, the LoRA rank of the weights rows and the facts a row records."""
    model = load_model(spec.model, device, seed=spec.seed, **spec.model_options)
    domain = domain_of(model)
    name, options = (spec.reward, spec.reward_options) if spec.reward else domain.bench_reward
    reward = build_reward(name, model.domain, options, domain.context(model, device))
    rank = spec.lora_rank if spec.lora_rank is not None else (0 if model.domain == "digits" else 4)
    facts = {
        "model_options": model.options,
        "cost_only": spec.model.startswith("random:"),
        "sampler": spec.sampler or model.default_sampler(),
    }
    return model, reward, rank, facts


def _problem(spec, model, reward, rank):
    return bench_problem(
        model,
        reward,
        spec.wrt,
        spec.steps,
        spec.batch,
        spec.seed,
        spec.cfg_scale,
        rank,
        spec.sampler,
        spec.sampler_options,
    )


def _measure_row(spec: BenchSpec, problem, loss, record: dict, warmup: bool, sampled: float | None = None) -> None:
    from safetensors.torch import load_file

    estimator = make_estimator(spec.method, **spec.options)
    exact = None
    if spec.exact_gradient is not None:
        stored = load_file(spec.exact_gradient)
        exact = [stored[str(i)].to(problem.latent.device) for i in range(len(stored))]
    plain = plain_rule_for(spec.method, spec.options, problem.chain) if spec.plain_loop else None
    record.update(measure(estimator, problem, loss, exact, spec.rounds, warmup, sampled, plain))
    if spec.save_gradient is not None:
        grads = estimator(problem, loss).grads
        records.save_tensors(spec.save_gradient, **{str(i): g for i, g in enumerate(grads)})


def _release(device, emptied: bool) -> None:
    """Drop what a finished row left behind; after a row that did not end `ok` (a failed row's
    graph included) also hand the CUDA allocator's cache back, which an `ok` row's successor
    reuses instead of paying its allocations inside its timed window."""
    gc.collect()
    if emptied and device is not None and torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def backward_cost(spec: BackwardCostSpec) -> dict:
    """The record of `evals.measure.backward_cost` on the bench problem of `spec` (its reward:
    the model's domain's bench reward unless the spec names one)."""
    record = new_record(spec)
    record.update(wrt=spec.wrt, model=spec.model, batch=spec.batch)
    with recorded_failures(record):
        device = resolve_device(spec.device)
        with enforce_budget(budget_bytes(spec.mem_mb, device), device):
            model, reward, rank, _ = _model(spec, device)
            problem, loss = _problem(spec, model, reward, rank)
            record.update(measure_backward_cost(problem, loss, spec.rounds))
    return write_record(record, spec.out)
