"""Gradient checkpointing drops no gradient: on every family (the embedded DDIM and flow digits
models, tiny SD, SDXL, SD3 and FLUX pipelines) and every parameter (initial latent, prompt
embeddings, LoRA adapters), the gradient of `full` with checkpointing equals the gradient of
`full` without it on an identically loaded model, every adapter weight gets a finite non-zero
gradient, and the recomputation is seen to happen, so a checkpoint switched off in silence
cannot pass.

Three kinds of checkpointing:
- `per_step`: the chain's own reentrant checkpoint per sampling step (`full`, `checkpoint=True`);
- `model_option`: the load option `gradient_checkpointing=true` (diffusers' non-reentrant
  checkpoints around the denoiser's transformer blocks and the VAE decoder's blocks), with the
  networks in eval mode as runs load them: diffusers 0.42.1 gates these checkpoints on
  `torch.is_grad_enabled()` alone, not on `self.training`;
- `both`: the two nested, as a memory-bound run uses them.

Pipelines load in float64: relative error per parameter tensor at most 1e-10. The embedded
models load in float32, as runs use them: at most 1e-5 (float32 round-off, should the
recomputation sum in another order; on one CPU thread the gradients agree bit for bit).
T = 2 steps, batch 2, one thread.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from conftest import wavy
from tiny_pipelines import build_tiny_flux, build_tiny_sd, build_tiny_sd3, build_tiny_sdxl

from sdo import Problem, make_estimator
from sdo.models import load_model
from sdo.tasks.loop import image_loss

pytestmark = pytest.mark.slow

STEPS = 2
BUILDERS = {"sd": build_tiny_sd, "sdxl": build_tiny_sdxl, "sd3": build_tiny_sd3, "flux": build_tiny_flux}
EMBEDDED = ("embedded", "embedded-flow")
FAMILIES = (*EMBEDDED, *BUILDERS)
# FLUX.1-dev guides through its guidance embedding, one call per step
CFG = {"embedded": 2.0, "embedded-flow": 2.0, "sd": 2.0, "sdxl": 4.0, "sd3": 4.0, "flux": 1.0}
OPTIONS = {  # 8x8 latents (64 tokens) and 16 T5 tokens keep the tiny networks fast
    "sd": {},
    "sdxl": {"resolution": 16},
    "sd3": {"resolution": 8, "max_sequence_length": 16},
    "flux": {"resolution": 16, "max_sequence_length": 16},
}
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
WRT = ("latent", "cond", "weights")
KINDS = ("per_step", "model_option", "both")
RECOMPUTED = {"per_step": (1, 0), "model_option": (1, 1), "both": (2, 1)}  # extra runs: (denoiser block, decoder block)


def prompts(family: str) -> list[str]:
    return ["3", "7"] if family in EMBEDDED else ["a photo of a cat", "a red dog"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread."""


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpointing")
    for family, build in BUILDERS.items():
        build(root / family)
    return {family: root / family for family in BUILDERS}


@pytest.fixture(scope="module")
def models(saved):
    """Models by (family, model option, wrt), each loaded once; for wrt="weights" a LoRA copy."""
    cache = {}

    def get(family: str, option: bool, wrt: str):
        key = family, option, wrt
        if key not in cache:
            if wrt == "weights":
                cache[key] = perturbed_lora(get(family, option, "latent"))
            elif family in EMBEDDED:
                cache[key] = load_model(family)
            else:
                cache[key] = load_model(
                    str(saved[family]), dtype="float64", gradient_checkpointing=option, **OPTIONS[family]
                )
        return cache[key]

    return get


@pytest.fixture(scope="module")
def references(models):
    """The unchecked gradient of `full` by (family, wrt), computed once."""
    cache = {}

    def get(family: str, wrt: str):
        if (family, wrt) not in cache:
            cache[family, wrt] = run(models(family, False, wrt), family, wrt, make_estimator("full"))[1]
        return cache[family, wrt]

    return get


