"""Every task with every estimator, rewards loaded from users and checked for gradients, metrics
on cases with known answers."""

from __future__ import annotations

import json

import pytest
import torch

from evals import metrics
from evals.rewards import NotDifferentiable, build_reward, check_differentiable
from sdo.cli import main
from sdo.models import store
from sdo.models.data import load_split
from sdo.tasks.finetune import trainable_copy
from sdo.tasks.loop import make_chain

ESTIMATOR_FLAGS = {
    "full": [],
    "truncated": ["--option", "k=1"],
    "adjoint": [],
    "doodl": [],
    "shortcut": ["--option", "steps=all"],
}


def _run(tmp_path, *flags: str) -> dict:
    out = tmp_path / "run.json"
    main(["--threads", "2", "run", "--steps", "3", "--iters", "2", "--batch", "2", "--eval-samples", "4", "--out", str(out), *flags])
    return json.loads(out.read_text())


@pytest.mark.parametrize("method", sorted(ESTIMATOR_FLAGS))
@pytest.mark.parametrize("task", ["latent", "conditioning", "finetune"])
def test_every_task_runs_with_every_estimator(tmp_path, task, method):
    record = _run(tmp_path, "--task", task, "--method", method, *ESTIMATOR_FLAGS[method])
    if task == "latent" and method == "truncated":
        assert record["status"] == "not_applicable" and "initial latent" in record["reason"]
        return
    assert record["status"] == "ok", record.get("reason")
    assert len(record["iterations"]) == 2 and all(row["nfe_backward"] > 0 for row in record["iterations"])
    final = record["final"]
    assert {"reward_mean", "reward_ci95", "fid", "kid", "diversity", "target_accuracy"} <= set(final)
    assert final["fid_samples"] == (2 if task == "latent" else 4)
    assert ("prompt_alignment" in final) == (task == "finetune")
    assert set(record["baseline"]) == set(final)


@pytest.mark.parametrize("reward", ["style", "inpaint", "superres"])
def test_latent_objectives_run(tmp_path, reward):
    record = _run(tmp_path, "--method", "shortcut", "--reward", reward, "--reference-index", "3")
    assert record["status"] == "ok" and record["reward_check_error"] <= 1e-2
    assert "target_accuracy" not in record["final"]


def test_custom_reward_and_metric_from_a_file(tmp_path):
    module = tmp_path / "my_metric.py"
    module.write_text(
        "def brightness(images):\n    return images.mean(dim=(1, 2, 3))\n\n"
        "def dark_pixels(images):\n    return (images < 0).float().mean(dim=(1, 2, 3))\n"
    )
    record = _run(tmp_path, "--method", "full", "--reward", f"{module}:brightness", "--metric", f"{module}:dark_pixels",
                  "--lr", "0.3", "--iters", "3")
    assert record["status"] == "ok", record.get("reason")
    rewards = [row["reward"] for row in record["iterations"]]
    assert rewards[-1] > rewards[0]
    assert 0 <= record["final"][f"metric:{module}:dark_pixels"] <= 1


def test_reward_with_hidden_detach_is_refused(tmp_path):
    module = tmp_path / "sneaky.py"
    module.write_text(
        "def hidden(images):\n    return images.detach().mean(dim=(1, 2, 3)) + 0 * images.sum(dim=(1, 2, 3))\n\n"
        "def blocked(images):\n    return images.detach().mean(dim=(1, 2, 3))\n"
    )
    record = _run(tmp_path, "--method", "shortcut", "--reward", f"{module}:hidden")
    assert record["status"] == "failed" and "autograd sees no gradient" in record["reason"]
    record = _run(tmp_path, "--method", "shortcut", "--reward", f"{module}:blocked")
    assert record["status"] == "failed" and "carry no graph" in record["reason"]


def test_saturated_clamp_is_refused():
    images = load_split("held_out")[0][:4].double()
    with pytest.raises(NotDifferentiable, match="zero everywhere"):
        check_differentiable(lambda x: (x.clamp(5, 6)).mean(dim=(1, 2, 3)), images)


def test_built_in_rewards_are_differentiable():
    classifier = store.load("classifier")
    held_out = load_split("held_out")[0]
    probe = held_out[1:5] + 0.1 * torch.randn(held_out[1:5].shape, generator=torch.Generator().manual_seed(0))
    for spec in ("classifier", "style", "inpaint", "superres"):
        assert check_differentiable(build_reward(spec, classifier, 3, held_out[:1]), probe) <= 1e-4, spec


def test_metrics_known_answers():
    classifier = store.load("classifier")
    images, labels = load_split("held_out")
    assert abs(metrics.fid(images, images, classifier)) < 1e-3
    same, same_std = metrics.kid(images, images, classifier)
    assert abs(same) <= 2 * same_std  # zero within the subset noise...
    assert metrics.kid(-images, images, classifier)[0] > 100 * same_std  # ...which is small beside a real gap
    assert metrics.label_accuracy(images, labels, classifier) >= store.metrics("classifier")["held_out_accuracy"] - 1e-6
    assert metrics.diversity(images[:1].repeat(5, 1, 1, 1), classifier) == pytest.approx(0, abs=1e-6)
    assert metrics.diversity(images[:20], classifier) > 0
    assert metrics.fid(images[:100], images[100:], classifier) < metrics.fid(-images[:100], images[100:], classifier)


def test_a_failing_metric_keeps_the_run_as_a_row(tmp_path):
    record = _run(tmp_path, "--method", "shortcut", "--inception-weights", str(tmp_path / "none.pth"))
    assert record["status"] == "failed" and "Inception weights" in record["reason"]
    assert len(record["iterations"]) == 2


def test_inception_and_clip_need_local_weights(tmp_path):
    images = load_split("held_out")[0][:4]
    with pytest.raises(FileNotFoundError, match="Inception weights .* not found"):
        metrics.inception_fid(images, images, tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="CLIP model directory .* not found"):
        metrics.clip_score(images, ["a handwritten digit 1"] * 4, tmp_path / "missing")


def test_lora_copy_trains_only_adapters_and_starts_at_the_base_model():
    net = store.load("denoiser")
    tuned = trainable_copy(net, lora_rank=2)
    trainable = [name for name, p in tuned.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert not any(p.requires_grad for p in net.parameters())
    latent = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = net.embed(torch.tensor([1, 2]))
    base, _ = make_chain(net, 3).trajectory(latent, cond)
    adapted, _ = make_chain(tuned, 3).trajectory(latent, cond)
    torch.testing.assert_close(adapted, base)
    with pytest.raises(ValueError, match="lora_rank must be >= 0"):
        trainable_copy(net, -1)
