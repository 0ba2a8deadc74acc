"""Optimisation tasks, one per parameter type of sampling: latents, conditioning, weights. Each
task file registers itself; importing this package imports the built-in ones."""

from sdo.tasks import conditioning, finetune, latent  # noqa: F401
from sdo.tasks.loop import Audit, Diverged, Settings, TaskResult, Trace
from sdo.tasks.registry import TASKS, Task, register_task

__all__ = ["TASKS", "Audit", "Diverged", "Settings", "Task", "TaskResult", "Trace", "register_task"]
