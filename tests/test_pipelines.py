"""SDXL, SD3 and FLUX.1 behind the model interface, on tiny random pipelines saved in the real
diffusers layout: loading (a bare directory, a prefix, the Hugging Face cache), the chain
sampling what each diffusers pipeline samples, full backpropagation through the VAE decode
against finite differences in float64, every estimator on every task, the memory levers, and
the published architectures' parameter counts on the meta device."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import directional_fd, run_settings, wavy
from diffusers import DDIMScheduler, FluxPipeline, StableDiffusion3Pipeline, StableDiffusionXLPipeline
from hf_cache import cache_as
from tiny_pipelines import build_tiny_flux, build_tiny_sd3, build_tiny_sdxl

from sdo import NotApplicable, Problem, make_estimator
from sdo.estimators import ESTIMATORS
from sdo.models import load_model, resolve
from sdo.tasks import TASKS
from sdo.tasks.loop import image_loss

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a photo of a cat", "a red dog"]
FAMILIES = {
    "sdxl": (build_tiny_sdxl, StableDiffusionXLPipeline),
    "sd3": (build_tiny_sd3, StableDiffusion3Pipeline),
    "flux": (build_tiny_flux, FluxPipeline),
}
CFG = {"sdxl": 4.0, "sd3": 4.0, "flux": 1.0}  # FLUX.1-dev guides through its guidance embedding
OPTIONS_OF = {"sdxl": {}, "sd3": {}, "flux": {"resolution": 16}}  # FLUX's default 128 px: 4096 tokens


def _load(saved, family, **options):
    return load_model(str(saved[family]), **OPTIONS_OF[family], **options)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Every test here on one thread."""


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipelines")
    for family, (build, _) in FAMILIES.items():
        build(root / family)
    return {family: root / family for family in FAMILIES}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_bare_directory_is_recognised_by_its_pipeline_class(saved, family):
    assert resolve(str(saved[family])).cls.prefix == family
    model = _load(saved, family)
    same = load_model(f"{family}:{saved[family]}", **OPTIONS_OF[family])
    cond = model.encode(PROMPTS)
    assert set(cond) == {"embeddings", "pooled"} and cond["embeddings"].shape[0] == 2
    assert torch.equal(cond["embeddings"], same.encode(PROMPTS)["embeddings"])
    latent = model.latent_batch(1, torch.Generator().manual_seed(0))
    assert model.decode(latent).shape == (1, 3, model.resolution, model.resolution)
    assert not any(
        p.requires_grad
        for module in model.parts.values()
        if isinstance(module, torch.nn.Module)
        for p in module.parameters()
    )


