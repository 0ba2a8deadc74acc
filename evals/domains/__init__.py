"""What an experiment needs besides the model and the estimator, per kind of image a model makes
(its `domain`): the context rewards are built on, a reward on the images, what to track on
held-out noise during a run, the final metrics, and the bench's reward. Each domain file
registers itself; a model names its domain (`DiffusionModel.domain`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from evals.plugins import load_callable
from evals.rewards import build_reward, is_callable_name
from evals.rewards.checks import per_sample
from sdo.models.base import DiffusionModel
from sdo.options import make_options
from sdo.registry import Registry, source_file


@dataclass
class Setup:
    """A run's model, reward, monitor (images -> scores during the run) and final metrics
    (images, prompts -> metrics)."""

    model: DiffusionModel
    reward: Callable[[torch.Tensor], torch.Tensor]
    monitor: Callable[[torch.Tensor], dict]
    summarize: Callable[[torch.Tensor, list[str] | None], dict]


@dataclass(frozen=True)
class Domain:
    """A registered domain: `context(model, device)` loads what its rewards and metrics need;
    `setup(model, reward, context, metrics, options) -> (monitor, summarize)`; `options` is its
    metrics' options dataclass; `bench_reward` the (name, options) the bench differentiates;
    `guard` the final metric that shows reward hacking and whether lower is better."""

    name: str
    options: type
    context: Callable
    setup: Callable
    bench_reward: tuple[str, dict]
    guard: tuple[str, bool] | None = None

    @property
    def source(self) -> str:
        return source_file(self.setup)

    def make_options(self, values: dict):
        return make_options(self.options, values, f"the metrics of {self.name} images")


DOMAINS = Registry("image domain", Domain)


def register_domain(domain: Domain) -> Domain:
    return DOMAINS.register(domain.name, domain)


def domain_of(model: DiffusionModel) -> Domain:
    if model.domain not in DOMAINS:
        raise ValueError(f"no experiment setup for {model.domain} images; known: {sorted(DOMAINS)}")
    return DOMAINS[model.domain]


def setup_for(
    model: DiffusionModel, reward: str, reward_options: dict, metrics: list[str], metric_options: dict, device
) -> Setup:
    """The setup of a run on `model`: its domain's context, the reward `reward` with its
    options, and the monitor and final metrics (with each evaluation-only metric: a callable, or
    a registered reward whose options are the block `metric_options[name]`)."""
    domain = domain_of(model)
    named = {name for name in metrics if not is_callable_name(name)}
    options = domain.make_options({key: value for key, value in metric_options.items() if key not in named})
    context = domain.context(model, device)
    built = build_reward(reward, model.domain, reward_options, context)
    extra = {name: metric(name, model.domain, metric_options.get(name, {}), context) for name in metrics}
    monitor, summarize = domain.setup(model, built, context, extra, options)
    return Setup(model, built, monitor, summarize)


def metric(name: str, domain: str, options, context) -> Callable[[torch.Tensor], torch.Tensor]:
    """An evaluation-only metric: a user's callable, or the reward `name` registered for `domain`
    built with `options` (its own block under the metric options, e.g. `pickscore: {model: DIR}`)."""
    if is_callable_name(name):
        return per_sample(load_callable(name))
    if not isinstance(options, dict):
        raise ValueError(f"metric_options.{name} must be a mapping of the {name} reward's options, got {options!r}")
    return build_reward(name, domain, options, context)


def probe_images(model: DiffusionModel, count: int = 4, seed: int = 0) -> torch.Tensor:
    """Images to test a reward's gradient on: a short sampling run of the model, decoded, plus
    a little noise so no pixel sits exactly on a clamp."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        state, _ = model.make_chain(10).trajectory(model.latent_batch(count, generator), model.null_cond())
        images = model.decode(state)
    return images + 0.05 * torch.randn(images.shape, generator=generator).to(images)


from evals.domains import digits, rgb  # noqa: E402,F401  (each registers itself)
