"""A cost plan before a big sweep: per rule (experiment, chain, variant) the planned runs and
iterations and an estimate of the device-hours and peak memory they take, from the config alone.

Network evaluations are counted exactly: each estimator runs once on a stand-in chain of the
run's sampler, T and start step whose network is free (a zero), so its meter counts what the
real run's would, per iteration, plus a partial chain's warm-up once, the held-out evaluations
and the fidelity audits. Seconds per evaluation come from, in order of preference:

1. `measured`: `sdo profile` rows of the same model or its published architecture on this
   device (results/profile), the seconds of a `full` gradient over its forward and backward
   passes (a backward as two), scaled to the run's batch;
2. `flops`: the published architecture's denoiser (and VAE decoder, in the loss) built on the
   meta device, its forward's FLOPs counted by torch at the run's resolution and batch
   (classifier-free guidance doubling it), a backward as twice a forward (three times with the
   model's gradient checkpointing), at a stated device throughput (`throughput`, TFLOP/s
   achieved, not peak);
3. none: a model with no published architecture here and no measured rows (a pixel model, a
   plug-in's) says "no estimate" and why.
Reward networks are not counted (their cost depends on weights the plan need not have). Peak
memory is the measured rows' peak where there are some, else the networks' weights in their
dtype, a lower bound (activations are not estimated). Nothing here needs the weights.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch

from evals import jobs
from evals.config import layered

log = logging.getLogger(__name__)
DEFAULTS = ("config.yaml", "profile.yaml")
FAMILY_ARCHITECTURE = {"sd": "sd1.5", "sdxl": "sdxl", "sd3": "sd3.5-medium", "flux": "flux-dev"}
BACKWARD = 2.0  # a backward pass in forward passes' FLOPs


class _Free(torch.nn.Module):
    """A network that costs nothing: zeros of its input's shape, with one weight to differentiate."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, cond):
        return x * self.weight


