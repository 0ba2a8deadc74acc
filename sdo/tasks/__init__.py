"""Optimisation tasks, one per parameter type of sampling: latents, conditioning, weights."""

from sdo.tasks.conditioning import optimise_conditioning
from sdo.tasks.finetune import finetune
from sdo.tasks.latent import optimise_latent
from sdo.tasks.loop import Settings, TaskResult

TASKS = {"latent": optimise_latent, "conditioning": optimise_conditioning, "finetune": finetune}

__all__ = ["TASKS", "Settings", "TaskResult", "finetune", "optimise_conditioning", "optimise_latent"]
