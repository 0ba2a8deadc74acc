"""Stable Diffusion behind the model interface, on a tiny random pipeline saved in the real
layout: loading, parity with diffusers' pipeline, gradients against finite differences, every
estimator on every task; SD 1.5's architecture at full size on the meta device; CLIP rewards."""

from __future__ import annotations

import math
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from conftest import directional_fd, run_settings, wavy
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image
from safetensors.torch import save_file
from tiny_pipelines import TINY_TEXT
from tiny_pipelines import build_tiny_sd as build_tiny
from torch import nn
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

from evals.images import inception_fid_folder
from evals.rewards.checks import check_differentiable
from evals.rewards.clip import AestheticScore, ClipSimilarity, ClipStyle, clip_score
from sdo import NotApplicable, Problem, make_estimator
from sdo.images import load_image_folder
from sdo.models.pipelines import character_tokenizer
from sdo.models.stable_diffusion import StableDiffusion
from sdo.tasks import TASKS
from sdo.tasks.loop import image_loss

PROMPTS = ["a photo of a cat", "a red dog"]


def brightness(images: torch.Tensor) -> torch.Tensor:
    return images.mean(dim=(1, 2, 3))


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread."""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module")
def model(tiny_dir):
    return StableDiffusion.load(tiny_dir)


@pytest.fixture(scope="module")
def model64(tiny_dir):
    return StableDiffusion.load(tiny_dir, dtype="float64")


def test_loads_the_saved_layout(tiny_dir, model):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_dir / "tokenizer")
    ids = tokenizer(PROMPTS[0]).input_ids
    assert len(ids) > 2 and max(ids) < TINY_TEXT["vocab_size"]
    assert model.state_shape == (4, 8, 8)
    assert model.encode(PROMPTS).shape == (2, 77, 32) and model.null_cond().shape == (1, 77, 32)
    assert model.decode(torch.zeros(1, *model.state_shape)).shape == (1, 3, 16, 16)
    assert model.scheduler_config["_class_name"] == "PNDMScheduler" and model.default_sampler() == "ddim"
    assert model.make_chain(2).diffusers_scheduler().config.beta_schedule == "scaled_linear"  # DDIM on its schedule
    assert model.options["dtype"] == "float32" and not model.options["gradient_checkpointing"]
    frozen = [model.vae, model.text_encoder, model.net]
    assert not any(p.requires_grad for module in frozen for p in module.parameters())


def test_lora_starts_as_the_base_model(model):
    tuned = model.with_lora(2)
    trainable = [name for name, p in tuned.net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert tuned.vae is model.vae and tuned.options["lora_rank"] == 2
    x, t, cond = (
        model.latent_batch(2, torch.Generator().manual_seed(0)),
        torch.tensor([500.0, 20.0]),
        model.encode(PROMPTS),
    )
    with torch.no_grad():
        assert torch.equal(tuned.net(x, t, cond), model.net(x, t, cond))
    assert all(p.requires_grad for p in model.with_lora(0).net.denoiser.parameters())


def test_memory_levers_keep_the_outputs(tiny_dir, model):
    levered = StableDiffusion.load(tiny_dir, attention_slicing=True, vae_slicing=True, vae_tiling=True)
    assert levered.options["attention_slicing"] and levered.options["vae_slicing"] and levered.options["vae_tiling"]
    x, t, cond = (
        model.latent_batch(2, torch.Generator().manual_seed(1)),
        torch.tensor([900.0, 300.0]),
        model.encode(PROMPTS),
    )
    with torch.no_grad():
        torch.testing.assert_close(levered.net(x, t, cond), model.net(x, t, cond), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(levered.decode(x), model.decode(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_chain_reproduces_the_diffusers_pipeline(tmp_path, prediction_type):
    directory = build_tiny(tmp_path, prediction_type=prediction_type)
    ours = StableDiffusion.load(directory)
    pipeline = StableDiffusionPipeline.from_pretrained(directory, local_files_only=True)
    pipeline.scheduler = DDIMScheduler.from_config(  # as the ddim sampler configures it
        pipeline.scheduler.config, clip_sample=False, set_alpha_to_one=False, steps_offset=1
    )
    pipeline.set_progress_bar_config(disable=True)
    latents = ours.latent_batch(2, torch.Generator().manual_seed(0))
    for guidance in (1.0, 3.0):
        run = dict(latents=latents, num_inference_steps=4, guidance_scale=guidance)
        expected = pipeline(PROMPTS, output_type="latent", **run).images
        images = pipeline(PROMPTS, output_type="pt", **run).images
        with torch.no_grad():
            sample = ours.make_chain(4, guidance).sample(latents, ours.encode(PROMPTS), graph_from=None)
            decoded = ((ours.decode(sample) + 1) / 2).clamp(0, 1)
        assert (sample - expected).abs().max() <= 1e-4
        assert (decoded - images).abs().max() <= 1e-4


DDIM_CONFIGS = {  # a DDIMScheduler config's own values, each one the chain must honour
    "alpha one, offset 0": {"set_alpha_to_one": True, "steps_offset": 0},
    "trailing": {"timestep_spacing": "trailing"},
    "linspace": {"timestep_spacing": "linspace"},
    "zero terminal SNR, v": {
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
        "prediction_type": "v_prediction",
    },
    "legacy, amended by the pipeline": {"steps_offset": 0, "clip_sample": True},
}


def _ddim_pipeline(tmp_path, **values) -> Path:
    """The tiny SD pipeline saved with a DDIMScheduler of SD's betas and `values`."""
    pipeline = StableDiffusionPipeline.from_pretrained(build_tiny(tmp_path / "pndm"), local_files_only=True)
    sd = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }
    pipeline.scheduler = DDIMScheduler(**{**sd, **values})
    pipeline.save_pretrained(tmp_path / "ddim")
    return tmp_path / "ddim"


