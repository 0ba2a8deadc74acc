"""A sampling chain: T steps, each affine in the states and the network's predictions, written
as pure functions so every estimator can replay, invert or differentiate any single step.

Notation (every sampler file uses it, then relates it to its papers'):

    k              step index in sampling order, 0..T-1
    z_k            chain state before step k; z_0 = r * latent (r = `initial_scale`, the
                   scheduler's `init_noise_sigma`; the latent is standard normal), z_T the sample
    t_k            the network's timestep at state k (the diffusers scheduler's `timesteps`)
    c_k            the network's input scale at state k (the scheduler's `scale_model_input`)
    out_k          the network's prediction out(c_k z_k, t_k, c), classifier-free guided: noise,
                   velocity, v or clean sample, as the model was trained
    a_k, b_k       step k's coefficients of z_k and out_k
    e_kj, b_kj     a multistep solver's coefficients of the earlier z_{k-j} and out_{k-j}, j >= 1
    s_k            the standard deviation of step k's fresh noise (0: a deterministic step)

        z_{k+1} = a_k z_k + b_k out_k + sum_{j>=1} (e_kj z_{k-j} + b_kj out_{k-j}) + s_k noise_k

    p_k, q_k       the clean sample predicted at state k:    x0_hat_k = p_k z_k + q_k out_k
    alpha_k, n_k   signal and noise level of state k:        z_k ~ alpha_k x_0 + n_k noise

The order of a sampler is one plus the number of earlier (state, prediction) pairs a step uses:
1 for DDIM and the Euler steps, 2 for DPM-Solver++ 2M. A chain that starts part-way (`tail`)
holds the earlier pairs its first steps need as constants (`past`): the optimised state of a
partial chain was never computed from them.

A sampler (one file each, registered by name) computes these numbers in float64 from its
diffusers scheduler, so its update equals the scheduler's `step`, and declares what it can do
(`Capabilities`): estimators and guidance declare what they need, never sampler names. With
s_k > 0 the noise is drawn once per run (`fix_noise`), so the chain stays a deterministic
function of the latent, the conditioning and the weights.

Along the affine path alone (every network Jacobian dropped) z_T is a linear function of z_0
and the predictions; `influence` gives its scalar coefficients, d z_T / d z_0 and
d z_T / d out_k, by one backward recursion over the steps' coefficients (what the shortcut's
identity skip uses, for any order).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from sdo import conditioning
from sdo.conditioning import Cond

NEEDS = {
    "deterministic": "a deterministic sampler",
    "single_step": "a single-step sampler",
    "invertible": "a sampler whose state can be rebuilt from the next one",
}


def timestep_dtype(z: torch.Tensor) -> torch.dtype:
    """The dtype the network's timesteps take beside states `z`: float32 for bf16 and fp16
    states (bf16 holds only multiples of 4 above 512: 981 would reach the network as 980, where
    the diffusers pipelines pass int64 or float32 timesteps), otherwise the states' own."""
    return torch.float32 if z.dtype in (torch.bfloat16, torch.float16) else z.dtype


@dataclass
class Meter:
    """Network evaluations of the guided network: forward calls, backward passes, and which
    steps ran with a graph. With classifier-free guidance one call is one batched network run
    on twice the batch. Counting costs integer increments and one identity autograd node per
    graph step (about 9 microseconds a step on a CPU, against milliseconds for a network call)."""

    forward: int = 0
    backward: int = 0
    graph_steps: list[int] = field(default_factory=list)


class _CountBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out, meter):
        ctx.meter = meter
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        ctx.meter.backward += 1
        return grad, None


@dataclass(frozen=True)
class Step:
    """The numbers of one step (see the notation above); `earlier` holds (e_kj, b_kj) for j = 1, 2, ..."""

    a: float
    b: float
    p: float
    q: float
    s: float = 0.0
    c: float = 1.0
    earlier: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Capabilities:
    """What a sampler (with its options) can do: `deterministic` (no fresh noise), its `order`
    (1: single-step), `invertible` (a state can be rebuilt from the next one alone: deterministic
    and single-step, what the adjoint needs), `inversion` (real images can be mapped to a state
    by running its steps backwards) and `max_steps`, the largest T it can run."""

    deterministic: bool
    order: int
    invertible: bool
    inversion: bool
    max_steps: int

    def missing(self, needs: Iterable[str]) -> list[str]:
        """The needs (names in `NEEDS`) these capabilities do not meet."""
        have = {"deterministic": self.deterministic, "single_step": self.order == 1, "invertible": self.invertible}
        return [need for need in needs if not have[need]]

    def describe(self) -> str:
        kind = "deterministic" if self.deterministic else "stochastic"
        steps = "single-step" if self.order == 1 else f"multistep (order {self.order})"
        return f"{kind}, {steps}"


