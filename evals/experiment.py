"""Experiments as functions: a spec in, a record out. The command line only parses flags into
specs and calls these; a notebook can call them directly.

Every record carries the same environment block (device, library versions, commit) and a
`status`: ok, not_applicable (the estimator's rule cannot reach the parameter), diverged (the
loss, a gradient or a parameter became non-finite; the iterations so far are kept),
out_of_memory, or failed (with the reason). A run never raises for these: the record says it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from evals import metrics, records
from evals.bench import bench_problem, measure, sampling_seconds
from evals.plain_loop import plain_rule_for
from evals.rewards import ClassifierLogProb, check_differentiable
from evals.setup import probe_images, setup_for
from sdo.estimators import NotApplicable, make_estimator
from sdo.models import store
from sdo.models.base import NULL_PROMPT
from sdo.models.data import load_split
from sdo.models.digits import EmbeddedDigits
from sdo.tasks import TASKS, Diverged, Settings

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ModelOptions:
    """How a Stable Diffusion model is loaded (the embedded model ignores these): the image
    resolution (None: the model's own), the networks' dtype, `StableDiffusion`'s memory levers,
    and whether missing weights may be downloaded."""

    resolution: int | None = None
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    attention_slicing: bool = False
    vae_slicing: bool = False
    allow_download: bool = False


@dataclass
class RunSpec(ModelOptions):
    """One optimisation run: a task optimised with one estimator variant on a model."""

    method: str
    steps: int
    iters: int
    out: Path | None = None
    task: str = "latent"
    model: str = "embedded"
    options: dict = field(default_factory=dict)
    variant: str | None = None  # the name tables use; default: the method's
    seed: int = 0
    batch: int = 8
    reward: str = "classifier"
    target: int = 3
    reference_index: int = 0
    metrics: list[str] = field(default_factory=list)
    inception_weights: Path | None = None
    clip_model: Path | None = None
    aesthetic_head: Path | None = None
    style_image: Path | None = None
    reference_images: Path | None = None  # Stable Diffusion: folder for Inception FID
    reward_prompt: str = ""  # Stable Diffusion: the clip reward's text (default: `prompt`)
    reward_tolerance: float = 1e-2
    prompt: str = NULL_PROMPT
    guidance: float = 1.0
    eta: float = 0.0
    lr: float | None = None
    renormalize: bool = False
    lora_rank: int = 4
    eval_samples: int = 100
    eval_every: int = 2
    monitor_samples: int = 32
    betas: tuple[float, float] = (0.9, 0.999)
    models: Path = store.DEFAULT_DIR
    device: str = "auto"


@dataclass
class BenchSpec(ModelOptions):
    """One fidelity/cost measurement of an estimator variant on the benchmark problem."""

    wrt: str
    method: str
    steps: int
    out: Path | None = None
    model: str = "embedded"
    clip_model: Path | None = None  # Stable Diffusion: CLIP similarity as the loss
    reward_prompt: str = ""
    lora_rank: int | None = None  # weights: None takes 0 (all) on the embedded model, 4 on SD
    options: dict = field(default_factory=dict)
    variant: str | None = None
    batch: int = 8
    seed: int = 0
    guidance: float = 1.0
    rounds: int = 5
    plain_loop: bool = True  # time full's and the shortcut's plain diffusers loop beside them
    reference: Path | None = None
    save_gradient: Path | None = None
    models: Path = store.DEFAULT_DIR
    device: str = "auto"


@dataclass
class QualitySpec:
    """Label accuracy and FID of the base model's samples per guidance scale."""

    out: Path | None = None
    steps: int = 50
    guidance: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0])
    per_label: int = 50
    seed: int = 0
    models: Path = store.DEFAULT_DIR
    device: str = "auto"


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when available), `cpu`, or `cuda[:i]` (refused when CUDA is absent)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available")
    return torch.device(name)


@contextlib.contextmanager
def recorded_failures(record: dict):
    """Turn what stops a run into its record's status and reason, so a sweep never loses a row."""
    try:
        yield
    except NotApplicable as reason:
        record.update(status="not_applicable", reason=str(reason))
    except Diverged as error:
        record.update(status="diverged", reason=str(error), iterations=error.iterations)
    except Exception as error:
        if _out_of_memory(error):
            record.update(status="out_of_memory", reason=str(error).splitlines()[0])
        else:
            record.update(status="failed", reason=f"{type(error).__name__}: {error}")
            log.debug("traceback of the failure", exc_info=True)
    if record["status"] != "ok":
        log.warning("%s: %s", record["status"], record["reason"])


def _out_of_memory(error: Exception) -> bool:
    """CUDA's torch.OutOfMemoryError, or the CPU allocator's RuntimeError ("can't allocate memory")."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


def new_record(spec, device: torch.device) -> dict:
    """A record of `spec` on `device`: its config, the variant's name, the environment, status ok."""
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(spec).items()}
    config["variant"] = spec.variant or spec.method
    config["device"] = str(device)
    return {"variant": config["variant"], "config": config, **records.environment(device), "status": "ok"}


