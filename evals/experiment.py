"""Experiments as functions: a spec in, a record out. The command line only parses flags into
specs and calls these; a notebook can call them directly.

A spec names a model, a task and an estimator, and carries each plug-in's own options as a
dict (`model_options`, `task_options`, `options` for the estimator, `reward_options`,
`metric_options`), checked by the plug-in that owns them. Every record carries the same
environment block (device, library versions, commit) and a `status`: ok, not_applicable (the
estimator's rule cannot reach the parameter), invalid_start (the estimator's own sampler does
not start where the base sampler does: no baseline), diverged (the loss, a gradient or a parameter
became non-finite; the iterations and evaluations so far are kept), out_of_memory (past the
device or the run's memory budget), or failed (with the reason). A run never raises for
these: the record says it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from evals import records
from evals.bench import backward_cost, bench_problem, measure, sampling_seconds
from evals.domains import domain_of, probe_images, setup_for
from evals.plain_loop import plain_rule_for
from evals.rewards import build_reward
from evals.rewards.checks import check_differentiable
from sdo.estimators import NotApplicable, make_estimator
from sdo.memory import OverBudget, enforce_budget
from sdo.models import load_model
from sdo.tasks import TASKS, Audit, Diverged, Settings
from sdo.tasks.loop import InvalidStart

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class RunSpec:
    """One optimisation run: a task optimised with one estimator variant on a model.

    `audit_every` N > 0 turns on the online fidelity audit (`sdo.tasks.Audit`): the exact
    gradient every N iterations, compared and, below `fallback_below`, used instead. A method
    whose own sampler starts further than `start_tolerance` from the chain's samples ends as
    `invalid_start` before optimising. `mem_mb` is the run's memory budget (None: none)."""

    task: str = "latent"
    method: str
    steps: int
    iters: int
    out: Path | None = None
    model: str = "embedded"
    model_options: dict = field(default_factory=dict)
    task_options: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    variant: str | None = None  # the name tables use; default: the method's
    reward: str = "classifier"
    reward_options: dict = field(default_factory=dict)
    reward_tolerance: float = 1e-2
    metrics: list[str] = field(default_factory=list)
    metric_options: dict = field(default_factory=dict)
    seed: int = 0
    batch: int = 8
    cfg_scale: float = 1.0
    eta: float = 0.0
    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    eval_every: int = 2
    audit_every: int = 0
    fallback_below: float | None = None
    audit_checkpoint: bool = False
    start_tolerance: float | None = None
    mem_mb: int | None = None
    device: str = "auto"


@dataclass(kw_only=True)
class BenchSpec:
    """One fidelity/cost measurement of an estimator variant on the benchmark problem. The
    reward is the model's domain's bench reward unless `reward` names another; the weights are
    LoRA adapters of `lora_rank` (None: 0, every network weight, on the embedded models; 4 on
    the diffusers families)."""

    wrt: str
    method: str
    steps: int
    out: Path | None = None
    model: str = "embedded"
    model_options: dict = field(default_factory=dict)
    reward: str | None = None
    reward_options: dict = field(default_factory=dict)
    lora_rank: int | None = None
    options: dict = field(default_factory=dict)
    variant: str | None = None
    batch: int = 8
    seed: int = 0
    cfg_scale: float = 1.0
    rounds: int = 5
    plain_loop: bool = True  # time full's and the shortcut's plain diffusers loop beside them
    reference: Path | None = None
    save_gradient: Path | None = None
    mem_mb: int | None = None
    device: str = "auto"


@dataclass(kw_only=True)
class BackwardCostSpec:
    """The cost of a backward pass against a forward one, for a model, a parameter type and a
    batch (what turns a run's network evaluations into a load-free cost)."""

    wrt: str
    out: Path | None = None
    model: str = "embedded"
    model_options: dict = field(default_factory=dict)
    batch: int = 8
    steps: int = 10
    cfg_scale: float = 1.0
    lora_rank: int | None = None
    rounds: int = 15
    seed: int = 0
    device: str = "auto"


