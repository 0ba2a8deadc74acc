"""The chain a run optimises through, as one label: `T50`, `T50-from45`, `T50-from10-invert`,
with a sampler named where a config picks one (`T10-dpmpp_2m`). Record paths, tables and
verdicts key on it."""

from __future__ import annotations


def chain_label(steps: int, start_step: int = 0, init: str = "sample", sampler: str | None = None) -> str:
    label = f"T{steps}"
    if start_step:
        label += f"-from{start_step}" + ("-invert" if init == "invert" else "")
    if sampler:
        label += f"-{sampler}"
    return label


def experiment_of(config: dict) -> str:
    """The name a run's experiment has in tables: its config's task block (default: the task)."""
    return config.get("experiment") or config.get("task")


def chain_of(config: dict) -> dict:
    """(steps, start_step, init, sampler) of a run's config (a RunSpec's fields): the chain it is
    grouped under, and the one it ran (`ran`: the whole chain for a whole-chain baseline)."""
    options = config.get("task_options") or {}
    start, init = int(options.get("start_step", 0) or 0), options.get("init", "sample") or "sample"
    steps, sampler = int(config["steps"]), config.get("sampler")
    whole = bool(config.get("whole_chain"))
    return {
        "chain": chain_label(steps, start, init, sampler),
        "start_step": start,
        "init": init,
        "ran_chain": chain_label(steps, 0, "sample", sampler) if whole else chain_label(steps, start, init, sampler),
    }
