"""What each experiment takes, stated once: every setting is a field of a spec with its type,
default and help. The command line's flags are generated from these fields and the workflow
builds every job's command from a spec (`evals.flags`), so a new setting is one new field.

`RunSpec` (an optimisation run), `GuideSpec` (a training-free guidance pass), `BenchSpec` (one
fidelity and cost row), `ProfileSpec` (many rows at true shapes in one process),
`BackwardCostSpec` (the backward pass's cost against a forward), `QualitySpec` (an embedded
model's accuracy and FID), `TrainSpec` (training an embedded model). Each checks its values
when it is built and says which is wrong and what is allowed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field
from pathlib import Path

from sdo.memory import default_budget_mb
from sdo.models.store import DEFAULT_DIR

PRECISIONS = ("fp32", "fp16-autocast", "bf16-autocast")
PARAMETER_KINDS = ("latent", "cond", "weights")
SCHEDULES = ("constant", "increase", "decrease")
MODEL_HELP = "the model: embedded (default), a family's prefix and its location, or random weights for cost only"


def setting(
    help: str,
    default=MISSING,
    *,
    factory=None,
    flag: str | None = None,
    many: bool = False,
    choices: tuple | None = None,
    positional: bool = False,
    required: bool = False,
):
    """A spec field: its help, default (or `factory`), the flag that sets it (default
    --<name>), whether the command line takes several values for one run each (`many`), the
    allowed values (`choices`), whether it is a positional argument, and whether the command
    line requires it although a notebook may leave it out (`required`: the output path)."""
    metadata = {
        "help": help,
        "flag": flag,
        "many": many,
        "choices": choices,
        "positional": positional,
        "required": required,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class SettingError(ValueError):
    """A setting's value a spec refuses; `field` names the setting."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _positive(spec, *names: str) -> None:
    for name in names:
        value = getattr(spec, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise SettingError(name, f"{name} must be a positive integer, got {value!r}")


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise SettingError(name, f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def _check(name: str, good: bool, message: str) -> None:
    if not good:
        raise SettingError(name, message)


@dataclass(kw_only=True)
class ModelSettings:
    """The model and where it runs."""

    model: str = setting(MODEL_HELP, "embedded")
    model_options: dict = setting(
        "an option of the model (e.g. dtype=bfloat16, gradient_checkpointing=true)", factory=dict, flag="--model-option"
    )
    device: str = setting("auto (CUDA when available), cpu or cuda[:i]", "auto")
    mem_mb: int | None = setting(
        f"memory budget in MiB: past it the run ends as out_of_memory (default: half the memory available when "
        f"the command starts, {default_budget_mb()} MiB now)",
        None,
    )

    def __post_init__(self):
        _positive(self, "mem_mb")


@dataclass(kw_only=True)
class ChainSettings(ModelSettings):
    """The sampling chain."""

    steps: int = setting("sampling steps T")
    sampler: str | None = setting("the sampler (default: the model's own: ddim, flow_euler, euler, ...)", None)
    sampler_options: dict = setting(
        "an option of the sampler (e.g. eta=0.5 for ddim)", factory=dict, flag="--sampler-option"
    )
    cfg_scale: float = setting("classifier-free guidance scale (1: none)", 1.0)
    batch: int = setting("samples per batch", 8)

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "steps", "batch")
        _check("cfg_scale", self.cfg_scale >= 0, f"cfg_scale must be >= 0, got {self.cfg_scale}")


@dataclass(kw_only=True)
class SamplingSettings(ChainSettings):
    """What is sampled and how it is scored: shared by runs and guided passes."""

    task_options: dict = setting(
        "an option of the task (e.g. prompt=3, lora_rank=4, start_step=45)", factory=dict, flag="--task-option"
    )
    seed: int = setting(
        "the seed of all the run's noise (several: run one after another in this process)", 0, many=True
    )
    reward: str = setting(
        "the reward: a registered one (digits: classifier, style, inpaint, superres; rgb: clip, "
        "aesthetic, style, pickscore, hpsv2, ...) or a callable 'package.module:function' / "
        "'file.py:function'",
        "classifier",
    )
    reward_options: dict = setting(
        "an option of the reward (e.g. target=3, clip_model=DIR)", factory=dict, flag="--reward-option"
    )
    reward_tolerance: float = setting("tolerance of the reward's finite-difference gradient check", 1e-2)
    metrics: list[str] = setting(
        "an evaluation-only metric: a registered reward or a callable "
        "'package.module:function' / 'file.py:function' (repeatable)",
        factory=list,
        flag="--metric",
    )
    metric_options: dict = setting(
        "an option of the metrics (e.g. clip_model=DIR, or pickscore={...})", factory=dict, flag="--metric-option"
    )
    out: Path | None = setting(
        "the record PATH.json (a PATH.png grid goes beside it); {seed} in PATH stands for the "
        "seed (required with several seeds)",
        None,
        required=True,
    )

    def __post_init__(self):
        super().__post_init__()
        _check(
            "seed",
            isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0,
            f"seed must be an integer >= 0, got {self.seed!r}",
        )
        _check(
            "reward_tolerance",
            self.reward_tolerance > 0,
            f"reward_tolerance must be positive, got {self.reward_tolerance}",
        )


@dataclass(kw_only=True)
class RunSpec(SamplingSettings):
    """One optimisation run: a task optimised with one estimator variant on a model.

    `audit_every` N > 0 turns on the online fidelity audit (`sdo.tasks.Audit`): the exact
    gradient every N iterations, compared and, below `fallback_below`, used instead. A method
    whose own sampler starts further than `start_tolerance` from the chain's samples ends as
    `invalid_start` before optimising. `whole_chain` optimises the initial noise through all T
    steps even where the task starts part-way (`start_step`): the whole-chain baseline of a
    partial chain, from the same starting samples."""

    task: str = setting("the task (latent, conditioning, finetune, or one a plug-in registers)", "latent")
    experiment: str | None = setting("the experiment's name in tables: a config's task block (default: the task)", None)
    method: str = setting("the gradient estimator")
    options: dict = setting(
        "an option of the estimator (e.g. checkpoint=true, at=all, tail=5)", factory=dict, flag="--option"
    )
    variant: str | None = setting("name of this estimator configuration in tables (default: the method)", None)
    iters: int = setting("optimisation iterations")
    lr: float | None = setting("learning rate (default: the task's)", None)
    betas: tuple[float, float] = setting("Adam's betas", (0.9, 0.999))
    eval_every: int = setting("evaluate on held-out noise every N iterations (0: start and end only)", 2)
    audit_every: int = setting("online fidelity audit: the exact gradient every N iterations, untimed (0: off)", 0)
    fallback_below: float | None = setting(
        "audit: use the exact gradient when the cosine falls below this (its cost counts)", None
    )
    audit_checkpoint: bool = setting("audit: checkpoint the exact gradient per step", False)
    start_tolerance: float | None = setting(
        "end as invalid_start when the estimator's own sampler starts further "
        "than this (relative distance) from the chain's",
        None,
    )
    precision: str = setting(
        "arithmetic: fp32, or autocast with a gradient scaler as the SDO authors run it", "fp32", choices=PRECISIONS
    )
    whole_chain: bool = setting(
        "optimise the initial noise through all T steps even where the task starts part-way (the whole-chain baseline)",
        False,
    )

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "iters")
        _choice("precision", self.precision, PRECISIONS)
        for name in ("eval_every", "audit_every"):
            _check(name, getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        _check("lr", self.lr is None or self.lr > 0, f"lr must be positive, got {self.lr}")
        _check(
            "betas",
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}",
        )
        self.betas = tuple(self.betas)
        _check(
            "fallback_below",
            self.fallback_below is None or -1 <= self.fallback_below <= 1,
            f"fallback_below is a cosine in [-1, 1], got {self.fallback_below}",
        )
        _check(
            "start_tolerance",
            self.start_tolerance is None or self.start_tolerance > 0,
            f"start_tolerance must be positive, got {self.start_tolerance}",
        )