@dataclass(kw_only=True)
class QualitySpec:
    """Label accuracy and FID of an embedded model's samples per guidance scale."""

    out: Path | None = None
    model: str = "embedded"
    model_options: dict = field(default_factory=dict)
    steps: int = 50
    cfg_scales: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0])
    per_label: int = 50
    seed: int = 0
    device: str = "auto"


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when available), `cpu`, or `cuda[:i]` (refused when CUDA is absent)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available on this machine")
    return torch.device(name)


@contextlib.contextmanager
def recorded_failures(record: dict):
    """Turn what stops a run into its record's status and reason, so a sweep never loses a row."""
    try:
        yield
    except NotApplicable as reason:
        record.update(status="not_applicable", reason=str(reason))
    except InvalidStart as error:
        record.update(status="invalid_start", reason=str(error), start_deviation=error.deviation)
    except Diverged as error:
        record.update(status="diverged", reason=str(error), iterations=error.trace.rows, evaluations=error.evaluations,
                      audits=error.trace.audits, saved_bytes=error.trace.saved_bytes)
    except Exception as error:
        if _out_of_memory(error):
            record.update(status="out_of_memory", reason=str(error).splitlines()[0])
        else:
            record.update(status="failed", reason=f"{type(error).__name__}: {error}")
            log.debug("traceback of the failure", exc_info=True)
    if record["status"] != "ok":
        log.warning("%s: %s", record["status"], record["reason"])


def _out_of_memory(error: Exception) -> bool:
    """CUDA's torch.OutOfMemoryError, the CPU allocator's RuntimeError ("can't allocate
    memory"), Python's MemoryError, or a run predicted past its budget (OverBudget)."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError, OverBudget)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


def new_record(spec, device_name: str) -> dict:
    """A record of `spec`: its config, the variant's name, the environment, status ok."""
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(spec).items()}
    config["variant"] = getattr(spec, "variant", None) or getattr(spec, "method", None)
    try:
        environment = records.environment(resolve_device(device_name))
    except ValueError:
        environment = records.environment(torch.device("cpu"))
    config["device"] = device_name
    return {"variant": config["variant"], "config": config, **environment, "status": "ok"}


def write_record(record: dict, out: Path | None) -> dict:
    """Write the record atomically to `out` (if given) and return it."""
    if out is not None:
        records.write_json(out, record)
        log.info("wrote %s (status %s)", out, record["status"])
    return record


def _budget(mem_mb: int | None) -> int | None:
    return None if mem_mb is None else int(mem_mb) * 2**20


def settings_of(spec: RunSpec) -> Settings:
    audit = Audit(spec.audit_every, spec.fallback_below, spec.audit_checkpoint) if spec.audit_every else None
    return Settings(
        spec.steps, spec.iters, spec.batch, spec.cfg_scale, spec.eta, spec.lr, spec.seed, spec.eval_every,
        tuple(spec.betas), audit, _budget(spec.mem_mb), spec.start_tolerance,
    )


def run(spec: RunSpec) -> dict:
    """Optimise `spec.task` with one estimator variant and evaluate the result: the record
    holds one row per iteration, the held-out evaluations, the audits, and the `final` and
    `baseline` (starting parameters, same noise) metrics; the sample grid goes beside
    `spec.out` as PNG."""
    record = new_record(spec, spec.device)
    record.update(iterations=[], final={})
    with recorded_failures(record):
        device = resolve_device(spec.device)
        if spec.task not in TASKS:
            raise ValueError(f"unknown task {spec.task!r}; known: {sorted(TASKS)}")
        task = TASKS[spec.task]
        task_options = task.make_options(spec.task_options)
        estimator = make_estimator(spec.method, **spec.options)
        settings = settings_of(spec)
        with enforce_budget(settings.budget_bytes, device):  # the whole run, its final metrics included
            model = load_model(spec.model, device, seed=spec.seed, **spec.model_options)
            setup = setup_for(model, spec.reward, spec.reward_options, spec.metrics, spec.metric_options, device)
            record["model_options"] = model.options
            record["reward_check_error"] = check_differentiable(setup.reward, probe_images(model), tolerance=spec.reward_tolerance)
            result = task.run(model, setup.reward, estimator, settings, task_options, monitor=setup.monitor)
            record["iterations"], record["evaluations"] = result.trace.rows, result.evaluations
            record["audits"], record["saved_bytes"] = result.trace.audits, result.trace.saved_bytes
            record["start_deviation"] = result.start_deviation
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