def write_record(record: dict, out: Path | None) -> dict:
    """Write the record atomically to `out` (if given) and return it."""
    if out is not None:
        records.write_json(out, record)
        log.info("wrote %s (status %s)", out, record["status"])
    return record


def run(spec: RunSpec) -> dict:
    """Optimise `spec.task` with one estimator variant and evaluate the result: the record
    holds one row per iteration and the `final` and `baseline` (starting parameters, same
    noise) metrics; the sample grid goes beside `spec.out` as PNG."""
    device = resolve_device(spec.device)
    record = new_record(spec, device)
    record.update(iterations=[], final={})
    with recorded_failures(record):
        if spec.task not in TASKS:
            raise ValueError(f"unknown task {spec.task!r}; known: {sorted(TASKS)}")
        estimator = make_estimator(spec.method, **spec.options)
        setup = setup_for(spec, device)
        record["model_options"] = getattr(setup.model, "options", None)
        record["reward_check_error"] = check_differentiable(setup.reward, probe_images(setup.model), tolerance=spec.reward_tolerance)
        settings = Settings(
            spec.steps, spec.iters, spec.batch, spec.guidance, spec.eta, spec.lr, spec.seed, spec.eval_every,
            spec.monitor_samples, tuple(spec.betas),
        )
        result = TASKS[spec.task](setup.model, setup.reward, estimator, settings, monitor=setup.monitor, **_task_options(spec))
        record["iterations"], record["evaluations"] = result.trace.rows, result.evaluations
        record["saved_bytes"] = result.trace.saved_bytes
        record["final"] = setup.summarize(result.samples, result.prompts)
        record["baseline"] = setup.summarize(result.baseline, result.prompts)
        record["final"]["drift"] = float((result.samples - result.baseline).flatten(1).norm(dim=1).mean())
        if spec.out is not None:
            title = f"{spec.task} · {record['variant']} · T={spec.steps} · reward {spec.reward}"
            records.save_grid(Path(spec.out).with_suffix(".png"), result.samples[:32], title)
            record["samples_file"] = str(samples_path(spec.out))
            records.save_tensors(record["samples_file"], final=result.samples, baseline=result.baseline)
    return write_record(record, spec.out)


def samples_path(out: Path | str) -> Path:
    """Where a run's final and baseline images go beside its record (for pooled FID/KID)."""
    return Path(out).with_suffix(".samples.safetensors")


def _task_options(spec: RunSpec) -> dict:
    """The chosen task's own keyword arguments."""
    if spec.task == "latent":
        return {"prompt": spec.prompt, "renormalize": spec.renormalize}
    if spec.task == "conditioning":
        return {"prompt": spec.prompt, "eval_samples": spec.eval_samples}
    return {"lora_rank": spec.lora_rank, "eval_samples": spec.eval_samples}


def bench(spec: BenchSpec) -> dict:
    """Seconds, network evaluations, depth, autograd bytes, peak memory and (given a reference
    gradient) fidelity of one estimator variant on the benchmark problem, after a warm-up call
    of the same estimator. On the embedded model the loss is minus log p(3) under the
    classifier and the weights are all the denoiser's; on Stable Diffusion it is
    `evals.sd_setup.bench_reward`'s (the decoded images' mean square, or CLIP similarity) and
    the weights are LoRA adapters of rank 4 (`lora_rank`) on the UNet's attention projections,
    not its 860 M weights. `sd-random` rows are `cost_only`: random weights, so only time and
    memory mean anything."""
    device = resolve_device(spec.device)
    record = _bench_record(spec, device)
    with recorded_failures(record):
        model, reward, rank, facts = _bench_model(spec, device)
        record.update(facts)
        problem, loss = bench_problem(model, reward, spec.wrt, spec.steps, spec.batch, spec.seed, spec.guidance, rank)
        _measure_row(spec, problem, loss, record, warmup=True)
    return write_record(record, spec.out)


# what the rows of one `bench_rows` call may differ in; everything else builds the shared model
ROW_FIELDS = ("wrt", "steps", "method", "options", "variant", "reference", "save_gradient", "out")