@pytest.mark.parametrize("values", list(DDIM_CONFIGS.values()), ids=list(DDIM_CONFIGS))
def test_the_chain_honours_the_ddim_config_it_is_given(tmp_path, values):
    directory = _ddim_pipeline(tmp_path, **values)
    ours = StableDiffusion.load(directory)
    pipeline = StableDiffusionPipeline.from_pretrained(directory, local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    assert type(pipeline.scheduler) is DDIMScheduler
    latents = ours.latent_batch(2, torch.Generator().manual_seed(0))
    expected = pipeline(
        PROMPTS, output_type="latent", latents=latents, num_inference_steps=4, guidance_scale=1.0
    ).images
    with torch.no_grad():
        sample = ours.make_chain(4, 1.0).sample(latents, ours.encode(PROMPTS), graph_from=None)
    assert (sample - expected).abs().max() <= 1e-4


ESTIMATORS = {"full": {}, "truncated": {"tail": 1}, "adjoint": {}, "doodl": {}, "shortcut": {"at": "all"}}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(ESTIMATORS))
@pytest.mark.parametrize("task", ["latent", "conditioning", "finetune"])
def test_every_estimator_runs_every_task(model, task, method):
    settings = run_settings(steps=2, iters=1, batch=1, cfg_scale=2.0, seed=0)
    options = TASKS[task].make_options({} if task == "latent" else {"eval_samples": 1, "monitor_samples": 2})
    estimator = make_estimator(method, **ESTIMATORS[method])
    if task == "latent" and method == "truncated":
        with pytest.raises(NotApplicable):
            TASKS[task].run(model, brightness, estimator, settings, options)
        return
    result = TASKS[task].run(model, brightness, estimator, settings, options)
    (row,) = result.trace.rows
    assert math.isfinite(row["loss"]) and row["nfe_backward"] > 0 and row["grad_norm"] > 0
    assert result.samples.shape == (1, 3, 16, 16)


def _problem(model, wrt, steps=2):
    generator = torch.Generator().manual_seed(2)
    chain = model.make_chain(steps, cfg_scale=2.0)
    return Problem(chain, model.latent_batch(2, generator), model.encode(PROMPTS), wrt)


