"""Rewards: callables `images -> per-sample scores` (higher is better) handed to tasks, found by
name for the kind of images a model makes (its `domain`), each with its options dataclass.

A reward file registers its builders with `register_reward(name, domain, options)`; the builder
takes the domain's context (what the domain's setup loads: the classifier, the held-out
digits, the device) and the options. A user's own reward is named as `package.module:function`
or `path/to/file.py:function` and works on any domain. Every reward used for optimisation is
first checked for a working gradient (`checks.check_differentiable`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from evals.plugins import load_callable
from evals.rewards.checks import Reward, per_sample
from sdo.options import make_options
from sdo.registry import Registry, source_file


@dataclass(frozen=True)
class RewardEntry:
    name: str
    domain: str
    options: type
    build: Callable
    source: str = ""


REWARDS = Registry("reward", RewardEntry)


def register_reward(name: str, domain: str, options: type):
    """Decorator: `build(context, options) -> reward` is the reward `name` on `domain` images."""

    def decorate(build: Callable) -> Callable:
        existing = REWARDS.get((name, domain))
        if existing is None or existing.build is not build:
            REWARDS.register((name, domain), RewardEntry(name, domain, options, build, source_file(build)))
        return build

    return decorate


def is_callable_name(name: str) -> bool:
    """Whether `name` names a user's callable (`module:function` or `file.py:function`)."""
    return ":" in name


def rewards_for(domain: str) -> list[str]:
    return sorted(name for name, on in REWARDS if on == domain)


def reward_entry(name: str, domain: str) -> RewardEntry | None:
    """The registered reward, None for a user's callable; ValueError naming what the domain offers."""
    if is_callable_name(name):
        return None
    if (name, domain) not in REWARDS:
        raise ValueError(
            f"reward {name!r} is not offered for {domain} images; allowed: {', '.join(rewards_for(domain))} "
            "or a callable named as package.module:function or file.py:function"
        )
    return REWARDS[name, domain]


def reward_options(name: str, domain: str, values: dict):
    """The reward's options from `values` (a user's callable takes none); ValueError naming
    what is wrong and what is allowed."""
    entry = reward_entry(name, domain)
    if entry is None:
        if values:
            raise ValueError(f"reward {name!r} is a user's callable and takes no options, got {sorted(values)}")
        return None
    return make_options(entry.options, values, f"reward {name!r}")


def build_reward(name: str, domain: str, options: dict, context) -> Reward:
    """The reward `name` for `domain` images with `options`, built on the domain's `context`."""
    entry = reward_entry(name, domain)
    if entry is None:
        return per_sample(load_callable(name))
    return entry.build(context, reward_options(name, domain, options))


from evals.rewards import clip, digits, hpsv2, imagereward, pickscore, protocols  # noqa: E402,F401  (each registers)

__all__ = ["REWARDS", "Reward", "build_reward", "is_callable_name", "register_reward", "reward_options", "rewards_for"]
