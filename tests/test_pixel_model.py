"""Unconditional pixel-space UNets (`pixel:`) behind the model interface, on a tiny random
`DDPMPipeline` saved in the real layout: loading (directory, bare source, local Hugging Face
cache), parity with diffusers' `DDIMPipeline` for each prediction type, gradients against
finite differences, LoRA, every estimator on the tasks that apply, the refusals of what an
unconditional model cannot do, and one `sdo run`."""

from __future__ import annotations

import json
import math

import huggingface_hub.constants
import pytest
import torch
from conftest import directional_fd, wavy
from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel
from hf_cache import cache_as
from tiny_pipelines import TINY_PIXEL_UNET, build_tiny_ddpm

from evals.bench import bench_problem
from evals.cli import main
from evals.experiment import RunSpec, run
from evals.run import settings_of
from sdo import NotApplicable, Problem, make_estimator
from sdo.models import check_model, load_model, resolve
from sdo.models.pixel import LORA_TARGETS, PixelUNet
from sdo.tasks import TASKS
from sdo.tasks.loop import image_loss


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread."""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_ddpm(tmp_path_factory.mktemp("tiny_ddpm"))


@pytest.fixture(scope="module")
def model(tiny_dir):
    return PixelUNet.load(tiny_dir)


@pytest.fixture(scope="module")
def model64(tiny_dir):
    return PixelUNet.load(tiny_dir, dtype="float64")


def test_loads_the_saved_layout(tiny_dir, model):
    assert resolve(str(tiny_dir)).cls is PixelUNet and resolve(f"pixel:{tiny_dir}").location == str(tiny_dir)
    assert model.state_shape == (3, 16, 16) and model.domain == "rgb" and model.sampler == "ddim"
    assert model.prompts == ("",)
    cond = model.encode(["", ""])
    assert cond.shape == (2, 1) and not cond.any() and torch.equal(model.null_cond(), torch.zeros(1, 1))
    images = torch.randn(2, 3, 16, 16)
    assert model.decode(images) is images
    assert model.options == {
        "model": str(tiny_dir),
        "resolution": 16,
        "dtype": "float32",
        "gradient_checkpointing": False,
        "allow_download": False,
    }
    saved = json.loads((tiny_dir / "scheduler" / "scheduler_config.json").read_text())
    assert saved["clip_sample"] and model.scheduler_config == {**saved, "clip_sample": False, "thresholding": False}
    assert not any(p.requires_grad for p in model.net.parameters())
    larger = PixelUNet.load(tiny_dir, resolution=32)
    assert larger.state_shape == (3, 32, 32) and larger.options["resolution"] == 32
    sample = larger.make_chain(2).sample(larger.latent_batch(1, torch.Generator()), larger.null_cond())
    assert sample.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="multiple of the UNet's downsampling factor 2"):
        PixelUNet.load(tiny_dir, resolution=15)
    with pytest.raises(ValueError, match="dtype must be one of"):
        load_model(f"pixel:{tiny_dir}", dtype="float8")


@pytest.mark.parametrize("prediction_type, ddim", [("epsilon", False), ("v_prediction", False), ("sample", True)])
def test_chain_reproduces_the_diffusers_ddim_pipeline(tmp_path, prediction_type, ddim):
    """Same initial noise (the pipeline's generator), 4 steps, eta 0, the pipeline's schedule with
    only `clip_sample` off (a DDPMPipeline's DDPMScheduler config: `set_alpha_to_one` on and
    `steps_offset` 0 as DDIMScheduler takes them; a DDIMPipeline's own): the chain's sample
    equals the pipeline's last `scheduler.step` output to float32 round-off, and its images
    after the pipeline's scale and clamp."""
    directory = build_tiny_ddpm(tmp_path, prediction_type=prediction_type, ddim=ddim)
    ours = load_model(str(directory))
    assert isinstance(ours, PixelUNet)
    pipeline = DDIMPipeline.from_pretrained(directory, local_files_only=True)
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config, clip_sample=False)
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline.scheduler.config.prediction_type == prediction_type
    states, step = [], pipeline.scheduler.step

    def recorded(*args, **kwargs):
        output = step(*args, **kwargs)
        states.append(output.prev_sample)
        return output

    pipeline.scheduler.step = recorded
    images = pipeline(
        batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=4, eta=0.0, output_type="pt"
    ).images
    with torch.no_grad():
        sample = ours.make_chain(4).sample(
            ours.latent_batch(2, torch.Generator().manual_seed(0)), ours.null_cond(), graph_from=None
        )
    expected = states[-1]
    assert len(states) == 4 and expected.std() > 0.1
    assert (sample - expected).abs().max() <= 1e-6 * max(1.0, float(expected.abs().max()))
    assert (((sample / 2 + 0.5).clamp(0, 1)) - images).abs().max() <= 1e-5


def test_lora_starts_as_the_base_model(model):
    tuned = model.with_lora(2, seed=3)
    trainable = [name for name, p in tuned.net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    adapted = {target for target in LORA_TARGETS if any(f".{target}.lora_" in name for name in trainable)}
    assert adapted == set(LORA_TARGETS)
    assert tuned.options["lora_rank"] == 2 and "lora_rank" not in model.options
    assert not any("lora_" in name for name, _ in model.net.named_parameters())
    x, t = model.latent_batch(2, torch.Generator().manual_seed(0)), torch.tensor([500.0, 20.0])
    with torch.no_grad():
        assert torch.equal(tuned.net(x, t, model.null_cond()), model.net(x, t, model.null_cond()))
    again = model.with_lora(2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(tuned.net.parameters(), again.net.parameters()))
    full = model.with_lora(0)
    assert all(p.requires_grad for p in full.net.parameters())
    with pytest.raises(ValueError, match="lora_rank must be >= 0"):
        model.with_lora(-1)


def _problem(model, wrt, steps=2):
    chain = model.make_chain(steps)
    return Problem(chain, model.latent_batch(2, torch.Generator().manual_seed(2)), model.encode(["", ""]), wrt)


@pytest.mark.parametrize("wrt", ["latent", "weights"])
def test_full_gradient_matches_finite_differences(model64, wrt):
    """Directional derivatives of the loss on the images, by autograd and central differences."""
    base = model64.with_lora(2) if wrt == "weights" else model64
    if wrt == "weights":  # move B off zero so every adapter weight has a gradient
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in base.net.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    problem = _problem(base, wrt)
    loss = image_loss(base, wavy)
    estimate = make_estimator("full")(problem, loss)
    assert all(float(g.abs().sum()) > 0 for g in estimate.grads)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in problem.params]
        analytic = sum(float((g * v).sum()) for g, v in zip(estimate.grads, direction))
        numeric = directional_fd(problem, loss, direction, h=1e-6)
        assert abs(analytic - numeric) <= 1e-6 * abs(numeric), (analytic, numeric)


def test_gradient_checkpointing_keeps_the_gradient(tiny_dir, model64):
    checkpointed = PixelUNet.load(tiny_dir, dtype="float64", gradient_checkpointing=True)
    assert checkpointed.net.denoiser.is_gradient_checkpointing and checkpointed.options["gradient_checkpointing"]
    plain = make_estimator("full")(_problem(model64, "latent"), image_loss(model64, wavy))
    again = make_estimator("full")(_problem(checkpointed, "latent"), image_loss(checkpointed, wavy))
    torch.testing.assert_close(again.grads[0], plain.grads[0], rtol=1e-10, atol=1e-12)


ESTIMATORS = {"full": {}, "truncated": {"tail": 1}, "adjoint": {}, "doodl": {}, "shortcut": {"at": "all"}}


@pytest.mark.parametrize("method", sorted(ESTIMATORS))
@pytest.mark.parametrize("task", ["latent", "finetune"])
def test_every_estimator_runs_the_tasks_that_apply(model, task, method):
    settings = settings_of(RunSpec(task=task, method=method, steps=2, iters=1, batch=1))
    options = TASKS[task].make_options({} if task == "latent" else {"eval_samples": 1, "monitor_samples": 2})
    estimator = make_estimator(method, **ESTIMATORS[method])
    if task == "latent" and method == "truncated":
        with pytest.raises(NotApplicable):
            TASKS[task].run(model, lambda images: images.mean(dim=(1, 2, 3)), estimator, settings, options)
        return
    result = TASKS[task].run(model, lambda images: images.mean(dim=(1, 2, 3)), estimator, settings, options)
    (row,) = result.trace.rows
    assert math.isfinite(row["loss"]) and row["nfe_backward"] > 0 and row["grad_norm"] > 0
    assert result.samples.shape == (1, 3, 16, 16)


def test_what_an_unconditional_model_cannot_do_is_refused(model):
    """Optimising the conditioning, guidance and prompts other than the null prompt: each a clear
    error, where the task, the bench or the record meets it."""
    brightness = lambda images: images.mean(dim=(1, 2, 3))  # noqa: E731
    settings = settings_of(RunSpec(task="conditioning", method="shortcut", steps=2, iters=1, batch=1))
    options = TASKS["conditioning"].make_options({"eval_samples": 1, "monitor_samples": 1})
    with pytest.raises(ValueError, match="unconditional: it has no conditioning to optimise"):
        TASKS["conditioning"].run(model, brightness, make_estimator("shortcut"), settings, options)
    with pytest.raises(NotApplicable, match="no conditioning to differentiate"):
        bench_problem(model, brightness, "cond", steps=2, batch=2, seed=0)
    with pytest.raises(ValueError, match="classifier-free guidance has nothing to mix"):
        model.make_chain(2, cfg_scale=3.0)
    with pytest.raises(ValueError, match="its only prompt is ''"):
        model.encode(["a photo of a face"])


def test_run_record(tiny_dir, tmp_path):
    """`sdo run` of the latent task with the shortcut ends ok; the conditioning task is recorded
    as not applicable, saying why."""
    out = tmp_path / "r.json"
    code = main(
        [
            "--threads",
            "1",
            "run",
            "--model",
            f"pixel:{tiny_dir}",
            "--task",
            "latent",
            "--method",
            "shortcut",
            "--steps",
            "3",
            "--iters",
            "1",
            "--batch",
            "2",
            "--reward",
            "mean_square",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    record = json.loads(out.read_text())
    assert code == 0 and record["status"] == "ok", record.get("reason")
    assert record["model_options"]["model"] == str(tiny_dir) and record["final"]["samples"] == 2
    assert record["iterations"][0]["nfe_forward"] == 3 and record["iterations"][0]["nfe_backward"] == 1
    failed = run(
        RunSpec(
            task="conditioning",
            method="full",
            steps=2,
            iters=1,
            batch=1,
            model=str(tiny_dir),
            reward="mean_square",
            task_options={"eval_samples": 1, "monitor_samples": 1},
            device="cpu",
        )
    )
    assert failed["status"] == "not_applicable" and "no conditioning to optimise" in failed["reason"]


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
def test_a_model_id_loads_from_the_local_cache(tiny_dir, model, tmp_path, monkeypatch):
    cache = cache_as(tiny_dir, "tiny-org/tiny-ddpm", tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve("tiny-org/tiny-ddpm").cls is PixelUNet and check_model("pixel:tiny-org/tiny-ddpm").cls is PixelUNet
    cached = load_model("pixel:tiny-org/tiny-ddpm")
    assert cached.options["model"] == "tiny-org/tiny-ddpm"
    x, t = model.latent_batch(1, torch.Generator().manual_seed(0)), torch.tensor([300.0])
    with torch.no_grad():
        assert torch.equal(cached.net(x, t, cached.null_cond()), model.net(x, t, model.null_cond()))


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
def test_missing_or_foreign_weights_are_named(tmp_path):
    with pytest.raises(ValueError, match="a pixel model needs a location"):
        load_model("pixel")
    absent = tmp_path / "absent"
    with pytest.raises(FileNotFoundError, match="allow_download=true") as error:
        load_model(f"pixel:{absent}")
    assert str(absent) in str(error.value) and "unet/, scheduler/" in str(error.value)
    with pytest.raises(FileNotFoundError) as error:
        check_model("pixel:nobody/no-such-model")
    assert "'nobody/no-such-model'" in str(error.value) and huggingface_hub.constants.HF_HUB_CACHE in str(error.value)
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    (tmp_path / "partial" / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        PixelUNet.load(tmp_path / "partial")
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="is a StableDiffusionPipeline; the pixel backend takes DDPMPipeline"):
        load_model(f"pixel:{tmp_path / 'sd'}")
    UNet2DModel(**TINY_PIXEL_UNET, num_class_embeds=10).save_pretrained(tmp_path / "classes" / "unet")
    DDPMScheduler().save_pretrained(tmp_path / "classes" / "scheduler")
    (tmp_path / "classes" / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    with pytest.raises(ValueError, match="is class-conditional"):
        PixelUNet.load(tmp_path / "classes")
