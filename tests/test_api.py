"""The stable Python API of docs/api.md is there and works: a model's methods and attributes on
a tiny call, a chain's sampling and timesteps, a problem's gradient through `sdo.make_estimator`,
and the plug-in decorators importable from where the page names them."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import torch

import sdo
from sdo.models import load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def model():
    return load_model("embedded")


def test_a_model_samples_encodes_and_decodes_on_a_tiny_call(model):
    chain = model.make_chain(2, cfg_scale=2.0)
    assert chain.steps == 2 and len(chain.timesteps) == 2 and chain.timesteps[0] > chain.timesteps[1]
    latent = model.latent_batch(1, torch.Generator().manual_seed(0))
    assert tuple(latent.shape) == (1, *model.state_shape) == (1, 1, 16, 16)
    again = model.latent_batch(1, torch.Generator().manual_seed(0))
    assert torch.equal(latent, again)
    cond, null = model.encode(["3"]), model.null_cond()
    assert cond.shape == null.shape and not torch.equal(cond, null)
    with torch.no_grad():
        images = model.decode(chain.sample(latent, cond, graph_from=None))
    assert images.shape == latent.shape and torch.isfinite(images).all() and not torch.equal(images, latent)


@pytest.mark.parametrize("wrt", ["latent", "cond", "weights"])
def test_a_problem_s_gradient_through_make_estimator(model, wrt):
    """`sdo.Problem` and `sdo.make_estimator(...)(problem, loss).grads`: one finite gradient per
    parameter, shaped as the parameter, not all zero (the weights: a `with_lora` copy's adapters,
    whose B factors start at zero, so only they get a gradient at first)."""
    tuned = model.with_lora(2) if wrt == "weights" else model
    chain = tuned.make_chain(2, cfg_scale=2.0)
    latent = tuned.latent_batch(1, torch.Generator().manual_seed(0))
    problem = sdo.Problem(chain, latent, tuned.encode(["3"]), wrt)
    estimate = sdo.make_estimator("shortcut", at="first")(problem, lambda z: -tuned.decode(z).mean())
    assert len(estimate.grads) == len(problem.params) > 0
    for grad, param in zip(estimate.grads, problem.params):
        assert grad.shape == param.shape and torch.isfinite(grad).all()
    assert sum(float(grad.abs().sum()) for grad in estimate.grads) > 0
    if wrt == "weights":
        trainable = [name for name, p in tuned.net.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in name for name in trainable)
        assert not any(p.requires_grad for p in model.net.parameters())  # the copy's adapters only


def test_the_register_decorators_import_from_where_the_page_names_them():
    text = (ROOT / "docs" / "api.md").read_text()
    section = text.split("## Registering plug-ins", 1)[1]
    named = re.findall(r"`((?:sdo|evals)(?:\.\w+)+)(?:\(|`)", section)
    wanted = {"register_model", "register_sampler", "register_estimator", "register_task", "register_reward"}
    assert wanted <= {name.rsplit(".", 1)[1] for name in named}, named
    for name in named:
        module, attribute = name.rsplit(".", 1)
        assert callable(getattr(importlib.import_module(module), attribute)), name
