"""Tasks found by name: each task file registers its function with `register_task`, naming the
parameter type it optimises (`wrt`) and its options (a dataclass: the task's own block)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sdo.options import make_options
from sdo.registry import Registry, source_file

PARAMETER_KINDS = ("latent", "cond", "weights")


@dataclass(frozen=True)
class Task:
    """A registered task: `run(model, reward, estimator, settings, options, monitor=None) ->
    TaskResult`, the parameter type it differentiates and its options dataclass."""

    name: str
    wrt: str
    options: type
    run: Callable
    source: str = ""

    def make_options(self, values: dict):
        """The task's options from `values`; ValueError naming what is wrong and what is allowed."""
        return make_options(self.options, values, f"task {self.name!r}")


TASKS = Registry("task", Task)


def register_task(name: str, wrt: str, options: type):
    """Decorator: make the task function `name` known to experiments, the command line and the
    config checks."""
    if wrt not in PARAMETER_KINDS:
        raise ValueError(f"task {name!r}: wrt must be one of {PARAMETER_KINDS}, got {wrt!r}")

    def decorate(function: Callable) -> Callable:
        existing = TASKS.get(name)
        if existing is not None and existing.run is function:
            return function
        TASKS.register(name, Task(name, wrt, options, function, source=source_file(function)))
        return function

    return decorate


def refuse_partial_chain(task: str, start_step: int) -> None:
    """ValueError for `start_step` > 0 on a task whose parameter every step depends on."""
    if start_step:
        raise ValueError(
            f"start_step={start_step} is for the latent task only: {task}'s parameter also shapes the first "
            f"{start_step} steps, so skipping them is truncation, which the truncated estimator already is"
        )


def null_prompt(prompt) -> str:
    """A prompt option as text: 'none' (or None) is the null prompt ""; digits become "3"."""
    return "" if prompt is None or str(prompt).lower() == "none" else str(prompt)