def refusal(user: str, needs: Iterable[str], sampler: str, capabilities: Capabilities) -> str | None:
    """Why `user` (an estimator, guidance) cannot run on `sampler`, or None when it can."""
    missing = capabilities.missing(needs)
    if not missing:
        return None
    wanted = " and ".join(NEEDS[need] for need in missing)
    return f"{user} needs {wanted}; {sampler} is {capabilities.describe()}"


class Chain:
    """T steps of `net(x, t, cond) -> out` with optional classifier-free guidance.

    `coefficients` are the T `Step`s, `timesteps` the T network timesteps, `levels` the T + 1
    (alpha_k, n_k). `null_cond` is the unconditional conditioning of guidance (batch 1 or
    like `cond`); `cfg_scale` 1 uses `cond` alone. Subclasses (the samplers) compute the
    numbers, declare `Options` (their own options, a dataclass) and `capabilities_for`, and
    say how diffusers builds the same schedule (`diffusers_scheduler`)."""

    name: ClassVar[str]
    scheduler_class: ClassVar[str] = ""  # the diffusers scheduler this sampler reproduces
    order: ClassVar[int] = 1

    @dataclass
    class Options:
        """No options."""

    def __init__(
        self,
        net: nn.Module,
        timesteps: Sequence[float],
        coefficients: Sequence[Step],
        levels: Sequence[tuple[float, float]],
        cfg_scale: float = 1.0,
        null_cond: Cond | None = None,
        initial_scale: float = 1.0,
    ):
        if not coefficients:
            raise ValueError("a chain needs at least one step")
        if cfg_scale != 1.0 and null_cond is None:
            raise ValueError(f"cfg_scale {cfg_scale} needs a null_cond for the unconditional prediction")
        if any(step.a == 0 for step in coefficients):
            raise ValueError("every step must scale its state by a non-zero a_k")
        self.net, self.cfg_scale, self.null_cond = net, cfg_scale, null_cond
        self.timesteps, self.coefficients, self.levels = list(timesteps), list(coefficients), list(levels)
        self.steps = len(self.coefficients)
        self.initial_scale = float(initial_scale)
        self.start_step = 0  # the whole chain's index of this chain's first step (`tail`)
        self.past: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()
        self.noise: list[torch.Tensor] | None = None
        self.meter = Meter()

    @classmethod
    def capabilities_for(cls, options, scheduler_config: dict) -> Capabilities:
        """What the sampler can do with `options` (its Options) on a schedule, known before any
        chain is built (the plan checks read it)."""
        steps = int(scheduler_config.get("num_train_timesteps", 1000))
        return Capabilities(
            deterministic=True, order=cls.order, invertible=cls.order == 1, inversion=False, max_steps=steps
        )

    @property
    def capabilities(self) -> Capabilities:
        deterministic = not any(step.s for step in self.coefficients)
        order = 1 + max(len(step.earlier) for step in self.coefficients)
        return dataclasses.replace(
            self.capabilities_for(self.options, self.scheduler_config),
            deterministic=deterministic,
            order=order,
            invertible=deterministic and order == 1,
        )

    @property
    def deterministic(self) -> bool:
        return self.capabilities.deterministic

    def diffusers_scheduler(self):
        """diffusers' own scheduler set to this chain's steps: the reference its update equals."""
        raise NotImplementedError

    def scheduler_for(self, steps: int, scheduler_config: dict, options, refused=()):
        """Keep the pipeline's scheduler configuration and the options (the defaults where None),
        refuse the settings this sampler cannot follow (`refused`, as `refuse_settings` takes
        them), check T against the training steps, and return `diffusers_scheduler()` set to T
        steps: the scheduler whose numbers the sampler reads."""
        self.scheduler_config, self.options = dict(scheduler_config), options or self.Options()
        refuse_settings(self.name, self.scheduler_config, refused)
        check_steps(self.name, steps, int(self.scheduler_config.get("num_train_timesteps", 1000)))
        self._steps = steps
        return self.diffusers_scheduler()

    def fix_noise(self, like: torch.Tensor, generator: torch.Generator) -> None:
        """Draw the per-step noise once, shaped like the latent (a stochastic chain needs it)."""
        self.noise = [
            torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device) for _ in range(self.steps)
        ]

    def start(self, latent: torch.Tensor) -> torch.Tensor:
        """z_0 from a standard normal latent (differentiably)."""
        return latent if self.initial_scale == 1.0 else self.initial_scale * latent

    def tail(self, start_step: int, past: tuple = ()) -> Chain:
        """The chain of steps `start_step`..T-1 alone, its first state the parameter: the same
        network, guidance and drawn noise, the earlier pairs `past` (most recent first) held
        as constants, an initial scale of 1 and a meter of its own."""
        if not 0 <= start_step < self.steps:
            raise ValueError(f"start_step must lie in 0..{self.steps - 1} (T = {self.steps}), got {start_step}")
        tail = copy.copy(self)
        tail.timesteps, tail.coefficients = self.timesteps[start_step:], self.coefficients[start_step:]
        tail.levels, tail.steps = self.levels[start_step:], self.steps - start_step
        tail.noise = None if self.noise is None else self.noise[start_step:]
        tail.initial_scale, tail.start_step = 1.0, self.start_step + start_step
        tail.past, tail.meter = tuple((z.detach(), out.detach()) for z, out in past), Meter()
        return tail

    def guided(self, z: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Classifier-free guidance of the network at per-sample timesteps `t` (not counted)."""
        if self.cfg_scale == 1.0:
            return self.net(z, t, cond)
        null = conditioning.expand(self.null_cond, conditioning.batch_size(cond))
        uncond, guided = self.net(torch.cat([z, z]), torch.cat([t, t]), conditioning.cat(null, cond)).chunk(2)
        return uncond + self.cfg_scale * (guided - uncond)

    def network_input(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """c_k z_k, what the network sees at state k."""
        scale = self.coefficients[k].c
        return z if scale == 1.0 else scale * z

    def predict(self, z: torch.Tensor, k: int, cond: Cond) -> torch.Tensor:
        """out_k, the guided prediction at state k, counted in `meter`. A conditioning with
        batch size 1 is shared by the whole batch."""
        self.meter.forward += 1
        cond = conditioning.expand(cond, z.shape[0])
        t = torch.full((z.shape[0],), float(self.timesteps[k]), dtype=timestep_dtype(z), device=z.device)
        out = self.guided(self.network_input(z, k), t, cond)
        if torch.is_grad_enabled() and out.requires_grad:
            self.meter.graph_steps.append(k)
            out = _CountBackward.apply(out, self.meter)
        return out

    def update(self, z: torch.Tensor, k: int, out: torch.Tensor, earlier=()) -> torch.Tensor:
        """z_{k+1}: the affine part of step k given its prediction and the `earlier` pairs
        ((z_{k-1}, out_{k-1}), ...), computed in float32 at least (bf16 and fp16 states are
        updated in float32 and rounded once, as diffusers' schedulers do)."""
        step, dtype = self.coefficients[k], z.dtype
        wide = dtype in (torch.float16, torch.bfloat16)
        if wide:
            z, out = z.float(), out.float()
        z_next = step.a * z + step.b * out
        if step.earlier:
            if len(earlier) < len(step.earlier):
                raise RuntimeError(
                    f"step {k} uses {len(step.earlier)} earlier states and predictions, got {len(earlier)}"
                )
            for (e, b), (z_j, out_j) in zip(step.earlier, earlier):
                z_next = z_next + (e * z_j.to(z_next) if e else 0) + (b * out_j.to(z_next) if b else 0)
        if step.s:
            if self.noise is None:
                raise RuntimeError(f"step {k} draws noise (s_k = {step.s:.3g}): call fix_noise first")
            z_next = z_next + step.s * self.noise[k].to(z_next)
        return z_next.to(dtype)

    def advance(self, z: torch.Tensor, k: int, out: torch.Tensor, earlier=()) -> tuple[torch.Tensor, tuple]:
        """(z_{k+1}, the earlier pairs step k+1 uses): `update` plus the bookkeeping every
        loop over the steps shares."""
        z_next = self.update(z, k, out, earlier)
        keep = self.order - 1
        return z_next, (((z, out), *earlier)[:keep] if keep else ())

    def predicted_sample(self, z: torch.Tensor, k: int, out: torch.Tensor) -> torch.Tensor:
        """x0_hat_k = p_k z_k + q_k out_k, the clean sample predicted at state k."""
        step = self.coefficients[k]
        return step.p * z + step.q * out

    def step(self, z: torch.Tensor, k: int, cond: Cond, earlier=()) -> torch.Tensor:
        """z_{k+1} as a pure function of (z_k, k, cond, the earlier pairs) and the network's weights."""
        return self.update(z, k, self.predict(z, k, cond), earlier)

    def proceed(self, z: torch.Tensor, k: int, cond: Cond, earlier=()) -> tuple[torch.Tensor, tuple]:
        """(z_{k+1}, the earlier pairs step k+1 uses): one step of a loop over the chain."""
        return self.advance(z, k, self.predict(z, k, cond), earlier)

    def influence(self) -> tuple[float, list[float]]:
        """Along the affine path alone: (d z_T / d z_0, [d z_T / d out_k for each k]), scalars
        from one backward recursion over the coefficients (for a single-step sampler,
        prod_k a_k and b_k prod_{j>k} a_j)."""
        state = [0.0] * (self.steps + 1)
        state[self.steps] = 1.0
        out = [0.0] * self.steps
        for k in reversed(range(self.steps)):
            step, after = self.coefficients[k], state[k + 1]
            state[k] += step.a * after
            out[k] += step.b * after
            for j, (e, b) in enumerate(step.earlier, start=1):
                if k - j >= 0:
                    state[k - j] += e * after
                    out[k - j] += b * after
        return state[0], out

    def sample(
        self, latent: torch.Tensor, cond: Cond, graph_from: int | None = 0, checkpoint: bool = False
    ) -> torch.Tensor:
        """Run every step from z_0 = start(latent). Steps before `graph_from` run without a
        graph (None: none keeps one); `checkpoint` recomputes each graph step's activations
        during backward (reentrant, so the embeddings and the earlier pairs go as arguments of
        their own, or no gradient reaches them)."""
        stop = self.steps if graph_from is None else graph_from
        earlier = self.past
        with torch.set_grad_enabled(torch.is_grad_enabled() and stop == 0):
            z = self.start(latent)
        with torch.no_grad():
            for k in range(stop):
                z, earlier = self.proceed(z, k, cond, earlier)
        for k in range(stop, self.steps):
            if not checkpoint:
                z, earlier = self.proceed(z, k, cond, earlier)
                continue
            if not z.requires_grad:  # reentrant: gradients pass only through inputs that require them
                z = z.detach().requires_grad_()
            flat = [tensor for pair in earlier for tensor in pair]
            z_next, out = torch.utils.checkpoint.checkpoint(
                self._checkpointed_step,
                z,
                conditioning.primary(cond),
                k,
                cond,
                *flat,
                use_reentrant=True,
                preserve_rng_state=False,
            )
            earlier = ((z, out), *earlier)[: self.order - 1] if self.order > 1 else ()
            z = z_next
        return z

    def _checkpointed_step(self, z, embeddings, k, cond, *flat):
        earlier = tuple(zip(flat[::2], flat[1::2]))
        out = self.predict(z, k, conditioning.with_primary(cond, embeddings))
        return self.update(z, k, out, earlier), out

    def trajectory(self, latent: torch.Tensor, cond: Cond, keep=()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run all steps from z_0 = start(latent) without a graph; return z_T and the states
        z_k for k in `keep`."""
        kept, earlier = {}, self.past
        with torch.no_grad():
            z = self.start(latent.detach())
            for k in range(self.steps):
                if k in keep:
                    kept[k] = z
                z, earlier = self.proceed(z, k, cond, earlier)
        return z, kept

    def warm_up(self, latent: torch.Tensor, cond: Cond, steps: int) -> tuple[torch.Tensor, tuple]:
        """The first `steps` steps from z_0 = start(latent) without a graph: (z_steps, the earlier
        pairs the next step uses), what `tail(steps, past)` continues from."""
        earlier = self.past
        with torch.no_grad():
            z = self.start(latent.detach())
            for k in range(steps):
                z, earlier = self.proceed(z, k, cond, earlier)
        return z, earlier


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def vp_prediction(prediction_type: str, alpha: float, sigma: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """The predicted noise and clean sample as linear maps of (y, out), for a network whose
    input y sits at the variance-preserving level y ~ alpha x_0 + sigma noise and which predicts
    `prediction_type`: ((eps per y, eps per out), (x0 per y, x0 per out))."""
    if prediction_type == "epsilon":
        return (0.0, 1.0), (1 / alpha, -sigma / alpha)
    if prediction_type == "v_prediction":
        return (sigma, alpha), (alpha, -sigma)
    if prediction_type == "sample":
        return (1 / sigma, -alpha / sigma), (0.0, 1.0)
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def scheduler_from(cls, config: dict, **overrides):
    """The diffusers scheduler `cls` built from a pipeline's scheduler configuration (the keys
    `cls` takes; the others belong to another scheduler class) and `overrides`."""
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{key: value for key, value in {**config, **overrides}.items() if key in accepted})


def refuse_settings(name: str, config: dict, refused: Sequence[tuple[str, bool, str]]) -> None:
    """ValueError naming the first scheduler setting `name` cannot follow: each of `refused` is
    (key, the truth value it cannot take, why); a key the configuration leaves out passes."""
    for key, value, why in refused:
        if key in config and bool(config[key]) == value:
            raise ValueError(f"{name} refuses {key}={config[key]!r}: {why}")


def check_steps(name: str, steps: int, max_steps: int) -> None:
    if not isinstance(steps, int) or not 1 <= steps <= max_steps:
        raise ValueError(f"{name} runs 1..{max_steps} steps (num_train_timesteps), got T = {steps}")