def bench(spec: BenchSpec) -> dict:
    """Seconds, network evaluations, depth, autograd bytes, peak memory and (given a reference
    gradient) fidelity of one estimator variant on the benchmark problem, after a warm-up call
    of the same estimator. Random-weight rows (`random:<architecture>`) are `cost_only`: only
    time and memory mean anything."""
    record = _bench_record(spec)
    with recorded_failures(record):
        device = resolve_device(spec.device)
        with enforce_budget(_budget(spec.mem_mb), device):
            model, reward, rank, facts = _bench_model(spec, device)
            record.update(facts)
            problem, loss = bench_problem(model, reward, spec.wrt, spec.steps, spec.batch, spec.seed, spec.cfg_scale, rank)
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
    once saves a fifth of a cost sweep), all under the first spec's memory budget (`mem_mb`).
    The specs may differ only in `ROW_FIELDS`. A row that
    fails, runs out of memory or does not apply is written with that status and the others go on."""
    shared = {key: value for key, value in dataclasses.asdict(specs[0]).items() if key not in ROW_FIELDS}
    for spec in specs:
        if (other := {k: v for k, v in dataclasses.asdict(spec).items() if k not in ROW_FIELDS}) != shared:
            different = sorted(k for k in shared if shared[k] != other[k])
            raise ValueError(f"bench_rows: rows must share everything but {ROW_FIELDS}; {different} differ")
    loading, device, model, reward, rank, facts = {"status": "ok"}, None, None, None, None, None
    with contextlib.ExitStack() as budget:
        with recorded_failures(loading):
            device = resolve_device(specs[0].device)
            budget.enter_context(enforce_budget(_budget(specs[0].mem_mb), device))
            model, reward, rank, facts = _bench_model(specs[0], device)
        return [row for group in _groups(specs) for row in _rows(group, loading, model, reward, rank, facts, device)]


def _groups(specs: list[BenchSpec]) -> list[list[BenchSpec]]:
    """The rows of each (wrt, steps) problem, in the order given."""
    problems: dict[tuple[str, int], list[BenchSpec]] = {}
    for spec in specs:
        problems.setdefault((spec.wrt, spec.steps), []).append(spec)
    return list(problems.values())


def _rows(group: list[BenchSpec], loading: dict, model, reward, rank, facts, device) -> list[dict]:
    """The records of one problem's rows (see `bench_rows`)."""
    first, setup, rows = group[0], dict(loading), []
    if setup["status"] == "ok":
        with recorded_failures(setup):
            problem, loss = bench_problem(model, reward, first.wrt, first.steps, first.batch, first.seed, first.cfg_scale, rank)
            make_estimator("shortcut")(problem, loss)
            sampled = sampling_seconds(problem)
    for spec in group:
        record = _bench_record(spec)
        if setup["status"] != "ok":
            record.update(status=setup["status"], reason=setup["reason"])
        else:
            record.update(facts)
            with recorded_failures(record):
                _measure_row(spec, problem, loss, record, warmup=False, sampled=sampled)
        rows.append(write_record(record, spec.out))
        _release(device, emptied=record["status"] != "ok")
    return rows


def _bench_record(spec: BenchSpec) -> dict:
    record = new_record(spec, spec.device)
    record.update(method=spec.method, wrt=spec.wrt, steps=spec.steps, batch=spec.batch, seed=spec.seed)
    return record


def _bench_model(spec: BenchSpec, device: torch.device):
    """The model, the reward, the LoRA rank of the weights rows and the facts a row records."""
    model = load_model(spec.model, device, seed=spec.seed, **spec.model_options)
    domain = domain_of(model)
    name, options = (spec.reward, spec.reward_options) if spec.reward else domain.bench_reward
    reward = build_reward(name, model.domain, options, domain.context(model, device))
    rank = spec.lora_rank if spec.lora_rank is not None else (0 if model.domain == "digits" else 4)
    facts = {"model_options": model.options, "cost_only": spec.model.startswith("random:")}
    return model, reward, rank, facts


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