@pytest.mark.slow
def test_a_model_id_loads_from_the_local_cache_and_a_missing_one_is_named(saved, tmp_path):
    """`sdo run --model flux:<id>` with the id in HF_HUB_CACHE, in a fresh process; an id that is
    not there fails the record saying where it looked and how to provide it."""
    cache = cache_as(saved["flux"], "tiny-org/tiny-flux", tmp_path / "cache")
    env = {**os.environ, "HF_HUB_CACHE": str(cache)}
    flags = [
        sys.executable,
        "-m",
        "evals.cli",
        "--threads",
        "1",
        "run",
        "--task",
        "latent",
        "--method",
        "shortcut",
        "--steps",
        "2",
        "--iters",
        "1",
        "--batch",
        "1",
        "--reward",
        "mean_square",
        "--device",
        "cpu",
        "--model-option",
        "resolution=16",
    ]
    done = subprocess.run(
        flags + ["--model", "flux:tiny-org/tiny-flux", "--out", str(tmp_path / "ok.json")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    done = subprocess.run(
        flags + ["--model", "flux:tiny-org/absent", "--out", str(tmp_path / "absent.json")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    record = json.loads((tmp_path / "absent.json").read_text())
    assert done.returncode == 1 and record["status"] == "failed"
    assert str(cache) in record["reason"] and "--model-option allow_download=true" in record["reason"]


def _pipeline(saved, family):
    pipeline = FAMILIES[family][1].from_pretrained(saved[family], local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_chain_samples_what_the_pipeline_samples(saved, family):
    ours, pipeline = _load(saved, family), _pipeline(saved, family)
    latents = ours.latent_batch(2, torch.Generator().manual_seed(0))
    size = ours.resolution
    runs = (
        [(1.0, {}), (CFG[family], {"guidance_scale": CFG[family]})]
        if family != "flux"
        else [
            (1.0, {"guidance_scale": 3.5}),
            (2.0, {"guidance_scale": 3.5, "true_cfg_scale": 2.0, "negative_prompt": ""}),
        ]
    )
    for cfg_scale, arguments in runs:
        arguments = {"guidance_scale": 1.0, **arguments}
        expected = pipeline(
            PROMPTS, output_type="latent", latents=latents, num_inference_steps=4, height=size, width=size, **arguments
        ).images
        with torch.no_grad():
            sample = ours.make_chain(4, cfg_scale).sample(latents, ours.encode(PROMPTS), graph_from=None)
        scale = max(1.0, float(expected.abs().max()))  # float32 round-off of the states' size (SDXL's Euler: ~20)
        assert (sample - expected).abs().max() <= 1e-6 * scale, (
            family,
            cfg_scale,
            float((sample - expected).abs().max()),
        )


def _rotary_in_the_input_dtype(x, freqs_cis, use_real=True, use_real_unbind_dim=-1, sequence_dim=2):
    """diffusers' apply_rotary_emb as FLUX calls it, without its cast to float32 (which would make
    a float64 finite-difference check measure float32 round-off, not the gradient)."""
    cos, sin = (f[None, :, None, :] if sequence_dim == 1 else f[None, None] for f in freqs_cis)
    real, imaginary = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    rotated = torch.stack([-imaginary, real], dim=-1).flatten(3)
    return x * cos.to(x) + rotated * sin.to(x)


@pytest.mark.parametrize("wrt", ["latent", "cond", "weights"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_full_through_the_decode_matches_finite_differences(saved, family, wrt, monkeypatch):
    import diffusers.models.transformers.transformer_flux as flux_module

    monkeypatch.setattr(flux_module, "apply_rotary_emb", _rotary_in_the_input_dtype)
    model = _load(saved, family, dtype="float64")
    if wrt == "weights":
        model = model.with_lora(2)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():  # move B off zero so every adapter weight has a gradient
            for p in model.net.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    chain = model.make_chain(2, CFG[family])
    problem = Problem(chain, model.latent_batch(2, torch.Generator().manual_seed(2)), model.encode(PROMPTS), wrt)
    loss = image_loss(model, wavy)
    estimate = make_estimator("full")(problem, loss)
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in problem.params]
        analytic = sum(float((g * v).sum()) for g, v in zip(estimate.grads, direction))
        # h = 1e-5: FLUX's position ids go through float32 (a round-off floor near 1e-11 in the loss)
        numeric = directional_fd(problem, loss, direction, h=1e-5)
        assert abs(analytic - numeric) <= 1e-5 * abs(numeric), (analytic, numeric)


OPTIONS = {"truncated": {"tail": 1}, "drtune": {"supervised": 2}, "refl": {"last": 2}, "shortcut_warm": {"sweeps": 1}}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_estimator_runs_one_iteration_of_every_task(saved, family):
    model = _load(saved, family)
    settings = run_settings(steps=2, iters=1, batch=1, cfg_scale=CFG[family], seed=0)
    outcomes = {}
    for task in ("latent", "conditioning", "finetune"):
        options = TASKS[task].make_options({} if task == "latent" else {"eval_samples": 1, "monitor_samples": 1})
        for method in sorted(ESTIMATORS):
            try:
                result = TASKS[task].run(
                    model,
                    lambda x: -(x**2).flatten(1).mean(1),
                    make_estimator(method, **OPTIONS.get(method, {})),
                    settings,
                    options,
                )
            except NotApplicable:
                outcomes[task, method] = "not_applicable"
                continue
            (row,) = result.trace.rows
            assert row["nfe_backward"] > 0 and row["grad_norm"] > 0, (task, method)
            outcomes[task, method] = "ok"
    expected_na = {("latent", m) for m in ("truncated", "drtune", "refl")}
    assert {key for key, outcome in outcomes.items() if outcome == "not_applicable"} == expected_na


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_memory_levers_keep_the_outputs(saved, family):
    plain = _load(saved, family)
    levered = _load(saved, family, gradient_checkpointing=True, vae_slicing=True)
    assert levered.net.denoiser.is_gradient_checkpointing and levered.vae.is_gradient_checkpointing
    assert _load(saved, family, vae_tiling=True).vae.use_tiling  # tiles blend at their seams: not the same pixels
    x = plain.latent_batch(2, torch.Generator().manual_seed(1))
    t, cond = torch.tensor([900.0, 300.0]), plain.encode(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(levered.net(x, t, cond), plain.net(x, t, cond), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(levered.decode(x), plain.decode(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="attention_slicing applies to UNets") if family != "sdxl" else _no_error():
        _load(saved, family, attention_slicing=True)


class _no_error:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lora_sits_on_the_attention_projections_and_starts_as_the_base(saved, family):
    model = _load(saved, family)
    tuned = model.with_lora(2)
    trainable = [name for name, p in tuned.net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert any(".to_q." in name for name in trainable)
    x, t, cond = (
        model.latent_batch(1, torch.Generator().manual_seed(0)),
        torch.tensor([500.0]),
        model.encode(PROMPTS[:1]),
    )
    with torch.no_grad():
        assert torch.equal(tuned.net(x, t, cond), model.net(x, t, cond))


PUBLISHED = {  # parameters per network, as the published configs give them
    "sd1.5": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
    "sd3.5-medium": {
        "transformer": 2_243_171_520,
        "vae": 83_819_683,
        "text_encoder": 123_650_304,
        "text_encoder_2": 694_659_840,
        "text_encoder_3": 4_762_310_656,
    },
    "flux-dev": {
        "transformer": 11_901_408_320,
        "vae": 83_819_683,
        "text_encoder": 123_060_480,
        "text_encoder_2": 4_762_310_656,
    },
    "flux-schnell": {
        "transformer": 11_891_178_560,
        "vae": 83_819_683,
        "text_encoder": 123_060_480,
        "text_encoder_2": 4_762_310_656,
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("architecture", sorted(PUBLISHED))
def test_published_architectures_have_their_sizes(architecture):
    """Built on the meta device (nothing allocated): the published parameter counts, the true
    latent shapes, and one guided step and decode traced for shapes."""
    model = load_model(f"random:{architecture}", device="meta", dtype="bfloat16")
    assert model.parameter_counts() == PUBLISHED[architecture]
    assert model.options["model"] == f"random:{architecture}"
    latent = model.latent_batch(1, torch.Generator().manual_seed(0))
    z = model.make_chain(2, 2.0).step(latent, 0, model.encode(PROMPTS[:1]))
    assert z.shape == latent.shape and model.decode(z).shape == (1, 3, model.resolution, model.resolution)
    if architecture.startswith("flux"):  # the pipeline's defaults: schnell is not guidance-distilled
        schnell = architecture == "flux-schnell"
        assert (model.distilled_guidance, model.max_sequence_length) == ((0.0, 256) if schnell else (3.5, 512))


CONFIG_IDS = {
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd3": "stabilityai/stable-diffusion-3.5-medium",
    "flux": "black-forest-labs/FLUX.1-dev",
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_config_plans_every_estimator(saved, family, tmp_path, monkeypatch):
    """config/<family>.yaml layered as the Snakefile layers it, with the model id in the local
    cache (a tiny pipeline standing in), passes the plan checks; its runs cover every task and
    every registered estimator, train on CLIP, the aesthetic score and HPSv2.1, and are judged by
    PickScore, which guards against reward hacking."""
    import huggingface_hub.constants
    from conftest import planned_commands

    from evals.cli import build_parser
    from evals.config import check_config, layered

    cache = cache_as(saved[family], CONFIG_IDS[family], tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    config = layered([ROOT / "config" / name for name in ("config.yaml", "profile.yaml", f"{family}.yaml")])
    check_config(config, base=ROOT)
    runs = [args for args in map(build_parser().parse_args, planned_commands(config)) if args.command == "run"]
    assert {args.task for args in runs} == {"latent", "conditioning", "finetune"}
    assert {args.method for args in runs} == set(ESTIMATORS)
    assert {args.model for args in runs} == {f"{family}:{CONFIG_IDS[family]}"}
    assert {args.reward for args in runs} == {"clip", "aesthetic", "hpsv2"}
    assert (
        all(args.metrics == ["pickscore"] for args in runs)
        and config["statistics"]["guard"]["metric"] == "metric:pickscore"
    )


def _edit_config(path: Path, drop: tuple[str, ...] = (), **values) -> None:
    config = json.loads(path.read_text())
    config = {key: value for key, value in {**config, **values}.items() if key not in drop}
    path.write_text(json.dumps(config))


def test_a_dynamic_shift_with_keys_left_out_samples_what_the_pipeline_samples(saved, tmp_path):
    """SD3 with `use_dynamic_shifting` and none of the shift keys: mu comes from the scheduler's
    resolved defaults (max_shift 1.15), as the pipeline's `scheduler.config.get` does."""
    shutil.copytree(saved["sd3"], tmp_path / "sd3")
    keys = ("base_image_seq_len", "max_image_seq_len", "base_shift", "max_shift")
    _edit_config(tmp_path / "sd3" / "scheduler" / "scheduler_config.json", drop=keys, use_dynamic_shifting=True)
    ours, pipeline = load_model(str(tmp_path / "sd3")), _pipeline({"sd3": tmp_path / "sd3"}, "sd3")
    latents = ours.latent_batch(2, torch.Generator().manual_seed(0))
    expected = pipeline(
        PROMPTS,
        output_type="latent",
        latents=latents,
        num_inference_steps=4,
        guidance_scale=1.0,
        height=ours.resolution,
        width=ours.resolution,
    ).images
    with torch.no_grad():
        sample = ours.make_chain(4, 1.0).sample(latents, ours.encode(PROMPTS), graph_from=None)
    assert (sample - expected).abs().max() <= 1e-6 * max(1.0, float(expected.abs().max()))


def test_sdxl_decodes_with_latents_mean_and_std_and_upcasts_in_float16(saved, tmp_path):
    """A VAE config with `latents_mean`/`latents_std` and `force_upcast`: in float16 the decode
    runs the VAE in float32 and unscales per channel, giving the pipeline's images."""
    shutil.copytree(saved["sdxl"], tmp_path / "sdxl")
    _edit_config(
        tmp_path / "sdxl" / "vae" / "config.json",
        force_upcast=True,
        latents_mean=[0.3, -0.2, 0.1, 0.5],
        latents_std=[2.0, 0.5, 1.5, 0.8],
    )
    ours = load_model(str(tmp_path / "sdxl"), dtype="float16")
    pipeline = StableDiffusionXLPipeline.from_pretrained(
        tmp_path / "sdxl", local_files_only=True, torch_dtype=torch.float16
    )
    pipeline.set_progress_bar_config(disable=True)
    latents = ours.latent_batch(1, torch.Generator().manual_seed(0))
    run = dict(latents=latents, num_inference_steps=2, guidance_scale=1.0)
    sample = pipeline(PROMPTS[:1], output_type="latent", **run).images
    expected = pipeline(PROMPTS[:1], output_type="pt", **run).images
    seen = []
    hook = ours.vae.decoder.conv_in.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].dtype))
    try:
        with torch.no_grad():
            images = (ours.decode(sample).float() / 2 + 0.5).clamp(0, 1)
    finally:
        hook.remove()
    assert torch.float16 not in seen  # the decoder runs in float32
    assert images.dtype == torch.float32 and (images - expected.float()).abs().max() <= 2e-3
    shifted = (ours.decode(sample).float() - ours.decode(sample * 0.5).float()).abs().max()
    assert shifted > 1e-2  # the per-channel unscaling reaches the images


def test_sdxl_on_a_ddim_config_honours_its_offset_and_final_alpha(saved, tmp_path):
    """SDXL's pipeline takes a DDIM config as it is (no legacy amendment, unlike SD 1.x's): with
    `steps_offset` 0 and `set_alpha_to_one` the default sampler is DDIM and samples the same."""
    pipeline = _pipeline(saved, "sdxl")
    pipeline.scheduler = DDIMScheduler.from_config(
        pipeline.scheduler.config, steps_offset=0, set_alpha_to_one=True, clip_sample=False
    )
    pipeline.save_pretrained(tmp_path / "sdxl")
    ours = load_model(str(tmp_path / "sdxl"))
    latents = ours.latent_batch(2, torch.Generator().manual_seed(0))
    expected = pipeline(
        PROMPTS, output_type="latent", latents=latents, num_inference_steps=4, guidance_scale=1.0
    ).images
    with torch.no_grad():
        chain = ours.make_chain(4, 1.0)
        sample = chain.sample(latents, ours.encode(PROMPTS), graph_from=None)
    assert chain.name == "ddim" and chain.timesteps == [int(t) for t in pipeline.scheduler.timesteps]
    assert (sample - expected).abs().max() <= 1e-5 * max(1.0, float(expected.abs().max()))
