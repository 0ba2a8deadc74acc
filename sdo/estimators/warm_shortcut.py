"""The shortcut with a warm-started trajectory: Picard sweeps refresh the previous call's states.

Rule: the estimator keeps the last trajectory it used (all T+1 states). On the next call it
sets z_0 to the current latent and refreshes the kept states with `sweeps` Picard sweeps
(`sdo.picard`), instead of sampling from scratch; the shortcut gradient (option `at`, as in
`sdo.estimators.shortcut`) is then replayed on the refreshed states. It samples afresh, one
step after another, on the first call, when the batch shape, dtype, device or timesteps
changed, and when the refresh's residual (the largest relative change of a state, per sample,
in the last sweep) exceeds `tolerance`. With sweeps >= T the refresh is the sequential pass;
with fewer it can be further off than the kept trajectory itself (see `sdo.picard`), which the
residual reflects: the default is one sweep, guarded by the residual check.
With eta > 0 the sweeps apply the chain's current noise, so a redrawn noise is a stale guess
like any other.
Cost: J = `sweeps` batched sweeps, J T forward network evaluations at sequential depth J (a
fallback adds the T sequential ones), then the shortcut's |S| forward + |S| backward.
`last_refresh` describes the last call's refresh.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sdo import picard
from sdo.estimators.registry import register_estimator
from sdo.estimators.shortcut import Shortcut


@dataclass
class Refresh:
    """How the last trajectory was obtained: sweeps run, their residual (None: none ran), and
    whether it was sampled afresh."""

    steps: int
    sweeps: int
    residual: float | None
    fresh: bool

    @property
    def depth(self) -> int:
        """Network evaluations that ran one after another: one per sweep, T for a fresh pass."""
        return self.sweeps + self.steps * self.fresh


@register_estimator
@dataclass
class WarmShortcut(Shortcut):
    name = "shortcut_warm"
    sweeps: int = 1
    tolerance: float = 1e-2
    last_refresh: Refresh | None = field(default=None, init=False, repr=False)
    _key: tuple | None = field(default=None, init=False, repr=False)
    _states: list[torch.Tensor] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self):
        super().__post_init__()
        if self.sweeps < 1:
            raise ValueError(f"shortcut_warm sweeps must be >= 1, got {self.sweeps}")
        if not self.tolerance >= 0:
            raise ValueError(f"shortcut_warm tolerance must be >= 0, got {self.tolerance}")

    def trajectory(self, problem, keep):
        chain, latent = problem.chain, problem.latent.detach()
        key = (tuple(latent.shape), latent.dtype, latent.device, tuple(chain.timesteps))
        sweeps, residual = 0, None
        if key == self._key:
            states, residual = picard.refresh(chain, [latent, *self._states[1:]], problem.cond, self.sweeps)
            sweeps = self.sweeps
        fresh = residual is None or not residual <= self.tolerance
        if fresh:
            final, kept = chain.trajectory(latent, problem.cond, keep=range(chain.steps))
            states = [kept[k] for k in range(chain.steps)] + [final]
        self._key, self._states = key, states
        self.last_refresh = Refresh(chain.steps, sweeps, residual, fresh)
        return states[-1].clone(), {k: states[k] for k in keep}

    def depth(self, estimate, steps):
        """The refresh's sequential depth, then one round of replays."""
        return super().depth(estimate, self.last_refresh.depth if self.last_refresh else steps)