@dataclass(kw_only=True)
class GuideSpec(SamplingSettings):
    """Guided sampling of the latents the latent task (same seed and batch) would optimise:
    guidance `scale`, its `schedule` over the steps and FreeDoM's time-travel `repeats`."""

    scale: float = setting("guidance step size", 0.2)
    schedule: str = setting("guidance weights over the steps", "constant", choices=SCHEDULES)
    repeats: int = setting("FreeDoM time-travel repeats per step", 1)
    variant: str | None = setting("name in tables (default: guidance_r<repeats>)", None)

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "repeats")
        _choice("schedule", self.schedule, SCHEDULES)
        _check("scale", self.scale >= 0, f"scale must be >= 0, got {self.scale}")


@dataclass(kw_only=True)
class ProblemSettings(ChainSettings):
    """The benchmark problem: shared by bench rows, profiles and the backward-cost measurement."""

    seed: int = setting("the seed of the latents", 0)
    reward: str | None = setting("the loss's reward (default: the model's domain's bench reward)", None)
    reward_options: dict = setting("an option of the reward", factory=dict, flag="--reward-option")
    lora_rank: int | None = setting(
        "weights: LoRA rank (default 0, every weight, on the embedded models; 4 otherwise)", None
    )


@dataclass(kw_only=True)
class BenchSpec(ProblemSettings):
    """One fidelity/cost measurement of an estimator variant on the benchmark problem."""

    wrt: str = setting("parameter type to differentiate", choices=PARAMETER_KINDS)
    method: str = setting("the gradient estimator")
    options: dict = setting("an option of the estimator", factory=dict, flag="--option")
    variant: str | None = setting("name of this estimator configuration in tables (default: the method)", None)
    rounds: int = setting("timed rounds (sampling pass, then gradient) after a warm-up", 5)
    plain_loop: bool = setting("time full's and the shortcut's plain diffusers loop beside them", True)
    exact_gradient: Path | None = setting("the exact (full) gradient, safetensors, to compare with", None)
    save_gradient: Path | None = setting("also write this gradient as safetensors", None)
    out: Path | None = setting("the row PATH.json", None, required=True)

    def __post_init__(self):
        super().__post_init__()
        _choice("wrt", self.wrt, PARAMETER_KINDS)
        _positive(self, "rounds")


