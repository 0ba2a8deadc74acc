"""Training-free guidance as an experiment: one guided pass over the latent task's latents,
timed, and judged with the same metrics as the optimisation runs, so guidance and latent
optimisation can be compared at equal wall-clock budgets (`guidance_table`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from evals.domains import setup_for
from evals.experiment import RunSpec, new_record, recorded_failures, resolve_device, write_record
from sdo.guidance import guided_sample
from sdo.models import load_model
from sdo.tasks import TASKS


@dataclass(kw_only=True)
class GuideSpec(RunSpec):
    """Guided sampling of the latents `RunSpec(task="latent")` with the same seed and batch
    would optimise: guidance `scale`, its `schedule` over the steps and FreeDoM's time-travel
    `repeats`."""

    method: str = "guidance"
    iters: int = 0
    scale: float = 1.0
    schedule: str = "constant"
    repeats: int = 1


def guide(spec: GuideSpec) -> dict:
    """The record: seconds and network evaluations of the guided pass, and `final` (guided)
    and `baseline` (the plain chain from the same latents) metrics."""
    if spec.variant is None:
        spec.variant = f"guidance_r{spec.repeats}"
    record = new_record(spec, spec.device)
    record["final"] = {}
    with recorded_failures(record):
        device = resolve_device(spec.device)
        prompt = TASKS["latent"].make_options(spec.task_options).prompt
        model = load_model(spec.model, device, seed=spec.seed, **spec.model_options)
        setup = setup_for(model, spec.reward, spec.reward_options, spec.metrics, spec.metric_options, device)
        generator = torch.Generator().manual_seed(spec.seed)
        latent = model.latent_batch(spec.batch, generator)
        cond = model.encode([prompt])
        chain = model.make_chain(spec.steps, spec.cfg_scale, spec.eta)
        if spec.eta:
            chain.fix_noise(latent, generator)
        start = time.perf_counter()
        state, stats = guided_sample(
            chain, latent, cond, lambda x0: -setup.reward(model.decode(x0)).sum(),
            scale=spec.scale, schedule=spec.schedule, repeats=spec.repeats, generator=generator,
        )
        record.update(seconds=time.perf_counter() - start, nfe_forward=stats["nfe_forward"], nfe_backward=stats["nfe_backward"])
        with torch.no_grad():
            baseline = model.decode(chain.trajectory(latent, cond)[0])
            record["final"] = setup.summarize(model.decode(state.detach()), [prompt] * spec.batch)
            record["baseline"] = setup.summarize(baseline, [prompt] * spec.batch)
    return write_record(record, spec.out)


def guidance_table(guided: list[Path | str], evaluations: pd.DataFrame) -> pd.DataFrame:
    """One row per guided record and latent-task variant at the same T and seed: the
    guidance's seconds and final reward, target accuracy and distance to real digits, beside
    the variant's held-out evaluation at the most training seconds that fit the same budget
    (`optimised_*`; empty when not even the first update fits)."""
    latent = evaluations[(evaluations["task"] == "latent") & (evaluations["status"] == "ok")] if len(evaluations) else evaluations
    rows = []
    for path in map(Path, guided):
        record = json.loads(path.read_text())
        if record["status"] != "ok":
            continue
        config, final = record["config"], record["final"]
        base = {"model": config["model"], "steps": config["steps"], "seed": config["seed"], "guided_pass": record["variant"],
                "repeats": config["repeats"],
                "scale": config["scale"], "seconds": record["seconds"], "nfe": record["nfe_forward"] + record["nfe_backward"],
                "reward": final["reward_mean"], "target_accuracy": final.get("target_accuracy"),
                "nn_distance": final["nn_distance"], "device": record["device"]}
        same = latent[(latent["model"] == base["model"]) & (latent["steps"] == base["steps"]) & (latent["seed"] == base["seed"])] if len(latent) else latent
        for variant, run in (same.groupby("variant") if len(same) else []):
            within = run[run["seconds"] <= base["seconds"]].sort_values("seconds")
            best = within.iloc[-1] if len(within) else None
            rows.append({**base, "variant": variant, "optimised_iter": None if best is None else best["iter"],
                         **{f"optimised_{k}": (None if best is None else best.get(k))
                            for k in ("seconds", "reward", "target_accuracy", "nn_distance")}})
        if not len(same):
            rows.append(base)
    return pd.DataFrame(rows)