@pytest.mark.parametrize("wrt", ["latent", "cond", "weights"])
def test_full_gradient_matches_finite_differences(model64, wrt):
    """Directional derivatives of the loss on decoded images, by autograd and central differences."""
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
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in problem.params]
        analytic = sum(float((g * v).sum()) for g, v in zip(estimate.grads, direction))
        numeric = directional_fd(problem, loss, direction, h=1e-6)
        assert abs(analytic - numeric) <= 1e-5 * abs(numeric), (analytic, numeric)


def test_gradient_checkpointing_keeps_the_gradient(tiny_dir, model64):
    checkpointed = StableDiffusion.load(tiny_dir, dtype="float64", gradient_checkpointing=True)
    assert checkpointed.net.denoiser.is_gradient_checkpointing and checkpointed.vae.is_gradient_checkpointing
    loss = image_loss(model64, brightness)
    plain = make_estimator("full")(_problem(model64, "cond"), loss)
    again = make_estimator("full")(_problem(checkpointed, "cond"), image_loss(checkpointed, brightness))
    torch.testing.assert_close(again.grads[0], plain.grads[0], rtol=1e-10, atol=1e-12)


def test_shortcut_latent_matches_closed_form_through_the_decoder(model64):
    """dL/dz_0 = sqrt(a_T/a_0) (g + sqrt(a_0) (sigma_1 - sigma_0) J_eps^T g), g = dL/dz_T with L
    including the VAE decode, J the guided eps's Jacobian at step 0 only."""
    problem = _problem(model64, "latent", steps=3)
    chain, latent, cond = problem.chain, problem.latent.detach(), problem.cond
    loss = image_loss(model64, wavy)
    estimate = make_estimator("shortcut", at="first")(problem, loss)
    with torch.no_grad():
        sample = chain.sample(latent, cond, graph_from=None)
    g = torch.autograd.grad(loss(sample.requires_grad_()), sample)[0]

    def guided_eps(z):
        t = torch.full((len(z),), float(chain.timesteps[0]), dtype=z.dtype)
        uncond = model64.net(z, t, chain.null_cond.expand_as(cond))
        return uncond + chain.cfg_scale * (model64.net(z, t, cond) - uncond)

    _, vjp = torch.autograd.functional.vjp(guided_eps, latent, g)
    a, sigma = chain.alphas_cumprod, chain.sigmas
    expected = math.sqrt(a[-1] / a[0]) * (g + math.sqrt(a[0]) * (sigma[1] - sigma[0]) * vjp)
    torch.testing.assert_close(estimate.grads[0], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
def test_missing_weights_are_named(tmp_path):
    absent = tmp_path / "absent"
    with pytest.raises(FileNotFoundError, match="allow_download=true") as error:
        StableDiffusion.load(absent)
    assert str(absent) in str(error.value)
    with pytest.raises(FileNotFoundError) as error:
        StableDiffusion.load("nobody/no-such-model")
    assert "'nobody/no-such-model'" in str(error.value) and huggingface_hub.constants.HF_HUB_CACHE in str(error.value)
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        StableDiffusion.load(tmp_path / "partial")


def test_random_sd15_has_the_published_sizes():
    """SD 1.5's architecture on the meta device: parameter counts, a guided step and a decode
    at 64x64 traced for shapes (random weights on the CPU take ~25 s to draw)."""
    sd = StableDiffusion.random("sd1.5", resolution=64, device="meta")
    assert sd.parameter_counts() == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert sd.state_shape == (4, 8, 8) and sd.options["model"] == "random:sd1.5"
    latent = sd.latent_batch(2, torch.Generator().manual_seed(0))
    z = sd.make_chain(2, cfg_scale=7.5).step(latent, 0, sd.encode(PROMPTS))
    assert z.shape == (2, 4, 8, 8) and sd.decode(z).shape == (2, 3, 64, 64)
    assert sum(p.numel() for p in sd.with_lora(4).net.parameters() if p.requires_grad) == 797_184
    assert len(sd.tokenizer(PROMPTS[0]).input_ids) > 2
    with pytest.raises(ValueError, match="unknown Stable Diffusion architecture"):
        StableDiffusion.random("sd9.9", device="meta")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    vision = dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8
    )
    CLIPModel(CLIPConfig(text_config=TINY_TEXT, vision_config=vision, projection_dim=16)).save_pretrained(directory)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=character_tokenizer()).save_pretrained(directory)
    return directory


