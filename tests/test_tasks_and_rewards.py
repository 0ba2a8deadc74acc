"""Every task with every estimator, rewards loaded from users and checked for gradients, metrics
on cases with known answers."""

from __future__ import annotations

import json

import pytest
import torch

from evals import images, metrics
from evals.cli import main
from evals.domains import DOMAINS
from evals.rewards import build_reward
from evals.rewards.checks import NotDifferentiable, RewardShapeError, check_differentiable
from sdo.models import load_model, store
from sdo.models.data import load_split
from sdo.models.digits import EmbeddedDigits

ESTIMATOR_FLAGS = {
    "full": [],
    "truncated": ["--option", "tail=1"],
    "adjoint": [],
    "doodl": [],
    "shortcut": ["--option", "at=all"],
}
HELD_OUT_FLAGS = ["--task-option", "eval_samples=4", "--task-option", "monitor_samples=2"]


def _run(tmp_path, *flags: str, code: int | None = None) -> dict:
    """The record of one small run; `code`, when given, is the exit status it must end with."""
    out = tmp_path / "run.json"
    status = main(["--threads", "2", "run", "--steps", "2", "--iters", "2", "--batch", "2", "--out", str(out), *flags])
    record = json.loads(out.read_text())
    assert code is None or status == code, (status, record.get("reason"))
    return record


def _task_method_model():
    """Every task x estimator x embedded model: the fast tier runs each estimator once, on one
    task and model in turn (every task and model appears); the full tier runs the rest."""
    tasks, models = ("latent", "conditioning", "finetune"), ("embedded", "embedded-flow")
    params = []
    for i, method in enumerate(sorted(ESTIMATOR_FLAGS)):
        fast = (tasks[i % len(tasks)], models[i % len(models)])
        params += [
            pytest.param(task, method, model, marks=[] if (task, model) == fast else [pytest.mark.slow])
            for task in tasks
            for model in models
        ]
    return params


@pytest.mark.parametrize("task, method, model", _task_method_model())
def test_every_task_runs_with_every_estimator(tmp_path, task, method, model):
    held_out = HELD_OUT_FLAGS if task != "latent" else []
    record = _run(tmp_path, "--task", task, "--method", method, "--model", model, *ESTIMATOR_FLAGS[method], *held_out)
    if task == "latent" and method == "truncated":
        assert record["status"] == "not_applicable" and "initial latent" in record["reason"]
        return
    assert record["status"] == "ok", record.get("reason")
    assert len(record["iterations"]) == 2 and all(row["nfe_backward"] > 0 for row in record["iterations"])
    final = record["final"]
    assert {"reward_mean", "reward_ci95", "fid", "kid", "nn_distance", "diversity", "target_accuracy"} <= set(final)
    assert final["samples"] == (2 if task == "latent" else 4)
    assert ("prompt_alignment" in final) == (task == "finetune")
    assert set(record["start"]) | {"drift"} == set(final)


@pytest.mark.parametrize("reward", ["style", "inpaint", "superres"])
def test_latent_objectives_run(tmp_path, reward):
    record = _run(tmp_path, "--method", "shortcut", "--reward", reward, "--reward-option", "reference_index=3")
    assert record["status"] == "ok" and record["reward_check_error"] <= 1e-2
    assert "target_accuracy" not in record["final"]


def test_custom_reward_and_metric_from_a_file(tmp_path):
    module = tmp_path / "my_metric.py"
    module.write_text(
        "def brightness(images):\n    return images.mean(dim=(1, 2, 3))\n\n"
        "def dark_pixels(images):\n    return (images < 0).float().mean(dim=(1, 2, 3))\n"
    )
    record = _run(
        tmp_path,
        "--method",
        "full",
        "--reward",
        f"{module}:brightness",
        "--metric",
        f"{module}:dark_pixels",
        "--lr",
        "0.3",
        "--iters",
        "3",
    )
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
    record = _run(tmp_path, "--method", "shortcut", "--reward", f"{module}:hidden", code=1)
    assert record["status"] == "failed" and "autograd sees no gradient" in record["reason"]
    record = _run(tmp_path, "--method", "shortcut", "--reward", f"{module}:blocked", code=1)
    assert record["status"] == "failed" and "carry no graph" in record["reason"]


def test_rewards_of_the_wrong_kind_are_refused_by_name(tmp_path):
    module = tmp_path / "odd.py"
    module.write_text(
        "import torch\n"
        "def column(images):\n    return images.mean(dim=(1, 2, 3)).unsqueeze(1)\n\n"
        "def grid(images):\n    return images.mean(dim=(1, 2))\n\n"
        "def as_numpy(images):\n    return images.detach().mean(dim=(1, 2, 3)).numpy()\n\n"
        "def nan(images):\n    return images.mean(dim=(1, 2, 3)) * float('nan')\n"
    )
    assert _run(tmp_path, "--method", "shortcut", "--reward", f"{module}:column", code=0)["status"] == "ok"
    record = _run(tmp_path, "--method", "shortcut", "--reward", f"{module}:grid", code=1)
    assert record["reason"].startswith("RewardShapeError") and "(4,) or (4, 1)" in record["reason"]
    assert "got shape (4, 16)" in record["reason"]
    record = _run(tmp_path, "--method", "shortcut", "--reward", f"{module}:as_numpy", code=1)
    assert record["reason"].startswith("RewardShapeError") and "numpy.ndarray" in record["reason"]
    assert "differentiable" in record["reason"]  # a numpy reward is told why it must be torch
    record = _run(tmp_path, "--method", "shortcut", "--reward", f"{module}:nan", code=1)
    assert record["reason"].startswith("NotDifferentiable") and "non-finite" in record["reason"]
    record = _run(tmp_path, "--method", "shortcut", "--reward", f"{tmp_path}/missing.py:score", code=1)
    assert "missing.py does not exist" in record["reason"]
    with pytest.raises(RewardShapeError, match="shape"):
        check_differentiable(lambda x: x.sum(), load_split("held_out")[0][:3])