@dataclass(kw_only=True)
class ProfileSpec(ProblemSettings):
    """Seconds and memory of several estimator variants x parameter types x T at a model's
    true shapes, the model built once: one `BenchSpec` row each."""

    variants: list[str] = setting(
        "a named estimator variant NAME=METHOD[:KEY=VALUE,...], e.g. draft_1=truncated:tail=1 (repeatable)",
        flag="--variant",
    )
    wrt: list[str] = setting("parameter types to differentiate")
    steps: list[int] = setting("sampling steps T")
    rounds: int = setting("timed rounds after a warm-up", 5)
    plain_loop: bool = setting("time full's and the shortcut's plain diffusers loop beside them", True)
    out_dir: Path = setting("rows go to OUT_DIR/<wrt>/T<steps>/<variant>.json")

    def __post_init__(self):
        ModelSettings.__post_init__(self)
        for wrt in self.wrt:
            _choice("wrt", wrt, PARAMETER_KINDS)
        _check(
            "steps",
            all(isinstance(t, int) and t >= 1 for t in self.steps),
            f"steps must be positive integers, got {self.steps}",
        )


@dataclass(kw_only=True)
class BackwardCostSpec(ProblemSettings):
    """The cost of a backward pass (and of the loss's own work) against a forward pass, for a
    model, a parameter type and a batch: what turns network evaluations into a load-free cost."""

    wrt: str = setting("parameter type the backward reaches", choices=PARAMETER_KINDS)
    steps: int = setting("sampling steps T (the middle step's state is used)", 10)
    rounds: int = setting("timed rounds (their median and its 95% interval)", 15)
    out: Path | None = setting("the record PATH.json", None, required=True)

    def __post_init__(self):
        super().__post_init__()
        _choice("wrt", self.wrt, PARAMETER_KINDS)
        _positive(self, "rounds")


@dataclass(kw_only=True)
class QualitySpec(ModelSettings):
    """Label accuracy and FID of an embedded model's samples per guidance scale."""

    steps: int = setting("sampling steps T", 50)
    cfg_scales: list[float] = setting(
        "classifier-free guidance scales", factory=lambda: [1.0, 2.0, 3.0], flag="--cfg-scale"
    )
    per_label: int = setting("samples per digit", 50)
    seed: int = setting("the seed of the latents", 0)
    out: Path | None = setting("the record PATH.json (a PATH.png grid goes beside it)", None, required=True)

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "steps", "per_label")


@dataclass(kw_only=True)
class TrainSpec:
    """Training an embedded model and saving it as safetensors beside its JSON config."""

    kind: str = setting("what to train", choices=("denoiser", "flow_denoiser", "classifier"), positional=True)
    out: Path = setting("the directory for <kind>.safetensors and <kind>.json", DEFAULT_DIR)
    seed: int = setting("the training seed", 0)
    train_steps: int = setting("denoiser optimiser steps", 2500)
    epochs: int = setting("classifier epochs", 60)
    mem_mb: int | None = setting(
        f"memory budget in MiB (default: half the memory available when the command starts, "
        f"{default_budget_mb()} MiB now)",
        None,
    )

    def __post_init__(self):
        _choice("kind", self.kind, ("denoiser", "flow_denoiser", "classifier"))
        _positive(self, "train_steps", "epochs", "mem_mb")


@dataclass(kw_only=True)
class PlanSpec:
    """A cost plan of the workflow's config files before running them (`evals.plan`)."""

    configfile: list[Path] = setting("config files layered over the defaults as Snakemake's --configfile")
    profile_rows: Path = setting(
        "`sdo profile` rows measured on this device (preferred over FLOPs where there)", Path("results/profile")
    )
    throughput: float = setting("the device's achieved TFLOP/s where estimates come from FLOPs", 400.0)
    out: Path | None = setting("also write the plan as CSV here", None)

    def __post_init__(self):
        _check("throughput", self.throughput > 0, f"throughput must be positive, got {self.throughput}")


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def replace(spec, **changes):
    """A copy of `spec` with `changes`, checked again."""
    return dataclasses.replace(spec, **changes)