@pytest.fixture
def images():
    return torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_clip_rewards_are_differentiable(tmp_path, clip_dir, images):
    mlp = nn.Sequential(  # the LAION layout, narrower
        nn.Linear(16, 32),
        nn.Dropout(),
        nn.Linear(32, 8),
        nn.Dropout(),
        nn.Linear(8, 4),
        nn.Dropout(),
        nn.Linear(4, 2),
        nn.Linear(2, 1),
    )
    save_file({f"layers.{key}": value for key, value in mlp.state_dict().items()}, tmp_path / "mlp.safetensors")
    torch.save(nn.Linear(16, 1).state_dict(), tmp_path / "linear.pth")
    Image.new("RGB", (20, 30), (200, 40, 90)).save(tmp_path / "style.png")
    rewards = [
        ClipSimilarity(clip_dir, "a cat"),
        AestheticScore(clip_dir, tmp_path / "mlp.safetensors"),
        AestheticScore(clip_dir, tmp_path / "linear.pth"),
        ClipStyle(clip_dir, tmp_path / "style.png", layer=2),
    ]
    for reward in rewards:
        assert check_differentiable(reward, images, directions=2) < 1e-4
    similarity = rewards[0](images)
    expected = float(100 * similarity.clamp(min=0).mean())
    assert clip_score(images, ["a cat"] * 2, clip_dir) == pytest.approx(expected, rel=1e-5)
    mlp.eval()
    with torch.no_grad():
        embedding = torch.nn.functional.normalize(rewards[1].image_embeddings(images), dim=-1)
        torch.testing.assert_close(rewards[1](images), mlp(embedding).squeeze(-1))


def test_missing_reward_weights_are_named(tmp_path, clip_dir, images):
    with pytest.raises(FileNotFoundError, match="CLIP model directory") as error:
        ClipSimilarity(tmp_path / "no_clip", "a cat")
    assert str(tmp_path / "no_clip") in str(error.value)
    with pytest.raises(FileNotFoundError, match="aesthetic predictor"):
        AestheticScore(clip_dir, tmp_path / "no_head.pth")
    with pytest.raises(FileNotFoundError, match="style image"):
        ClipStyle(clip_dir, tmp_path / "no_style.png")
    torch.save({"fc.weight": torch.zeros(1, 16)}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="neither the LAION aesthetic MLP"):
        AestheticScore(clip_dir, tmp_path / "odd.pth")
    Image.new("RGB", (10, 10), (0, 255, 0)).save(tmp_path / "green.png")
    folder = load_image_folder(tmp_path, size=(4, 4))
    assert folder.shape == (1, 3, 4, 4) and torch.allclose(folder[0, :, 0, 0], torch.tensor([-1.0, 1.0, -1.0]))
    with pytest.raises(FileNotFoundError, match="Inception weights"):
        inception_fid_folder(images, tmp_path, tmp_path / "no_inception.pth")


def _record(path):
    import json

    return json.loads(path.read_text())


