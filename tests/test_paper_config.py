"""The paper's protocols as a configuration (`config/paper.yaml`, its models found in a local
Hugging Face cache, tiny pipelines standing in) pass the plan checks and plan the three released
scripts' chains; the profile presets plan one process per model and checkpointing setting."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
from conftest import planned_commands
from hf_cache import cache_as
from tiny_pipelines import build_tiny_ddpm, build_tiny_sd

from evals import jobs
from evals.cli import build_parser
from evals.config import ConfigError, check_config, layered

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"CompVis/stable-diffusion-v1-4": build_tiny_sd, "google/ddpm-celebahq-256": build_tiny_ddpm}


def _merged(*names: str) -> dict:
    """The config files layered as the Snakefile layers a --configfile over the default."""
    return layered([ROOT / "config" / name for name in names])


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """A Hugging Face cache holding tiny pipelines under the paper's model ids."""
    root = tmp_path_factory.mktemp("hf")
    for model_id, build in MODELS.items():
        directory = root / model_id.split("/")[1]
        build(directory)
        cache_as(directory, model_id, root / "cache")
    return root / "cache"


def test_the_paper_config_plans_the_released_scripts_protocols(hf_cache, monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))
    (tmp_path / "data" / "bedroom").mkdir(parents=True)
    config = _merged("config.yaml", "profile.yaml", "paper.yaml")
    check_config(config, base=tmp_path)
    runs = [args for args in map(build_parser().parse_args, planned_commands(config)) if args.command == "run"]
    chains = {
        (args.experiment, dict(args.task_options).get("start_step", 0), dict(args.task_options).get("init", "sample"))
        for args in runs
    }
    assert chains == {("style", 45, "sample"), ("aesthetic", 10, "invert"), ("clip_guide", 0, "sample")}
    assert all(
        args.task == "latent" and args.steps == 50 and args.lr == 0.01 and tuple(args.betas) == (0.9, 0.9)
        for args in runs
    )
    by = {args.experiment: args for args in runs}
    assert (by["style"].reward, by["style"].iters, by["style"].cfg_scale, by["style"].precision) == (
        "style_gram",
        200,
        5.0,
        "fp16-autocast",
    )
    assert (by["aesthetic"].reward, by["aesthetic"].iters, by["aesthetic"].cfg_scale) == ("aesthetic_target", 100, 1.0)
    assert (
        by["clip_guide"].model == "pixel:google/ddpm-celebahq-256"
        and dict(by["clip_guide"].reward_options)["alpha_from"] == 150
    )
    assert {args.variant for args in runs if args.experiment == "style"} >= {"full", "shortcut", "full_whole_chain"}
    assert "full_whole_chain" not in {args.variant for args in runs if args.experiment == "aesthetic"}


def test_a_model_that_is_not_there_is_refused_before_any_job(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(
        ConfigError, match="model_options.sd:CompVis/stable-diffusion-v1-4.*not found.*Hugging Face cache"
    ):
        check_config(_merged("config.yaml", "paper.yaml"), base=ROOT)


def test_an_inverted_start_needs_its_images_and_a_whole_chain_baseline_a_noise(hf_cache, monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))
    config = _merged("config.yaml", "profile.yaml", "paper.yaml")
    with pytest.raises(ConfigError, match="runs.tasks.aesthetic.task_options.*'data/bedroom' is not a folder"):
        check_config(config, base=tmp_path)
    (tmp_path / "data" / "bedroom").mkdir(parents=True)
    config["runs"]["tasks"]["aesthetic"]["variants"].append("full_whole_chain")
    with pytest.raises(ConfigError, match="whole_chain compares with full backpropagation from the initial noise"):
        check_config(config, base=tmp_path)


@pytest.mark.parametrize("preset", [None, "profile_gpu.yaml"])
def test_a_profile_plans_one_process_per_model_and_checkpointing_setting(preset):
    """Each model and denoiser checkpointing setting is one `sdo profile` process measuring every
    row of the block: its parameter types, step counts and variants with their options."""
    names = ["config.yaml", "profile.yaml"] + ([preset] if preset else [])
    block = _merged(*names)["profile"]
    parser = build_parser()
    for source in block["models"]:
        for on in block["checkpointing"]:
            spec = jobs.profile_spec(block, source, on)
            args = parser.parse_args(["profile", *jobs_flags(spec)])
            model = block["models"][source] or {}
            assert args.model == source and args.device == block["device"] and args.wrt == block["wrt"]
            assert ("gradient_checkpointing", True) in args.model_options if on else True
            assert args.steps == model.get("steps", block["steps"])
            assert [v.partition("=")[0] for v in args.variants] == model.get("variants", list(block["variants"]))


def jobs_flags(spec):
    from evals.flags import to_flags

    return to_flags(spec)


def test_profile_keys_are_checked():
    config = _merged("config.yaml", "profile.yaml")
    config["profile"]["model_options"] = {"dtype": "float8"}
    with pytest.raises(ConfigError, match="profile.models.random:sd1.5.*float8"):
        check_config(config, base=ROOT)
    config = _merged("config.yaml", "profile.yaml")
    config["profile"]["models"] = {"random:sd9": {}}
    with pytest.raises(ConfigError, match="unknown architecture 'sd9'"):
        check_config(config, base=ROOT)


def test_a_layer_naming_another_reward_drops_the_lower_layers_reward_options():
    """Snakemake's merge would hand the default's digits options to a user's reward; a task that
    names another reward starts from none, and one that keeps its reward keeps them."""
    base = {"runs": {"tasks": {"finetune": {"reward": "classifier", "reward_options": {"target": 3}, "iters": 10}}}}
    other = layered([base, {"runs": {"tasks": {"finetune": {"reward": "config/rewards/saturation.py:saturation"}}}}])
    assert (
        "reward_options" not in other["runs"]["tasks"]["finetune"] and other["runs"]["tasks"]["finetune"]["iters"] == 10
    )
    same = layered([base, {"runs": {"tasks": {"finetune": {"reward": "classifier", "iters": 20}}}}])
    assert same["runs"]["tasks"]["finetune"]["reward_options"] == {"target": 3}
    replaced = layered([base, {"runs": {"tasks": {"finetune": {"reward_options": {"target": 5}}}}}])
    assert replaced["runs"]["tasks"]["finetune"]["reward_options"] == {"target": 5}
