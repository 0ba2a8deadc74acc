"""Optimisation tasks: each turns a parameter type of sampling into a problem per iteration."""

from sdo.tasks.latent import optimise_latent

TASKS = {"latent": optimise_latent}

__all__ = ["TASKS", "optimise_latent"]