def test_sdo_run_on_stable_diffusion(tmp_path, tiny_dir, clip_dir):
    """`sdo run --model sd:<dir>` end to end: CLIP reward, memory levers, the final metrics."""
    from evals.cli import main

    out = tmp_path / "run.json"
    code = main(
        [
            "--threads",
            "1",
            "run",
            "--model",
            f"sd:{tiny_dir}",
            "--task",
            "latent",
            "--method",
            "shortcut",
            "--steps",
            "2",
            "--iters",
            "1",
            "--batch",
            "2",
            "--reward",
            "clip",
            "--reward-option",
            f"clip_model={clip_dir}",
            "--metric-option",
            f"clip_model={clip_dir}",
            "--task-option",
            "prompt=a photo of a cat",
            "--eval-every",
            "0",
            "--model-option",
            "gradient_checkpointing=true",
            "--model-option",
            "vae_slicing=true",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    record = _record(out)
    assert code == 0 and record["status"] == "ok", record.get("reason")
    assert record["model_options"]["gradient_checkpointing"] and record["model_options"]["resolution"] == 16
    assert record["config"]["model_options"]["vae_slicing"] and record["config"]["reward_options"]["clip_model"]
    final = record["final"]
    assert {"reward_mean", "reward_ci95", "clip_score", "diversity"} <= set(final) and final["samples"] == 2
    assert out.with_suffix(".png").exists()


def test_sdo_run_finetunes_for_the_aesthetic_reward(tmp_path, tiny_dir, clip_dir):
    from evals.cli import main

    head = tmp_path / "head.pth"
    torch.save(nn.Linear(16, 1).state_dict(), head)
    out = tmp_path / "finetune.json"
    code = main(
        [
            "--threads",
            "1",
            "run",
            "--model",
            f"sd:{tiny_dir}",
            "--task",
            "finetune",
            "--method",
            "full",
            "--steps",
            "2",
            "--iters",
            "1",
            "--batch",
            "2",
            "--reward",
            "aesthetic",
            "--reward-option",
            f"clip_model={clip_dir}",
            "--reward-option",
            f"head={head}",
            "--metric-option",
            f"clip_model={clip_dir}",
            "--task-option",
            "eval_samples=2",
            "--task-option",
            "monitor_samples=2",
            "--task-option",
            "lora_rank=2",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    record = _record(out)
    assert code == 0 and record["status"] == "ok", record.get("reason")
    assert record["final"]["clip_score"] >= 0 and "diversity" in record["final"]  # against each sample's prompt


def test_missing_stable_diffusion_weights_fail_the_record(tmp_path):
    from evals.cli import main

    out = tmp_path / "missing.json"
    flags = [
        "run",
        "--model",
        f"sd:{tmp_path / 'absent'}",
        "--method",
        "full",
        "--steps",
        "2",
        "--iters",
        "1",
        "--reward",
        "clip",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    assert main(flags) == 1
    record = _record(out)
    assert record["status"] == "failed" and record["reason"].startswith("FileNotFoundError")
    assert "allow_download=true" in record["reason"]


@pytest.mark.parametrize("wrt", ["latent", "weights"])
def test_sdo_bench_on_stable_diffusion(tmp_path, tiny_dir, clip_dir, wrt):
    """A bench row on SD: the decoded images' mean square (CLIP similarity with a CLIP model) as
    the loss, LoRA rank-4 adapters as the weights."""
    from evals.cli import main

    out = tmp_path / "row.json"
    flags = [
        "--threads",
        "1",
        "bench",
        "--model",
        f"sd:{tiny_dir}",
        "--wrt",
        wrt,
        "--method",
        "shortcut",
        "--steps",
        "2",
        "--batch",
        "1",
        "--rounds",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    clip = ["--reward", "clip", "--reward-option", f"clip_model={clip_dir}"] if wrt == "weights" else []
    assert main(flags + clip) == 0
    row = _record(out)
    assert row["status"] == "ok" and row["cost_only"] is False and row["model_options"]["resolution"] == 16
    assert row["nfe_backward"] == 1 and row["grad_norm"] > 0 and row["peak_bytes"] > 0
    if wrt == "latent":
        assert row["loss"] > 0  # the mean square


def test_random_weights_bench_is_cost_only(tmp_path, tiny_dir, monkeypatch):
    """`--model random:<architecture>` rows say cost_only (the tiny model stands in for SD 1.5's
    architecture, whose random weights take ~25 s to draw on 2 CPU cores)."""
    from evals import experiment

    drawn = {}

    def tiny_random(architecture, device, seed, **options):
        drawn.update(architecture=architecture, seed=seed, resolution=options["resolution"])
        return StableDiffusion.load(tiny_dir, device=device, **options)

    monkeypatch.setattr(StableDiffusion, "random", tiny_random)
    spec = experiment.BenchSpec(
        wrt="weights",
        method="full",
        steps=2,
        batch=1,
        rounds=1,
        seed=3,
        model="random:sd1.5",
        model_options={"resolution": 32},
        device="cpu",
    )
    row = experiment.bench(spec)
    assert row["status"] == "ok" and row["cost_only"] is True and row["model_options"]["resolution"] == 32
    assert drawn == {"architecture": "sd1.5", "seed": 3, "resolution": 32} and row["config"]["lora_rank"] is None


@pytest.mark.slow
def test_sdo_profile_builds_the_model_once_and_keeps_every_row(tmp_path, tiny_dir, monkeypatch):
    """`sdo profile` measures every variant x parameter type x T in one process on one model: each
    row's gradient is the one `sdo bench` gives alone, and an out-of-memory row is a row while
    the others go on (exit 1, or 0 with --sweep)."""
    from evals import experiment
    from evals.cli import main
    from sdo.estimators.adjoint import Adjoint

    built = []

    def tiny_random(architecture, device, seed, **options):
        built.append(architecture)
        return StableDiffusion.load(tiny_dir, device=device, **options)

    def out_of_memory(self, problem, loss):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(StableDiffusion, "random", tiny_random)
    monkeypatch.setattr(Adjoint, "gradient", out_of_memory)
    flags = [
        "--threads",
        "1",
        "profile",
        "--model",
        "random:sd1.5",
        "--model-option",
        "resolution=16",
        "--wrt",
        "latent",
        "weights",
        "--steps",
        "2",
        "3",
        "--variant",
        "full=full",
        "--variant",
        "draft_1=truncated:tail=1",
        "--variant",
        "adjoint=adjoint",
        "--batch",
        "1",
        "--rounds",
        "1",
        "--device",
        "cpu",
        "--out-dir",
        str(tmp_path),
    ]
    assert main(flags) == 1
    assert built == ["sd1.5"]
    rows = {(row["wrt"], row["steps"], row["variant"]): row for row in map(_record, tmp_path.rglob("*.json"))}
    assert sorted(rows) == sorted(
        (w, t, v) for w in ("latent", "weights") for t in (2, 3) for v in ("full", "draft_1", "adjoint")
    )
    for (wrt, steps, variant), row in rows.items():
        if variant == "adjoint":
            assert row["status"] == "out_of_memory" and "Tried to allocate" in row["reason"]
            continue
        if (wrt, variant) == ("latent", "draft_1"):
            assert row["status"] == "not_applicable"
            continue
        assert row["status"] == "ok" and row["cost_only"] and row["peak_bytes"] > 0 and row["nfe_backward"] > 0
        assert row["config"]["options"] == ({"tail": 1} if variant == "draft_1" else {})
        alone = experiment.bench(
            experiment.BenchSpec(
                wrt=wrt,
                method=row["method"],
                options=row["config"]["options"],
                steps=steps,
                batch=1,
                rounds=1,
                model="random:sd1.5",
                model_options={"resolution": 16},
                device="cpu",
            )
        )
        assert alone["grad_norm"] == pytest.approx(row["grad_norm"], rel=1e-6)
        assert (alone["nfe_forward"], alone["nfe_backward"]) == (row["nfe_forward"], row["nfe_backward"])
    assert main(flags + ["--sweep"]) == 0


def test_a_profile_is_every_variant_at_every_parameter_type_and_t():
    from evals.bench import profile_rows
    from evals.specs import ProfileSpec

    spec = ProfileSpec(
        model="random:sd1.5",
        variants=["full=full", 'all=shortcut:at="all"'],
        wrt=["latent", "weights"],
        steps=[2, 5],
        out_dir=Path("rows"),
    )
    rows = profile_rows(spec)
    assert [(r.wrt, r.steps, r.variant, r.method, r.options) for r in rows][:2] == [
        ("latent", 2, "full", "full", {}),
        ("latent", 2, "all", "shortcut", {"at": "all"}),
    ]
    assert len(rows) == 8 and all(
        r.model == "random:sd1.5" and r.out.parent.parent.parent == Path("rows") for r in rows
    )


@pytest.mark.parametrize(
    "error, status",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), "out_of_memory"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"), "out_of_memory"),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), "failed"),
    ],
)
def test_out_of_memory_is_a_status(error, status):
    from evals.outcomes import recorded_failures

    record = {"status": "ok"}
    with recorded_failures(record):
        raise error
    assert record["status"] == status