def evaluations(spec, cls, schedule: dict) -> dict:
    """Network calls of one run of `spec` (forward, backward per iteration; warm-up, evaluation
    and audit forwards and backwards over the run), counted on a stand-in chain."""
    from sdo import Problem, make_estimator
    from sdo.samplers import make_chain
    from sdo.tasks import TASKS

    task = TASKS[spec.task]
    start = 0 if spec.whole_chain else int(spec.task_options.get("start_step", 0) or 0)
    sampler = spec.sampler or cls.sampler_for(schedule)
    net = _Free().requires_grad_(task.wrt == "weights")
    chain = make_chain(sampler, net, spec.steps, schedule, options=spec.sampler_options)
    latent = torch.zeros(2, 1, 2, 2)
    if not chain.deterministic:
        chain.fix_noise(latent, torch.Generator().manual_seed(0))
    chain = chain.tail(start) if start else chain
    cond = torch.zeros(2, 1)
    problem = Problem(chain, latent, cond, task.wrt)
    estimate = make_estimator(spec.method, **spec.options)(problem, lambda x: (x**2).sum())
    evaluations_per_run = (spec.iters // spec.eval_every if spec.eval_every else 0) + 2
    audits = math.ceil(spec.iters / spec.audit_every) if spec.audit_every else 0
    return {
        "forward": estimate.nfe_forward,
        "backward": estimate.nfe_backward,
        "warmup": start,
        "evaluation": evaluations_per_run * chain.steps,
        "audit_forward": audits * chain.steps,
        "audit_backward": audits * chain.steps,
    }


def _architecture(source: str, cls) -> str | None:
    prefix, _, rest = source.partition(":")
    if prefix == "random":
        return rest
    if prefix == "flux" and "schnell" in rest.lower():
        return "flux-schnell"
    return FAMILY_ARCHITECTURE.get(getattr(cls, "prefix", ""))


def flops(source: str, options: dict, cls, batch: int, cfg_scale: float) -> tuple[float, float, float] | None:
    """(denoiser forward FLOPs at `batch` with guidance, VAE decode FLOPs at `batch`, the
    networks' weight bytes) of the published architecture `source` names, on the meta device;
    None where there is none."""
    from torch.utils.flop_counter import FlopCounterMode

    from sdo.models import load_model

    architecture = _architecture(source, cls)
    if architecture is None:
        return None
    model = load_model(
        f"random:{architecture}", device="meta", **{k: v for k, v in options.items() if k in ("resolution", "dtype")}
    )
    z = torch.zeros(batch, *model.state_shape, device="meta", dtype=model.dtype)
    chain = model.make_chain(2, cfg_scale)
    with FlopCounterMode(display=False) as denoiser, torch.no_grad():
        chain.predict(z, 0, model.encode([model.prompts[0]] * batch))
    with FlopCounterMode(display=False) as decoder, torch.no_grad():
        model.decode(z)
    weight_bytes = sum(
        p.numel() * p.element_size()
        for m in model.parts.values()
        if isinstance(m, torch.nn.Module)
        for p in m.parameters()
    )
    return float(denoiser.get_total_flops()), float(decoder.get_total_flops()), float(weight_bytes)


def measured(rows: Path, sources: set[str]) -> tuple[float, int, float] | None:
    """(seconds per forward pass, the batch they were measured at, peak bytes) from `sdo profile`
    rows of any of `sources` (a model and its published architecture) under `rows`, a backward
    counted as two forwards; None without any."""
    found = []
    for path in rows.rglob("*.json") if rows.is_dir() else []:
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if row.get("status") == "ok" and row.get("config", {}).get("model") in sources and row.get("method") == "full":
            passes = row["nfe_forward"] + BACKWARD * row["nfe_backward"]
            found.append((row["seconds"] / passes, row["batch"], row.get("peak_bytes") or 0.0))
    if not found:
        return None
    return (sum(f[0] for f in found) / len(found), found[0][1], max(f[2] for f in found))


def plan(
    configfiles: list[Path | str],
    profile_rows: Path | str = "results/profile",
    throughput: float = 400.0,
    base: Path | str = ".",
) -> list[dict]:
    """One row per run rule (experiment, chain, variant, model): runs, iterations, network
    evaluations, device-hours and peak memory, estimated (see the module docstring)."""
    from sdo.models import planned_schedule, resolve

    root = Path(__file__).resolve().parents[1] / "config"
    config = layered([*(root / name for name in DEFAULTS), *configfiles])
    config["weights"] = (
        str(root.parent / config["weights"]) if not Path(config["weights"]).is_absolute() else config["weights"]
    )
    rows, cache = [], {}
    for job in jobs.run_jobs(config):
        spec = jobs.run_spec(config, job)
        try:
            cls = resolve(job.model).cls
        except ValueError as error:
            rows.append(
                {
                    "experiment": job.task,
                    "chain": job.chain.label,
                    "variant": job.variant,
                    "model": job.model,
                    "runs": len(job.seeds),
                    "iterations": len(job.seeds) * spec.iters,
                    "forward_per_iteration": 0,
                    "backward_per_iteration": 0,
                    "forward_passes": 0,
                    "device_hours": math.nan,
                    "peak_gb": math.nan,
                    "estimate": f"no estimate: {str(error).splitlines()[0]}",
                }
            )
            continue
        try:
            schedule = planned_schedule(job.model, spec.model_options)[1]
        except (ValueError, FileNotFoundError):
            architecture = _architecture(job.model, cls)
            schedule = (
                {}
                if architecture is None
                else dict(resolve(f"random:{architecture}").cls.planned_schedule(None, architecture))
            )
        count = evaluations(spec, cls, schedule)
        key = (job.model, spec.batch, spec.cfg_scale)
        if key not in cache:
            architecture = _architecture(job.model, cls)
            names = {job.model} | ({f"random:{architecture}"} if architecture else set())
            cache[key] = (
                measured(Path(profile_rows), names),
                flops(job.model, spec.model_options, cls, spec.batch, spec.cfg_scale),
            )
        timing, counted = cache[key]
        backward = BACKWARD + bool(spec.model_options.get("gradient_checkpointing"))  # a recomputed forward
        per_iteration = count["forward"] + backward * count["backward"]
        once = count["warmup"] + count["evaluation"] + count["audit_forward"] + backward * count["audit_backward"]
        passes = len(job.seeds) * (spec.iters * per_iteration + once)
        row = {
            "experiment": job.task,
            "chain": job.chain.label,
            "variant": job.variant,
            "model": job.model,
            "runs": len(job.seeds),
            "iterations": len(job.seeds) * spec.iters,
            "forward_per_iteration": count["forward"],
            "backward_per_iteration": count["backward"],
            "forward_passes": passes,
        }
        if timing is not None:
            seconds = timing[0] * spec.batch / timing[1]
            row.update(device_hours=passes * seconds / 3600, peak_gb=timing[2] / 1e9, estimate="measured profile rows")
        elif counted is not None:
            denoiser, decoder, weight_bytes = counted
            loss_passes = len(job.seeds) * spec.iters * (1 + BACKWARD)
            total = passes * denoiser + loss_passes * decoder
            row.update(
                device_hours=total / (throughput * 1e12) / 3600,
                peak_gb=weight_bytes / 1e9,
                estimate=f"FLOPs at {throughput:g} TFLOP/s (peak: weights only)",
            )
        else:
            row.update(
                device_hours=math.nan,
                peak_gb=math.nan,
                estimate="no estimate: no published architecture here and no measured profile rows",
            )
        rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    """The plan as a table with a total, marked as an estimate."""
    from tabulate import tabulate

    if not rows:
        return "nothing planned"
    shown = [
        [
            r["experiment"],
            r["chain"],
            r["variant"],
            r["model"],
            r["runs"],
            r["iterations"],
            f"{r['forward_per_iteration']} + {r['backward_per_iteration']}",
            f"{r['device_hours']:.3g}",
            f"{r['peak_gb']:.3g}",
            r["estimate"],
        ]
        for r in rows
    ]
    hours = sum(r["device_hours"] for r in rows if not math.isnan(r["device_hours"]))
    missing = sum(math.isnan(r["device_hours"]) for r in rows)
    table = tabulate(
        shown,
        headers=[
            "experiment",
            "chain",
            "variant",
            "model",
            "runs",
            "iterations",
            "fwd + bwd / iter",
            "device-hours",
            "peak GB",
            "from",
        ],
        tablefmt="github",
    )
    if missing == len(rows):
        time = "no device-hours estimate (no profile row or published architecture for these models)"
    else:
        time = f"{hours:.3g} device-hours in all" + (f" (+ {missing} rules with no estimate)" if missing else "")
    total = f"ESTIMATE: {sum(r['runs'] for r in rows)} runs, {sum(r['iterations'] for r in rows)} iterations, {time}"
    return f"{table}\n\n{total}"