def test_a_diverging_run_keeps_its_iterations(tmp_path):
    module = tmp_path / "steep.py"
    module.write_text("def steep(images):\n    return 1e30 * images.mean(dim=(1, 2, 3)) ** 3\n")
    record = _run(
        tmp_path,
        "--method",
        "full",
        "--reward",
        f"{module}:steep",
        "--lr",
        "1e30",
        "--iters",
        "4",
        "--reward-tolerance",
        "1",
        code=1,
    )
    assert record["status"] == "diverged" and "non-finite" in record["reason"]
    assert 1 <= len(record["iterations"]) <= 4 and record["iterations"][0]["iter"] == 0


def test_broken_model_files_are_named(tmp_path):
    for name in ("denoiser.safetensors", "denoiser.json", "classifier.safetensors", "classifier.json"):
        (tmp_path / name).write_bytes((store.DEFAULT_DIR / name).read_bytes())
    (tmp_path / "classifier.json").write_text("{not json")
    with pytest.raises(ValueError, match="classifier.json is not a valid classifier config"):
        store.load("classifier", tmp_path)
    weights = tmp_path / "denoiser.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="denoiser.safetensors cannot be read"):
        store.load("denoiser", tmp_path)
    (tmp_path / "denoiser.json").unlink()
    with pytest.raises(FileNotFoundError, match="denoiser.json is missing"):
        store.load("denoiser", tmp_path)


def test_saturated_clamp_is_refused():
    images = load_split("held_out")[0][:4].double()
    with pytest.raises(NotDifferentiable, match="zero everywhere"):
        check_differentiable(lambda x: (x.clamp(5, 6)).mean(dim=(1, 2, 3)), images)


def test_built_in_rewards_are_differentiable():
    model = load_model("embedded")
    context = DOMAINS["digits"].context(model, "cpu")
    held_out = context.held_out
    probe = held_out[1:5] + 0.1 * torch.randn(held_out[1:5].shape, generator=torch.Generator().manual_seed(0))
    for name in ("classifier", "style", "inpaint", "superres"):
        assert check_differentiable(build_reward(name, "digits", {}, context), probe) <= 1e-4, name


def test_metrics_known_answers():
    classifier = store.load("classifier")
    images, labels = load_split("held_out")
    assert abs(metrics.fid(images, images, classifier)) < 1e-3
    same, same_std = metrics.kid(images, images, classifier)
    assert abs(same) <= 2 * same_std  # zero within the subset noise...
    gap = metrics.kid(-images, images, classifier)[0]
    assert gap > 100 * same_std and 0.01 < gap < 100  # ...small beside a real gap, on KID's usual scale
    assert metrics.kid(images[:100], images[100:], classifier)[0] < 0.05
    assert metrics.label_accuracy(images, labels, classifier) >= store.metrics("classifier")["held_out_accuracy"] - 1e-6
    assert metrics.diversity(images[:1].repeat(5, 1, 1, 1), classifier, images) == pytest.approx(0, abs=1e-6)
    assert metrics.diversity(images[:20], classifier, images) > 0
    real = metrics.nearest_real_distance(images[:50], images[50:], classifier)
    noise = metrics.nearest_real_distance(torch.rand(50, 1, 16, 16) * 2 - 1, images[50:], classifier)
    assert 0.5 < float(real.mean()) < 2 and float(noise.mean()) > 3 * float(real.mean())
    assert metrics.fid(images[:100], images[100:], classifier) < metrics.fid(-images[:100], images[100:], classifier)


def test_a_failing_metric_keeps_the_run_as_a_row(tmp_path):
    record = _run(
        tmp_path, "--method", "shortcut", "--metric-option", f"inception_weights={tmp_path / 'none.pth'}", code=1
    )
    assert record["status"] == "failed" and "Inception weights" in record["reason"]
    assert len(record["iterations"]) == 2


def test_inception_and_clip_need_local_weights(tmp_path):
    digits = load_split("held_out")[0][:4]
    with pytest.raises(FileNotFoundError, match="Inception weights .* not found"):
        images.inception_fid(digits, digits, tmp_path / "missing.pth")
    record = _run(tmp_path, "--method", "shortcut", "--metric-option", f"clip_model={tmp_path / 'missing'}", code=1)
    assert "CLIP model directory" in record["reason"] and "not found" in record["reason"]


def test_lora_copy_trains_only_adapters_and_starts_at_the_base_model():
    model = EmbeddedDigits.load()
    tuned = model.with_lora(2)
    trainable = [name for name, p in tuned.net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert not any(p.requires_grad for p in model.net.parameters())
    latent = model.latent_batch(2, torch.Generator().manual_seed(0))
    cond = model.encode(["1", "2"])
    base, _ = model.make_chain(3).trajectory(latent, cond)
    adapted, _ = tuned.make_chain(3).trajectory(latent, cond)
    torch.testing.assert_close(adapted, base)
    adapters = lambda seed: [p for p in model.with_lora(2, seed).net.parameters() if p.requires_grad]  # noqa: E731
    torch.rand(3)  # the global RNG must not matter
    assert all(torch.equal(a, b) for a, b in zip(adapters(1), adapters(1)))
    assert not all(torch.equal(a, b) for a, b in zip(adapters(1), adapters(2)))
    with pytest.raises(ValueError, match="lora_rank must be >= 0"):
        model.with_lora(-1)
    with pytest.raises(ValueError, match="prompts are '0'..'9'"):
        model.encode(["a cat"])
