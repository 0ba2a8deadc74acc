"""Optimisation tasks, one per parameter type of sampling: latents, conditioning, weights."""

from sdo.tasks import conditioning, finetune, latent
from sdo.tasks.loop import Diverged, Settings, TaskResult

TASKS = {"latent": latent.optimise_latent, "conditioning": conditioning.optimise_conditioning, "finetune": finetune.finetune}
TASK_WRT = {"latent": latent.WRT, "conditioning": conditioning.WRT, "finetune": finetune.WRT}

__all__ = ["TASKS", "TASK_WRT", "Diverged", "Settings", "TaskResult"]