def bench_rows(specs: list[BenchSpec]) -> list[dict]:
    """`bench` of many rows in one process, for a model that is slow to build: the model and the
    reward are built once, each (wrt, steps) problem once, warmed up once by a `shortcut`
    gradient (every network once forward and backward) and its sampling pass timed once; each
    row then times its gradient alone, without a warm-up of its own, its peak memory reset
    before it (on a GPU, where this is for, the pass holds still between rows, and timing it
    once saves a fifth of a cost sweep). The specs may differ only in
    `ROW_FIELDS`. A row that fails, runs out of memory or does not apply is written with that
    status and the others go on."""
    shared = {key: value for key, value in dataclasses.asdict(specs[0]).items() if key not in ROW_FIELDS}
    for spec in specs:
        if (other := {k: v for k, v in dataclasses.asdict(spec).items() if k not in ROW_FIELDS}) != shared:
            different = sorted(k for k in shared if shared[k] != other[k])
            raise ValueError(f"bench_rows: rows must share everything but {ROW_FIELDS}; {different} differ")
    device = resolve_device(specs[0].device)
    loading = {"status": "ok"}
    with recorded_failures(loading):
        model, reward, rank, facts = _bench_model(specs[0], device)
    problems: dict[tuple[str, int], list[BenchSpec]] = {}
    for spec in specs:
        problems.setdefault((spec.wrt, spec.steps), []).append(spec)
    rows = []
    for (wrt, steps), group in problems.items():
        setup = dict(loading)
        if setup["status"] == "ok":
            with recorded_failures(setup):
                problem, loss = bench_problem(model, reward, wrt, steps, specs[0].batch, specs[0].seed, specs[0].guidance, rank)
                make_estimator("shortcut")(problem, loss)
                sampled = sampling_seconds(problem)
        for spec in group:
            record = _bench_record(spec, device)
            if setup["status"] != "ok":
                record.update(status=setup["status"], reason=setup["reason"])
            else:
                record.update(facts)
                with recorded_failures(record):
                    _measure_row(spec, problem, loss, record, warmup=False, sampled=sampled)
            rows.append(write_record(record, spec.out))
            _release(device)
        problem = loss = None
    return rows


def _bench_record(spec: BenchSpec, device: torch.device) -> dict:
    record = new_record(spec, device)
    record.update(method=spec.method, wrt=spec.wrt, steps=spec.steps, batch=spec.batch, seed=spec.seed)
    return record


def _bench_model(spec: BenchSpec, device: torch.device):
    """The model, the reward, the LoRA rank of the weights rows and the facts a row records."""
    if spec.model == "embedded":
        model = EmbeddedDigits.load(spec.models, device)
        reward, rank, facts = ClassifierLogProb(store.load("classifier", spec.models).to(device), 3), 0, {}
    else:
        from evals.sd_setup import bench_reward, load_model

        model = load_model(spec, device)
        reward, rank = bench_reward(spec, model, device), 4
        facts = {"model_options": model.options, "cost_only": spec.model.startswith("sd-random:")}
    return model, reward, rank if spec.lora_rank is None else spec.lora_rank, facts


def _measure_row(spec: BenchSpec, problem, loss, record: dict, warmup: bool, sampled: float | None = None) -> None:
    from safetensors.torch import load_file

    estimator = make_estimator(spec.method, **spec.options)
    reference = None
    if spec.reference is not None:
        stored = load_file(spec.reference)
        reference = [stored[str(i)].to(problem.latent.device) for i in range(len(stored))]
    plain = plain_rule_for(spec.method, spec.options) if spec.plain_loop else None
    record.update(measure(estimator, problem, loss, reference, spec.rounds, warmup, sampled, plain))
    if spec.save_gradient is not None:
        grads = estimator(problem, loss).grads
        records.save_tensors(spec.save_gradient, **{str(i): g for i, g in enumerate(grads)})


def _release(device: torch.device) -> None:
    """Drop what a finished row left behind (a failed row's graph included)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def quality(spec: QualitySpec) -> dict:
    """Label accuracy and FID of the base model's samples, per guidance scale."""
    device = resolve_device(spec.device)
    model = EmbeddedDigits.load(spec.models, device)
    classifier = store.load("classifier", spec.models).to(device)
    labels = torch.arange(10).repeat_interleave(spec.per_label)
    latent = model.latent_batch(len(labels), torch.Generator().manual_seed(spec.seed))
    reference, _ = load_split("held_out")
    rows = []
    for guidance in spec.guidance:
        chain = model.make_chain(spec.steps, guidance=guidance)
        samples = torch.cat(
            [chain.trajectory(z, model.encode([str(int(d)) for d in y]))[0] for z, y in zip(latent.split(100), labels.split(100))]
        )
        predicted = classifier(samples).argmax(1).cpu()
        rows.append({
            "guidance": guidance,
            "label_accuracy": metrics.label_accuracy(samples, labels, classifier),
            "label_accuracy_per_digit": [float((predicted[labels == d] == d).float().mean()) for d in range(10)],
            "fid": metrics.fid(samples, reference, classifier),
        })
        log.info("guidance %.1f: label accuracy %.3f, FID %.2f over %d samples", guidance, rows[-1]["label_accuracy"], rows[-1]["fid"], len(samples))
        if len(rows) == 1 and spec.out is not None:
            grid = samples.view(10, spec.per_label, *samples.shape[1:])[:, :8].flatten(0, 1)
            records.save_grid(Path(spec.out).with_suffix(".png"), grid, f"DDIM {spec.steps}, guidance {guidance}, one row per digit")
    record = {
        "config": {"steps": spec.steps, "per_label": spec.per_label, "seed": spec.seed},
        **records.environment(device),
        "status": "ok",
        "samples": len(labels),
        "by_guidance": rows,
        "fid_train_vs_held_out": metrics.fid(load_split("train")[0], reference, classifier),
        "classifier_held_out_accuracy": store.metrics("classifier", spec.models)["held_out_accuracy"],
    }
    return write_record(record, spec.out)