def perturbed_lora(model):
    """Rank-2 adapters with every weight moved off its init: LoRA starts with B = 0, which leaves
    every A without a gradient and would make the non-zero check below meaningless."""
    tuned = model.with_lora(2, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in tuned.net.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return tuned


def run(model, family: str, wrt: str, estimator):
    problem = Problem(
        model.make_chain(STEPS, CFG[family]),
        model.latent_batch(2, torch.Generator().manual_seed(2)),
        model.encode(prompts(family)),
        wrt,
    )
    return problem, estimator(problem, image_loss(model, wavy))


def checkpointed_blocks(model) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
    """What diffusers checkpoints under `gradient_checkpointing`: every transformer block of the
    denoiser (where the LoRA adapters sit), and the VAE decoder's mid and up blocks."""
    denoiser = [m for m in model.net.denoiser.modules() if type(m).__name__.endswith("TransformerBlock")]
    return denoiser, [model.vae.decoder.mid_block, *model.vae.decoder.up_blocks]


@contextlib.contextmanager
def counting_calls(modules):
    """Calls of each module's `forward`, recomputations in backward included (torch runs no
    forward hooks while a non-reentrant checkpoint recomputes, so `forward` itself is wrapped)."""
    counts = [0] * len(modules)

    def counted(index, forward):
        def call(*args, **kwargs):
            counts[index] += 1
            return forward(*args, **kwargs)

        return call

    for i, module in enumerate(modules):
        module.forward = counted(i, module.forward)
    try:
        yield counts
    finally:
        for module in modules:
            del module.forward


def relative_errors(grads, reference) -> list[float]:
    """|g - r| / |r| per parameter tensor (|g| where r is zero), so no tensor hides in a total."""
    return [float((g - r).norm() / (r.norm() if r.norm() > 0 else 1)) for g, r in zip(grads, reference)]


def unreachable_adapters(model) -> set[str]:
    """Adapter weights no loss reaches: an attention with `context_pre_only` (SD3's last block)
    discards the text tokens' outputs, so the LoRA on its text queries (`add_q_proj`) has a zero
    gradient with or without checkpointing."""
    prefixes = tuple(
        f"{name}.add_q_proj."
        for name, module in model.net.named_modules()
        if getattr(module, "context_pre_only", False) and hasattr(module, "add_q_proj")
    )
    return {name for name, p in model.net.named_parameters() if p.requires_grad and name.startswith(prefixes)}


def assert_every_adapter_has_a_gradient(model, grads):
    names = [name for name, p in model.net.named_parameters() if p.requires_grad]
    assert names and all("lora_" in name for name in names) and len(grads) == len(names)
    unreachable = unreachable_adapters(model)
    for name, grad in zip(names, grads):
        assert bool(torch.isfinite(grad).all()), name
        assert bool(grad.abs().max() > 0) != (name in unreachable), name


CASES = [
    (family, wrt, kind)
    for family in FAMILIES
    for wrt in WRT
    for kind in (("per_step",) if family in EMBEDDED else KINDS)
]


@pytest.mark.parametrize("family, wrt, kind", CASES)
def test_checkpointing_keeps_every_gradient(models, references, family, wrt, kind):
    option, per_step = kind != "per_step", kind != "model_option"
    model = models(family, option, wrt)
    networks = [model.net] if family in EMBEDDED else [model.net.denoiser, model.vae]
    gated = [m for network in networks for m in network.modules() if hasattr(m, "gradient_checkpointing")]
    assert gated and not any(module.training for module in gated)  # eval mode, as runs load them
    denoiser_blocks, decoder_blocks = ([], []) if family in EMBEDDED else checkpointed_blocks(model)
    with counting_calls(denoiser_blocks + decoder_blocks) as calls:
        _, estimate = run(model, family, wrt, make_estimator("full", checkpoint=per_step))
    reference = references(family, wrt)

    errors = relative_errors(estimate.grads, reference.grads)
    assert max(errors) <= TOLERANCE[model.dtype], (max(errors), errors.index(max(errors)))
    if wrt == "weights":
        assert_every_adapter_has_a_gradient(model, reference.grads)
        assert_every_adapter_has_a_gradient(model, estimate.grads)
    else:
        assert float(reference.grads[0].norm()) > 0

    # the recomputation happened: per step, the chain calls each step's network again in
    # backward; with the model option, every checkpointed block runs once more in backward
    assert (reference.nfe_forward, estimate.nfe_forward) == (STEPS, STEPS * (2 if per_step else 1))
    assert reference.nfe_backward == estimate.nfe_backward == STEPS
    if family not in EMBEDDED:
        assert model.net.denoiser.is_gradient_checkpointing == model.vae.is_gradient_checkpointing == option
        denoiser, decoder = RECOMPUTED[kind]
        expected = [STEPS * (1 + denoiser)] * len(denoiser_blocks) + [1 + decoder] * len(decoder_blocks)
        assert denoiser_blocks and calls == expected


@pytest.mark.parametrize("wrt", ["cond", "weights"])
@pytest.mark.parametrize("family", EMBEDDED)
def test_truncated_checkpointing_keeps_the_tail_gradient(models, family, wrt):
    """DRaFT-1 with per-step checkpointing: the last step's gradient, as without checkpointing."""
    model = models(family, False, wrt)
    plain = run(model, family, wrt, make_estimator("truncated", tail=1))[1]
    checked = run(model, family, wrt, make_estimator("truncated", tail=1, checkpoint=True))[1]
    errors = relative_errors(checked.grads, plain.grads)
    assert max(errors) <= TOLERANCE[model.dtype], max(errors)
    assert checked.nfe_forward == STEPS + 1 and checked.graph_steps == [STEPS - 1]
    if wrt == "weights":
        assert_every_adapter_has_a_gradient(model, checked.grads)