def _release(device, emptied: bool) -> None:
    """Drop what a finished row left behind; after a row that did not end `ok` (a failed row's
    graph included) also hand the CUDA allocator's cache back, which an `ok` row's successor
    reuses instead of paying its allocations inside its timed window."""
    gc.collect()
    if emptied and device is not None and torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def measure_backward_cost(spec: BackwardCostSpec) -> dict:
    """The record of `evals.bench.backward_cost` on the bench problem of `spec` (its reward:
    the model's domain's bench reward; the network's cost does not depend on it)."""
    record = new_record(spec, spec.device)
    record.update(wrt=spec.wrt, model=spec.model, batch=spec.batch)
    with recorded_failures(record):
        device = resolve_device(spec.device)
        model = load_model(spec.model, device, seed=spec.seed, **spec.model_options)
        domain = domain_of(model)
        name, options = domain.bench_reward
        reward = build_reward(name, model.domain, options, domain.context(model, device))
        rank = spec.lora_rank if spec.lora_rank is not None else (0 if model.domain == "digits" else 4)
        problem, _ = bench_problem(model, reward, spec.wrt, spec.steps, spec.batch, spec.seed, spec.cfg_scale, rank)
        record.update(backward_cost(problem, spec.rounds))
    return write_record(record, spec.out)


def quality(spec: QualitySpec) -> dict:
    """Label accuracy and FID of an embedded model's samples, per classifier-free guidance scale."""
    from evals import metrics
    from sdo.models import store
    from sdo.models.data import load_split

    device = resolve_device(spec.device)
    model = load_model(spec.model, device, **spec.model_options)
    if model.domain != "digits":
        raise ValueError(f"quality measures the embedded digits models; {spec.model!r} makes {model.domain} images")
    classifier = store.load("classifier", model.directory).to(device)
    labels = torch.arange(10).repeat_interleave(spec.per_label)
    latent = model.latent_batch(len(labels), torch.Generator().manual_seed(spec.seed))
    reference, _ = load_split("held_out")
    rows = []
    for cfg_scale in spec.cfg_scales:
        chain = model.make_chain(spec.steps, cfg_scale=cfg_scale)
        samples = torch.cat(
            [chain.trajectory(z, model.encode([str(int(d)) for d in y]))[0] for z, y in zip(latent.split(100), labels.split(100))]
        )
        predicted = classifier(samples).argmax(1).cpu()
        rows.append({
            "cfg_scale": cfg_scale,
            "label_accuracy": metrics.label_accuracy(samples, labels, classifier),
            "label_accuracy_per_digit": [float((predicted[labels == d] == d).float().mean()) for d in range(10)],
            "fid": metrics.fid(samples, reference, classifier),
        })
        log.info("cfg scale %.1f: label accuracy %.3f, FID %.2f over %d samples", cfg_scale, rows[-1]["label_accuracy"], rows[-1]["fid"], len(samples))
        if len(rows) == 1 and spec.out is not None:
            grid = samples.view(10, spec.per_label, *samples.shape[1:])[:, :8].flatten(0, 1)
            title = f"{spec.model} · {model.sampler} {spec.steps} steps, cfg scale {cfg_scale}, one row per digit"
            records.save_grid(Path(spec.out).with_suffix(".png"), grid, title)
    record = {
        "config": {"model": spec.model, "steps": spec.steps, "per_label": spec.per_label, "seed": spec.seed},
        **records.environment(device),
        "status": "ok",
        "sampler": model.sampler,
        "samples": len(labels),
        "by_cfg_scale": rows,
        "fid_train_vs_held_out": metrics.fid(load_split("train")[0], reference, classifier),
        "classifier_held_out_accuracy": store.metrics("classifier", model.directory)["held_out_accuracy"],
    }
    return write_record(record, spec.out)
